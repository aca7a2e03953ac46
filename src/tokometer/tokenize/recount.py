"""Recount a request's input and output with the model's own tokenizer and chat template.

Input is counted as the model sees it: the prompt rendered by its chat template. Where the
template is unknown the count is an estimate, and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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
              body: dict[str, Any]) -> Count:
        tok = self.registry.get(spec) if spec else None
        return count_input(tok, _template_for(spec, template), operation, body)


def _template_for(spec: str | None, template: str | None) -> str | None:
    if template is None and spec is not None and spec.split(":", 1)[1] in _OPENAI_VOCABULARIES:
        return "openai"
    return template


def count_output(tok: Tokenizer, text: str) -> Count:
    return Count(tok.count(text), exact=True)


def count_input(tok: Tokenizer | None, template: str | None, operation: str,
                body: dict[str, Any]) -> Count:
    if operation in ("text_completion", "embeddings"):
        # Raw text, no template: exact whenever the tokenizer is known.
        key = "prompt" if operation == "text_completion" else "input"
        return _count_raw(tok, body.get(key))
    messages = chat_messages(operation, body)
    if tok is None:
        text_tokens = sum(estimate(m.get("content", "")) for m in messages)
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


def _count_llama_cpp_template(tok: GGUFTokenizer, template: str, messages: list[dict]) -> int:
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


def chat_messages(operation: str, body: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation as plain {role, content[, name]} messages, for any chat-like API."""
    out: list[dict[str, str]] = []
    if operation == "messages":
        system = body.get("system")
        if system:
            out.append({"role": "system", "content": _text_of(system)})
    if operation == "responses":
        if body.get("instructions"):
            out.append({"role": "system", "content": _text_of(body["instructions"])})
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
    else:
        items = body.get("messages")
    for m in items or ():
        if isinstance(m, dict):
            msg = {"role": str(m.get("role", "user")), "content": _text_of(m.get("content"))}
            if m.get("name"):
                msg["name"] = str(m["name"])
            out.append(msg)
    return out


def _text_of(content: Any) -> str:
    """Text of a message's content: a string, or the text parts of a list of blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_block_text(b) for b in content)
    return str(content)


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, dict):
        for key in ("text", "content", "input_text"):
            value = block.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, list):
                return _text_of(value)
    return ""

