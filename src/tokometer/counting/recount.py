"""Recount a request's input and output with the model's own tokenizer and chat template.

Input is counted as the model sees it: the prompt rendered by its chat template, plus the
tools and images the provider bills with it. Where no exact rule is known the count is an
estimate, and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .images import anthropic_tokens, openai_tokens
from .prompt import prompt_of
from .registry import GGUFTokenizer, Tokenizer, TokenizerRegistry

# OpenAI's published accounting for chat models: each message costs 3 tokens of framing
# (plus 1 for a name), and every reply is primed with 3 more.
_OPENAI_PER_MESSAGE, _OPENAI_PER_NAME, _OPENAI_REPLY = 3, 1, 3
_ESTIMATE_PER_MESSAGE = 4
_CHARS_PER_TOKEN = 4
_OPENAI_VOCABULARIES = frozenset({"o200k_base", "cl100k_base"})


@dataclass(frozen=True, slots=True)
class Count:
    tokens: int
    exact: bool


def estimate(text: str) -> int:
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


class Recounter:
    """Counts with a tokenizer spec; falls back to estimates when the spec is None."""

    def __init__(self, registry: TokenizerRegistry):
        self.registry = registry

    def output(self, spec: str | None, text: str) -> Count:
        if spec is None:
            return Count(estimate(text), exact=False)
        return count_output(self.registry.get(spec), text)

    def input(self, spec: str | None, template: str | None, operation: str,
              body: dict[str, Any], model: str | None = None) -> Count:
        """`model`: the provider's name for the model, which picks its image rule."""
        tok = self.registry.get(spec) if spec else None
        return count_input(tok, _template_for(spec, template, operation), operation, body, model)


def _template_for(spec: str | None, template: str | None, operation: str) -> str | None:
    """OpenAI's chat accounting for its vocabularies, but only on its own APIs: Anthropic's
    Messages format frames messages by no published rule."""
    if template is None and spec is not None and operation != "messages" \
            and spec.split(":", 1)[1] in _OPENAI_VOCABULARIES:
        return "openai"
    return template


def count_output(tok: Tokenizer, text: str) -> Count:
    return Count(tok.count(text), exact=True)


def count_input(tok: Tokenizer | None, template: str | None, operation: str,
                body: dict[str, Any], model: str | None = None) -> Count:
    """The input as billed: messages, tool definitions, calls and results, and images.

    Exact only for plain text messages under a known template, and images by OpenAI's rule
    for the OpenAI models known to follow it: tools and other kinds of content follow no
    published rule, so their count makes it an estimate.
    """
    if operation in ("text_completion", "embeddings"):
        # Raw text, no template: exact whenever the tokenizer is known.
        key = "prompt" if operation == "text_completion" else "input"
        return _count_raw(tok, body.get(key))
    prompt = prompt_of(operation, body)
    messages = _count_messages(tok, template, prompt.messages)
    tooling = sum(tok.count(t) if tok else estimate(t) for t in prompt.tooling)
    images = [anthropic_tokens(image) if operation == "messages" else openai_tokens(image, model)
              for image in prompt.images]
    exact = (messages.exact and not prompt.tooling and not prompt.unknown_blocks
             and all(exact for _, exact in images))
    return Count(messages.tokens + tooling + sum(tokens for tokens, _ in images), exact)


def _count_messages(tok: Tokenizer | None, template: str | None,
                    messages: list[dict[str, str]]) -> Count:
    if tok is None:
        text_tokens = sum(estimate(m["content"]) for m in messages)
        return Count(text_tokens + _ESTIMATE_PER_MESSAGE * len(messages), exact=False)
    if template == "openai":
        total = _OPENAI_REPLY
        for m in messages:
            total += _OPENAI_PER_MESSAGE + tok.count(m["role"]) + tok.count(m["content"])
            if m.get("name"):
                total += _OPENAI_PER_NAME + tok.count(m["name"])
        return Count(total, exact=True)
    if template is not None and isinstance(tok, GGUFTokenizer):
        return Count(_count_llama_cpp_template(tok, template, messages), exact=True)
    text_tokens = sum(tok.count(m["content"]) for m in messages)
    return Count(text_tokens + _ESTIMATE_PER_MESSAGE * len(messages), exact=False)


def _count_llama_cpp_template(tok: GGUFTokenizer, template: str,
                              messages: list[dict[str, str]]) -> int:
    """Render as llama-cpp-python's server does for `--chat_format TEMPLATE`, then tokenize."""
    from llama_cpp import llama_chat_format

    formatter = getattr(llama_chat_format, f"format_{template}")
    result = formatter(messages=messages)
    return len(tok.tokens(result.prompt, add_bos=not result.added_special))


def _count_raw(tok: Tokenizer | None, value: Any) -> Count:
    if isinstance(value, str):
        return Count(tok.count_prompt(value), True) if tok else Count(estimate(value), False)
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return Count(len(value), exact=True)  # already token ids
    if isinstance(value, list):
        parts = [_count_raw(tok, v) for v in value]
        return Count(sum(p.tokens for p in parts), all(p.exact for p in parts))
    return Count(0, exact=tok is not None)
