"""Labels of generated text (GB 45438-2025).

Implicit: every generated response carries machine-readable provenance in the metadata the
standard names (`AIGC`: Label, ContentProducer, ProduceID, ...), as a response header and, in
a whole JSON answer, as a top-level `AIGC` member the SDKs keep as an extra field. A stream
carries the header only: its events are the provider's.

Explicit (opt-in, `[[labels]]`): a visible notice in the generated text of a scope's answers,
whole or streamed, in the client's wire format; and, asked for, a signed C2PA text manifest
appended to a whole answer's text (provenance/manifests.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import orjson

from ..config import Notice
from ..policy import Consumer
from ..provenance.manifests import TextManifests
from ..usage.body import parse_json
from ..usage.text import chunk_text, chunk_texts

log = logging.getLogger("tokometer.labels")

HEADER = b"aigc"
_AI_GENERATED = "1"  # GB 45438's Label: the content is AI-generated


class Labels:
    """Builds a response's label: the producer (the config's `producer`), the content's id
    (the event id) and, where known before the answer leaves, the hash of its text."""

    def __init__(self, producer: str, notices: tuple[Notice, ...] = (),
                 manifests: TextManifests | None = None):
        self.notices, self.manifests = notices, manifests
        # compact JSON, ASCII only (a header value must be): all but the id and the hash
        producer_json = json.dumps(producer, ensure_ascii=True)
        self._head = ('{"Label":"' + _AI_GENERATED + '","ContentProducer":' + producer_json
                      + ',"ProduceID":"').encode()

    def label(self, event_id: str, output_sha256: str | None = None) -> bytes:
        """The label of the answer `event_id` records (ids and hashes are plain ASCII)."""
        code = f"sha256:{output_sha256}" if output_sha256 else ""
        return self._head + (f'{event_id}","ReservedCode1":"{code}","ContentPropagator":"",'
                             '"PropagateID":"","ReservedCode2":""}').encode()

    def into_body(self, raw: bytes, body: dict[str, Any], label: bytes) -> bytes:
        """A whole JSON answer with the label as its last member, every other byte as the
        provider sent it. A provider's own label (an object saying AI-generated) stands;
        any other `AIGC` member is replaced. A body in UTF-16 or UTF-32 (JSON allows them;
        their ASCII has NUL bytes, which UTF-8 JSON never holds) is left as it came."""
        if b"\x00" in raw:
            return raw
        theirs = body.get("AIGC", _ABSENT)
        if isinstance(theirs, dict) and theirs.get("Label") == _AI_GENERATED:
            return raw
        if theirs is not _ABSENT:  # not a label: ours instead, the body written anew
            return dumps({**body, "AIGC": json.loads(label)})
        end = raw.rstrip().rfind(b"}")
        return raw[:end] + (b',"AIGC":' if body else b'"AIGC":') + label + b"}"


_ABSENT = object()


# --- explicit labels: a visible notice in the generated text, for the scopes that ask ------

def placed(notice: Notice, text: str) -> str:
    return notice.text + text if notice.position == "start" else text + notice.text


def notice_for(notices: tuple[Notice, ...], who: Consumer) -> Notice | None:
    """The first configured notice covering the key, or None."""
    return next((n for n in notices if n.scope.covers(who)), None)


def label_body(operation: str, body: dict[str, Any], notice: Notice) -> bool:
    """Put the notice into a whole answer's text (every choice's, or the first or last text
    block); False when the answer has no text to label."""
    texts = _texts(operation, body)
    if operation not in _CHOICES and texts:
        texts = [texts[0] if notice.position == "start" else texts[-1]]
    for holder, key in texts:
        _place(holder, key, notice)
    return bool(texts)


def sign_body(manifests: TextManifests, operation: str, body: dict[str, Any], event_id: str,
              model: str | None) -> bool:
    """Append a signed C2PA manifest to a whole answer's text (every choice's, or the last
    text block); False when the answer has no text. Blocks: call it off the event loop."""
    texts = _texts(operation, body)
    if operation not in _CHOICES:
        texts = texts[-1:]
    try:
        signed = [manifests.sign(holder[key], event_id=event_id, model=model)
                  for holder, key in texts]
    except Exception:  # the C2PA SDK refused: the answer goes as it came, its event kept
        log.exception("could not sign the C2PA manifest of %s: sent without one", event_id)
        return False
    for (holder, key), text in zip(texts, signed, strict=True):
        holder[key] = text
    return bool(texts)


_CHOICES = ("chat", "text_completion")  # each choice is an answer of its own


def _texts(operation: str, body: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(holder, key) of each generated text of a whole answer, in order."""
    if operation in _CHOICES:
        key = "text" if operation == "text_completion" else "content"
        holders = [choice if operation == "text_completion" else choice.get("message")
                   for choice in _dicts(body.get("choices"))]
        return [(h, key) for h in holders if isinstance(h, dict) and isinstance(h.get(key), str)]
    if operation == "messages":
        return [(b, "text") for b in _dicts(body.get("content"))
                if b.get("type") == "text" and isinstance(b.get("text"), str)]
    if operation == "responses":
        return [(part, "text") for item in _dicts(body.get("output"))
                if item.get("type") == "message" for part in _dicts(item.get("content"))
                if part.get("type") == "output_text" and isinstance(part.get("text"), str)]
    return []


def _place(holder: dict[str, Any], key: str, notice: Notice) -> None:
    holder[key] = placed(notice, holder[key])


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def dumps(body: dict[str, Any]) -> bytes:
    """A labelled answer's JSON (orjson; Python's for a lone surrogate orjson refuses)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, separators=(",", ":")).encode()


NOTICED_STREAMS = ("chat", "messages", "responses")  # the streams a notice can go into


class StreamNotice:
    """Puts the notice into a stream as events of the client's wire format, once: OpenAI
    chat, a content delta before the first text (or before the finish); Anthropic messages,
    a text delta in the first text block, at its start (or before it stops); the Responses
    API, a text delta in the first output text, at its start (or before it is done), whose
    text is then amended in every later event that repeats it (the part's, the item's and
    the response's `done`), and every later `sequence_number` moved up by one.

    `seen` gives the provider's text so far by choice (the tap's, which has read the
    current event): where the notice went in it makes the text the client received."""

    def __init__(self, operation: str, notice: Notice,
                 seen: Callable[[], dict[int, str]]):
        self.operation, self.notice, self._seen = operation, notice, seen
        self.at: tuple[int, int] | None = None  # (choice, offset in its text), once sent
        self._block: int | None = None  # the Anthropic text block labelled
        self._part: tuple[Any, Any] | None = None  # the Responses (item_id, content_index)

    @property
    def active(self) -> bool:
        """Whether events still need to pass through `place` (a Responses stream's do to
        its end: their numbers move)."""
        return self.at is None or self.operation == "responses"

    def received(self, texts: dict[int, str]) -> str:
        """The client's text, from the provider's (by choice, as `seen` gives it)."""
        if self.at is not None:
            choice, at = self.at
            text = texts.get(choice, "")
            texts = {**texts, choice: text[:at] + self.notice.text + text[at:]}
        return "".join(texts[i] for i in sorted(texts))

    def place(self, block: bytes, data: bytes) -> bytes:
        """What to send for the provider's event `block` (its payload `data`)."""
        if not data.startswith(b"{"):
            return block
        if self.operation == "responses":
            return self._responses(block, data)
        before, after = self._chat(data) if self.operation == "chat" else self._messages(data)
        return before + block + after

    def _sent(self, event_text: str = "", choice: int = 0) -> None:
        """The notice goes into `choice`, before the current event's text `event_text`."""
        self.at = (choice, len(self._seen().get(choice, "")) - len(event_text))

    def _chat(self, data: bytes) -> tuple[bytes, bytes]:
        at_end = self.notice.position == "end"
        if at_end and b'"finish_reason":"' not in data.replace(b'": "', b'":"'):
            return b"", b""
        event = _object(data)
        choices = _dicts(event.get("choices"))
        if not choices:
            return b"", b""
        first = choices[0]
        if at_end and not first.get("finish_reason"):
            return b"", b""
        chunk: dict[str, Any] = {k: event[k] for k in ("id", "object", "created", "model")
                                 if k in event}
        chunk["choices"] = [{"index": first.get("index", 0),
                             "delta": {"content": self.notice.text}, "finish_reason": None}]
        extra = b"data: " + dumps(chunk) + b"\n\n"
        delta = first.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
        choice = first.get("index", 0) if isinstance(first.get("index", 0), int) else 0
        if at_end or (isinstance(text, str) and text):
            own = "".join(t for i, t in chunk_texts("chat", {"choices": [first]}) if i == choice)
            self._sent(own, choice)
            return extra, b""
        self._sent(choice=choice)
        return b"", extra

    def _messages(self, data: bytes) -> tuple[bytes, bytes]:
        if self._block is None:
            if b"content_block_start" not in data:
                return b"", b""
            event = _object(data)
            block = event.get("content_block")
            if event.get("type") != "content_block_start" or not isinstance(block, dict) \
                    or block.get("type") != "text" or not isinstance(event.get("index"), int):
                return b"", b""
            self._block = event["index"]
            if self.notice.position == "start":
                self._sent()
                return b"", self._delta()
            return b"", b""
        if b"content_block_stop" not in data:
            return b"", b""
        event = _object(data)
        if event.get("type") != "content_block_stop" or event.get("index") != self._block:
            return b"", b""
        self._sent()
        return self._delta(), b""

    def _delta(self) -> bytes:
        return b"event: content_block_delta\ndata: " + dumps({
            "type": "content_block_delta", "index": self._block,
            "delta": {"type": "text_delta", "text": self.notice.text}}) + b"\n\n"

    def _responses(self, block: bytes, data: bytes) -> bytes:
        if self.at is None and b"response.output_text." not in data:
            return block
        event = _object(data)
        kind = event.get("type")
        if self.at is None:
            if kind not in _TEXT_EVENTS or (self.notice.position == "end"
                                            and kind != "response.output_text.done"):
                return block
            part = _part_of(event)
            if self._part is None:
                self._part = part
            if part != self._part:
                return block
            self._sent(chunk_text("responses", event))
            delta = {"type": "response.output_text.delta",
                     "sequence_number": event.get("sequence_number"), "item_id": part[0],
                     "output_index": event.get("output_index"), "content_index": part[1],
                     "delta": self.notice.text, "logprobs": []}
            if not isinstance(delta["sequence_number"], int):
                del delta["sequence_number"]
            return _sse("response.output_text.delta", delta) + self._amended(block, event)
        return self._amended(block, event) if event else block

    def _amended(self, block: bytes, event: dict[str, Any]) -> bytes:
        """An event after the notice: its number moved up, the labelled text amended."""
        if isinstance(number := event.get("sequence_number"), int):
            event["sequence_number"] = number + 1
        kind = event.get("type")
        ours = _part_of(event) == self._part
        if kind == "response.output_text.done" and ours:
            _place(event, "text", self.notice)
        elif kind == "response.content_part.done" and ours:
            self._amend_parts([event.get("part")])
        elif kind == "response.output_item.done":
            self._amend_items([event.get("item")])
        elif kind in _FINAL_EVENTS:
            response = event.get("response")
            if isinstance(response, dict):
                self._amend_items(response.get("output"))
        return _reframed(block, event)

    def _amend_items(self, items: Any) -> None:
        item_id, index = self._part or (None, None)
        for item in _dicts(items):
            parts = item.get("content")
            if item.get("id") == item_id and isinstance(parts, list) \
                    and isinstance(index, int) and 0 <= index < len(parts):
                self._amend_parts([parts[index]])

    def _amend_parts(self, parts: list[Any]) -> None:
        for part in _dicts(parts):
            if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                _place(part, "text", self.notice)


_TEXT_EVENTS = ("response.output_text.delta", "response.output_text.done")
_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


def _part_of(event: dict[str, Any]) -> tuple[Any, Any]:
    """The (item id, content index) of a Responses text event (an index left out: 0)."""
    return event.get("item_id"), event.get("content_index", 0)


def _sse(kind: str, event: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps(event) + b"\n\n"


def _reframed(block: bytes, event: dict[str, Any]) -> bytes:
    """The SSE event `block` with `event` as its data, its other fields as they came."""
    fields = [line for line in block.splitlines(keepends=True)
              if line.strip() and not line.startswith(b"data:")]
    return b"".join(fields) + b"data: " + dumps(event) + b"\n\n"


def _object(data: bytes) -> dict[str, Any]:
    """An event's JSON object (read as the meter reads it: a lone surrogate is no reason to
    skip one), or {} when it is none."""
    try:
        value = parse_json(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
