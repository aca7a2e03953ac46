"""Reads usage out of an SSE stream as it passes, without slowing it down.

Most events are pieces of the answer and tell the reading nothing: one byte scan per event
asks whether it may (a tool call, an error, usage, a finish reason, the end), and only those
that may are read further; of those, only the ones that carry usage are decoded. Event
payloads are kept so the generated text can be recounted afterwards.
"""

from __future__ import annotations

import re
from typing import Any

from ..events import Usage
from .body import MAX_TIER_CHARS, parse_json, web_search_calls
from .dialects import dialect_for, usage_from
from .text import TOOL_CALL, TOOL_CALL_TYPES, chunk_text, chunk_texts, message_stream_text

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]+)"')
_TIER = re.compile(rb'"service_tier"\s*:\s*"([^"\\]{1,%d})"' % MAX_TIER_CHARS)
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([^"\\]+)"')
_RESPONSES_FINAL = (b"response.completed", b"response.incomplete", b"response.failed")
# An error event: OpenAI's {"error": {...}}, Anthropic's and Responses' {"type": "error", ...}.
_ERROR = re.compile(rb'"error"\s*:\s*\{|"type"\s*:\s*"error"')


def _notable(words: tuple[bytes, ...] = (), valued: tuple[bytes, ...] = ()) -> re.Pattern[bytes]:
    """A scan for events the reading must look at: each check `_read` makes needs one of
    `words` in quotes (as a key or a value), or one of the `valued` keys with a value other
    than null (OpenAI's chunks all say "usage":null and "finish_reason":null). One regex
    whose every branch starts with a quote is one quick pass; a branch per check is not."""
    branches = [re.escape(key) + rb'"\s*:\s*[^\sn]' for key in (b"tool_calls", *valued)]
    branches += [re.escape(word) + b'"' for word in (b"error", *TOOL_CALL_TYPES, *words)]
    return re.compile(b'"(?:' + b"|".join(branches) + b")")


_NOTABLE_OPENAI = _notable(valued=(b"finish_reason", b"usage"))
_NOTABLE = {"messages": _notable((b"usage", b"message_stop")),
            "responses": _notable(_RESPONSES_FINAL)}


class SSESplitter:
    """Cuts a byte stream into whole SSE events, each with its blank-line terminator."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" not in buf:  # the usual case, and a split on one separator is quicker
            *blocks, self._buf = buf.split(b"\n\n")
            return [block + b"\n\n" for block in blocks]
        blocks, start = [], 0
        for m in _BOUNDARY.finditer(buf):
            blocks.append(buf[start:m.end()])
            start = m.end()
        self._buf = buf[start:]
        return blocks

    def rest(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest


def event_data(block: bytes) -> bytes:
    """The payload of an SSE event (its `data:` lines joined)."""
    if block.startswith(b"data:") and block.count(b"\n") <= 2 and b"\r" not in block:
        return block[5:].strip()
    lines = [ln[5:].strip() for ln in block.splitlines() if ln.startswith(b"data:")]
    return b"\n".join(lines)


class StreamTap:
    """Watches one stream's events: usage, model, finish reason, and where the stream ends.

    `feed` returns False for an event the client must not see: the usage-only chunk the
    gateway asked an OpenAI-format provider for when the client had not.
    """

    def __init__(self, operation: str, *, hide_usage_chunk: bool = False):
        self.operation = operation
        self.hide_usage_chunk = hide_usage_chunk
        self.raw_usage: dict[str, Any] = {}
        self.final_usage_seen = False  # the provider's last word on usage arrived
        self.model: str | None = None
        self.service_tier: str | None = None
        self.web_searches = 0  # counted outside the usage object (Responses output items)
        self.finish_reason: str | None = None
        self.terminal = False  # the end-of-stream marker has been seen
        self.error: str | None = None  # the type of an error event the provider sent
        self.tool_call = False  # a tool call was streamed (its recount is an estimate)
        self.payloads: list[bytes] = []
        self._notable = _NOTABLE.get(operation, _NOTABLE_OPENAI)

    def feed(self, block: bytes) -> bool:
        data = event_data(block)
        self.payloads.append(data)
        if self.model is None and (m := _MODEL.search(data)):
            self.model = m.group(1).decode(errors="replace")
        if self.service_tier is None and (m := _TIER.search(data)):
            self.service_tier = m.group(1).decode(errors="replace")
        # After the final usage every event is read: text there means the answer went on.
        if self.final_usage_seen or data == b"[DONE]" or self._notable.search(data):
            return self._read(data)
        return True

    def _read(self, data: bytes) -> bool:
        """What an event that may matter says: tool call, error, usage, finish reason, end."""
        if not self.tool_call and TOOL_CALL.search(data):
            self.tool_call = True
        if _ERROR.search(data):
            self.error = _error_type(event_object(data)) or self.error
        if self.operation == "messages":
            return self._anthropic(data)
        if self.operation == "responses":
            return self._responses(data)
        return self._openai(data)

    def _openai(self, data: bytes) -> bool:
        if data == b"[DONE]":
            self.terminal = True
            return True
        if m := _FINISH.search(data):
            self.finish_reason = m.group(1).decode(errors="replace")
        if not _USAGE_OBJECT.search(data):
            if self.final_usage_seen and chunk_text(self.operation, event_object(data)):
                self.final_usage_seen = False  # the answer went on past its usage: recount
            return True
        chunk = event_object(data)
        choices = chunk.get("choices")
        choices = choices if isinstance(choices, list) else []
        usage = chunk.get("usage")
        if not isinstance(usage, dict) and choices:
            usage = _dict(choices[0]).get("usage")  # Moonshot (Kimi) streams put it here
        if isinstance(usage, dict):
            self.raw_usage = usage
            self.final_usage_seen = True
        return not (self.hide_usage_chunk and not choices)

    def _anthropic(self, data: bytes) -> bool:
        if b'"usage"' not in data:
            if b'"message_stop"' in data:
                self.terminal = True
            return True
        ev = event_object(data)
        kind = ev.get("type")
        if kind == "message_start":
            usage = _dict(ev.get("message")).get("usage")
        else:
            usage = ev.get("usage")
            if kind == "message_delta":
                # output_tokens here are cumulative: the final word, unless malformed
                self.final_usage_seen = isinstance(usage, dict)
                self.finish_reason = _str(_dict(ev.get("delta")).get("stop_reason"))
        if isinstance(usage, dict):
            self.raw_usage.update((k, v) for k, v in usage.items() if v is not None)
        return True

    def _responses(self, data: bytes) -> bool:
        if not any(marker in data for marker in _RESPONSES_FINAL):
            return True
        ev = event_object(data)
        if ev.get("type") not in ("response.completed", "response.incomplete", "response.failed"):
            return True
        self.terminal = True
        response = _dict(ev.get("response"))
        if isinstance(response.get("usage"), dict):
            self.raw_usage = response["usage"]
            self.final_usage_seen = True
        self.web_searches = web_search_calls(self.operation, response)
        reason = _dict(response.get("incomplete_details")).get("reason")
        self.finish_reason = _str(reason) or _str(response.get("status"))
        return True

    def usage(self) -> Usage | None:
        """What the provider reported, or None when it reported nothing."""
        if not self.raw_usage:
            return None
        return usage_from(dialect_for(self.operation), self.raw_usage, self.web_searches)

    def texts(self) -> dict[int, str]:
        """Generated text seen so far, by choice, in choice order (decodes every event: only
        for recounts and hashes)."""
        if self.operation == "messages":
            return {0: message_stream_text([event_object(data) for data in self.payloads
                                            if data.startswith(b"{")])}
        choices: dict[int, list[str]] = {}
        for data in self.payloads:
            if data.startswith(b"{"):
                for index, text in chunk_texts(self.operation, event_object(data)):
                    choices.setdefault(index, []).append(text)
        return {i: "".join(choices[i]) for i in sorted(choices)}

    def text(self) -> str:
        """Generated text seen so far, choice after choice as a whole answer holds them."""
        return "".join(self.texts().values())


def event_object(data: bytes) -> dict[str, Any]:
    """An event's JSON object, or {} when it is malformed: a provider's bad event must not
    stop the stream or the reading (the usage it should have carried is then recounted)."""
    try:
        value = parse_json(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error_type(event: dict[str, Any]) -> str | None:
    error = event.get("error")
    if isinstance(error, dict):
        return _str(error.get("type")) or _str(error.get("code")) or "upstream_error"
    if event.get("type") == "error":
        return _str(event.get("code")) or "upstream_error"
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
