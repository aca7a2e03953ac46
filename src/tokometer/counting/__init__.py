"""Exact token recounts with each model family's own tokenizer, loaded offline."""

from .recount import Recounter, count_input, count_output
from .registry import Tokenizer, TokenizerRegistry

__all__ = ["Recounter", "Tokenizer", "TokenizerRegistry", "count_input", "count_output"]
