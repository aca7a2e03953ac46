"""The generated text of a response or stream, for recounting output when usage is missing."""

from __future__ import annotations

import json
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


_TOOL_USES = ("tool_use", "server_tool_use")  # Anthropic's tool calls, with an `input`


def tool_input_text(value: Any) -> str:
    """A tool call's input as text: compact JSON, as `stream_tool_input` makes of the
    streamed pieces of the same input, so a whole and a streamed answer read alike."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def stream_tool_input(pieces: str) -> str:
    """The streamed pieces of a tool call's input (Anthropic's `partial_json`), joined: as
    `tool_input_text` writes it once whole, else as sent (cut short, or not JSON)."""
    try:
        return tool_input_text(json.loads(pieces) if pieces.strip() else {})
    except ValueError:
        return pieces


def message_stream_text(events: list[dict[str, Any]]) -> str:
    """The text of an Anthropic stream's decoded events, block by block as a whole message
    holds it; a tool call's input written as `body_text` writes it."""
    blocks: dict[int, list[str]] = {}
    tool_inputs: set[int] = set()
    for event in events:
        if event.get("type") != "content_block_delta":
            continue
        index = event["index"] if isinstance(event.get("index"), int) else 0
        delta = event.get("delta")
        if isinstance(delta, dict) and delta.get("type") == "input_json_delta":
            tool_inputs.add(index)
        blocks.setdefault(index, []).append(_collect(delta))
    return "".join(stream_tool_input("".join(blocks[i])) if i in tool_inputs
                   else "".join(blocks[i]) for i in sorted(blocks))


def _collect(node: Any) -> str:
    """Depth-first concatenation of every text-bearing string under node. An Anthropic tool
    call's input (an object) is its compact JSON.

    OpenRouter-style messages and deltas carry their reasoning twice: as `reasoning` and
    again as `reasoning_details` entries; the details are read only when `reasoning` is empty.
    """
    if isinstance(node, dict):
        if node.get("type") in _TOOL_USES and "input" in node:
            return tool_input_text(node["input"])
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
