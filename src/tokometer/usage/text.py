"""The generated text of a response or stream, for recounting output when usage is missing."""

from __future__ import annotations

import re
from typing import Any

# Keys under which generated text (answers, refusals, reasoning, tool arguments) appears.
_TEXT_KEYS = ("content", "text", "refusal", "reasoning_content", "reasoning", "thinking",
              "arguments", "partial_json")


# A tool call in a response body or stream event (OpenAI chat and Responses, Anthropic). Its
# name and framing are billed too, by no published rule: a recount that includes one is an
# estimate.
TOOL_CALL_TYPES = (b"tool_use", b"function_call", b"custom_tool_call", b"input_json_delta",
                   b"response.function_call_arguments.delta")
TOOL_CALL = re.compile(rb'"(?:tool_calls|function_call)"\s*:\s*[\[{]\s*[^\]\s]'
                       rb'|"type"\s*:\s*"(?:%s)"' % b"|".join(map(re.escape, TOOL_CALL_TYPES)))


def body_text(operation: str, body: dict[str, Any]) -> str:
    if operation == "messages":
        return "".join(_collect(block) for block in body.get("content") or ())
    if operation == "responses":
        return "".join(_collect(item) for item in body.get("output") or ())
    if operation == "embeddings":
        return ""
    parts = []
    for choice in body.get("choices") or ():
        if isinstance(choice, dict):
            parts.append(_collect(choice.get("message") if "message" in choice else choice))
    return "".join(parts)


def chunk_text(operation: str, data: dict[str, Any]) -> str:
    """Text carried by one decoded stream event."""
    return "".join(text for _, text in chunk_texts(operation, data))


def chunk_texts(operation: str, data: dict[str, Any]) -> list[tuple[int, str]]:
    """Text carried by one decoded stream event, by choice (OpenAI's `index`; one answer
    elsewhere): a stream of several choices interleaves them, a whole answer does not."""
    if operation == "messages":
        text = _collect(data.get("delta")) if data.get("type") == "content_block_delta" else ""
        return [(0, text)]
    if operation == "responses":
        kind, delta = data.get("type", ""), data.get("delta")
        return [(0, delta if kind.endswith(".delta") and isinstance(delta, str) else "")]
    out = []
    for choice in data.get("choices") or ():
        if isinstance(choice, dict):
            index = choice.get("index")
            out.append((index if isinstance(index, int) else 0,
                        _collect(choice.get("delta") if "delta" in choice else choice)))
    return out


def _collect(node: Any) -> str:
    """Depth-first concatenation of every text-bearing string under node.

    OpenRouter-style messages and deltas carry their reasoning twice: as `reasoning` and
    again as `reasoning_details` entries; the details are read only when `reasoning` is empty.
    """
    if isinstance(node, dict):
        out = []
        has_reasoning = isinstance(node.get("reasoning"), str) and node["reasoning"] != ""
        for key, value in node.items():
            if key == "reasoning_details" and has_reasoning:
                continue
            if key in _TEXT_KEYS and isinstance(value, str):
                out.append(value)
            elif isinstance(value, dict | list):
                out.append(_collect(value))
        return "".join(out)
    if isinstance(node, list):
        return "".join(_collect(v) for v in node)
    return ""
