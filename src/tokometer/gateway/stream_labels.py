"""Explicit labels in a stream: the visible notice, and a signed C2PA manifest at the end of
each text, as events of the client's wire format (labels.py does whole answers).

A stream's events pass through the notice first, then the manifests: a manifest binds the
text the client received, notice included. The event's `output_sha256` is of that text too:
`StreamLabels.received` puts what was added into the provider's text where it went.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..config import Notice
from ..provenance.manifests import TextManifests
from ..usage.stream import event_data, event_object
from ..usage.text import chunk_text, chunk_texts
from .labels import CHOICES, dicts, dumps, placed

log = logging.getLogger("tokometer.labels")

Seen = Callable[[], dict[int, str]]  # the provider's text so far, by choice (the tap's)

# The streams a notice and a manifest can go into.
NOTICED_STREAMS = (*CHOICES, "messages", "responses")


class StreamNotice:
    """Puts the notice into a stream as events of the client's wire format, once: OpenAI
    chat and completions, a text chunk before the first text (or at the finish); Anthropic
    messages, a text delta in the first text block, at its start (or before it stops); the
    Responses API, a text delta in the first output text, at its start (or before it is
    done), whose
    text is then amended in every later event that repeats it (the part's, the item's and
    the response's `done`), and every later `sequence_number` moved up by one.

    `seen` gives the provider's text so far by choice (the tap's, which has read the
    current event): where the notice went in it makes the text the client received."""

    def __init__(self, operation: str, notice: Notice, seen: Seen):
        self.operation, self.notice, self._seen = operation, notice, seen
        self.at: tuple[int, int] | None = None  # (choice, offset in its text), once sent
        self._block: int | None = None  # the Anthropic text block labelled
        self._first: dict[str, Any] = {}  # an OpenAI chat stream's first chunk
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
        return b"".join(self.events(block, data))

    def events(self, block: bytes, data: bytes) -> list[bytes]:
        """The events to send for the provider's event `block` (its payload `data`)."""
        if data == b"[DONE]" and self.operation in CHOICES and self.at is None:
            self._sent()  # the stream ends with no finish reason seen: the notice still goes
            return [_choice_chunk(self.operation, self._first, 0, self.notice.text), block]
        if not data.startswith(b"{"):
            return [block]
        if self.operation == "responses":
            return self._responses(block, data)
        before, after = (self._chat(data) if self.operation in CHOICES
                         else self._messages(data))
        return [e for e in (before, block, after) if e]

    def _sent(self, event_text: str = "", choice: int = 0) -> None:
        """The notice goes into `choice`, before the current event's text `event_text`."""
        self.at = (choice, len(self._seen().get(choice, "")) - len(event_text))

    def _chat(self, data: bytes) -> tuple[bytes, bytes]:
        if not self._first:  # what a chunk of this stream says of itself, for one of ours
            self._first = event_object(data)
        at_end = self.notice.position == "end"
        if at_end and b'"finish_reason":"' not in data.replace(b'": "', b'":"'):
            return b"", b""
        event = event_object(data)
        choices = dicts(event.get("choices"))
        if not choices:
            return b"", b""
        first = choices[0]
        if at_end and not first.get("finish_reason"):
            return b"", b""
        extra = _choice_chunk(self.operation, event, first.get("index", 0), self.notice.text)
        text = _choice_text(self.operation, first)
        choice = first.get("index", 0) if isinstance(first.get("index", 0), int) else 0
        # At the start: before the first text. At the end: before the finishing chunk,
        # unless it has text of its own (a completion's often has): then after it.
        if at_end != bool(text):
            own = "".join(t for i, t in chunk_texts(self.operation, {"choices": [first]})
                          if i == choice)
            self._sent(own, choice)
            return extra, b""
        self._sent(choice=choice)
        return b"", extra

    def _messages(self, data: bytes) -> tuple[bytes, bytes]:
        if self._block is None:
            if b"content_block_start" not in data:
                return b"", b""
            event = event_object(data)
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
        event = event_object(data)
        if event.get("type") != "content_block_stop" or event.get("index") != self._block:
            return b"", b""
        self._sent()
        return self._delta(), b""

    def _delta(self) -> bytes:
        return b"event: content_block_delta\ndata: " + dumps({
            "type": "content_block_delta", "index": self._block,
            "delta": {"type": "text_delta", "text": self.notice.text}}) + b"\n\n"

    def _responses(self, block: bytes, data: bytes) -> list[bytes]:
        if self.at is None and b"response.output_text." not in data:
            return [block]
        event = event_object(data)
        kind = event.get("type")
        if self.at is None:
            if kind not in _TEXT_EVENTS or (self.notice.position == "end"
                                            and kind != "response.output_text.done"):
                return [block]
            part = _part_of(event)
            if self._part is None:
                self._part = part
            if part != self._part:
                return [block]
            self._sent(chunk_text("responses", event))
            delta = {"type": "response.output_text.delta",
                     "sequence_number": event.get("sequence_number"), "item_id": part[0],
                     "output_index": event.get("output_index"), "content_index": part[1],
                     "delta": self.notice.text, "logprobs": []}
            if not isinstance(delta["sequence_number"], int):
                del delta["sequence_number"]
            return [_sse("response.output_text.delta", delta), self._amended(block, event)]
        return [self._amended(block, event) if event else block]

    def _amended(self, block: bytes, event: dict[str, Any]) -> bytes:
        """An event after the notice: its number moved up, the labelled text amended."""
        if isinstance(number := event.get("sequence_number"), int):
            event["sequence_number"] = number + 1
        _edit_repeats(event, lambda part, text: placed(self.notice, text)
                      if part == self._part else None)
        return _reframed(block, event)


class StreamManifests:
    """Appends a signed C2PA manifest to each text of a stream (each choice's content, each
    text block, each output text) as one more text event before that text ends, when the
    whole of it is known. In a Responses stream the text's `done`, its part's and item's, and
    the final response repeat the text with its manifest, and later sequence numbers move up
    by the events added. A text the SDK cannot sign goes without."""

    def __init__(self, operation: str, manifests: TextManifests, seen: Seen, event_id: str,
                 model: Callable[[], str | None]):
        self.operation, self._manifests, self._seen = operation, manifests, seen
        self._event_id, self._model = event_id, model
        self.insertions: list[tuple[int, int, str]] = []  # (choice, offset, wrapper)
        self._texts: dict[Any, list[str]] = {}  # the client's text of each open text
        self._wrappers: dict[tuple[Any, Any], str] = {}  # a Responses part's wrapper
        self._added = 0  # Responses events added so far
        self._chunk: dict[str, Any] = {}  # the last chat chunk, for one of ours
        self._ended: set[int] = set()  # the chat choices signed

    async def place(self, events: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for block in events:
            data = event_data(block)
            if data == b"[DONE]" and self.operation in CHOICES:  # texts nothing finished
                for index in sorted(self._texts):
                    wrapper = await self._wrapper("".join(self._texts.pop(index)), index)
                    if wrapper:
                        out.append(_choice_chunk(self.operation, self._chunk, index, wrapper))
                out.append(block)
            elif not data.startswith(b"{"):
                out.append(block)
            elif self.operation in CHOICES:
                out += await self._chat(block, data)
            elif self.operation == "messages":
                out += await self._messages(block, data)
            else:
                out += await self._responses(block, data)
        return out

    async def _wrapper(self, text: str, choice: int = 0, after: str = "") -> str | None:
        """The wrapper for `text`, which ends at the end of the provider's text so far but
        `after` (the current event's, which goes after the wrapper)."""
        if not text:
            return None
        try:
            wrapper = await asyncio.to_thread(self._manifests.wrapper, text,
                                              event_id=self._event_id, model=self._model())
        except Exception:  # the C2PA SDK refused: the text goes without, the event is kept
            log.exception("could not sign the C2PA manifest of %s", self._event_id)
            return None
        if wrapper:
            at = len(self._seen().get(choice, "")) - len(after)
            self.insertions.append((choice, at, wrapper))
        return wrapper

    async def _chat(self, block: bytes, data: bytes) -> list[bytes]:
        if b'"choices"' not in data:
            return [block]
        event = self._chunk = event_object(data)
        before: list[bytes] = []
        after: list[bytes] = []
        for choice in dicts(event.get("choices")):
            index = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
            if index in self._ended:  # signed already: what follows would break its binding
                continue
            content = _choice_text(self.operation, choice)
            if content is not None:
                self._texts.setdefault(index, []).append(content)
            if not choice.get("finish_reason"):
                continue
            self._ended.add(index)
            # before the finish, unless the finishing chunk has content of its own: then
            # after it (what else the chunk says, a tool call's arguments, comes before)
            own = "" if content else "".join(
                t for i, t in chunk_texts(self.operation, {"choices": [choice]}) if i == index)
            wrapper = await self._wrapper("".join(self._texts.pop(index, [])), index, own)
            if wrapper:
                (after if content else before).append(
                    _choice_chunk(self.operation, event, index, wrapper))
        return [*before, block, *after]

    async def _messages(self, block: bytes, data: bytes) -> list[bytes]:
        if b'"content_block_' not in data:
            return [block]
        event = event_object(data)
        kind, index = event.get("type"), event.get("index")
        if not isinstance(index, int):  # not a block of this stream's
            return [block]
        if kind == "content_block_start":
            opened = event.get("content_block")
            if isinstance(opened, dict) and opened.get("type") == "text":
                first = opened.get("text")
                self._texts[index] = [first] if isinstance(first, str) else []
        elif kind == "content_block_delta" and index in self._texts:
            self._texts[index].append(chunk_text("messages", event))
        elif kind == "content_block_stop" and index in self._texts:
            wrapper = await self._wrapper("".join(self._texts.pop(index)))
            if wrapper:
                return [b"event: content_block_delta\ndata: " + dumps({
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": wrapper}}) + b"\n\n", block]
        return [block]

    async def _responses(self, block: bytes, data: bytes) -> list[bytes]:
        if not self._added and b"response.output_text." not in data:
            return [block]
        event = event_object(data)
        if not event:
            return [block]
        kind, part = event.get("type"), _part_of(event)
        if not all(isinstance(key, _KEYS) for key in part):  # not a part of this stream's
            return [block]
        number = event.get("sequence_number")
        number = number if isinstance(number, int) else None
        added: list[bytes] = []
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            self._texts.setdefault(part, []).append(event["delta"])
        elif kind == "response.output_text.done" and part not in self._wrappers:
            sent = "".join(self._texts.pop(part, []))
            wrapper = await self._wrapper(sent or _str(event.get("text")))
            if wrapper:
                self._wrappers[part] = wrapper
                delta = {"type": "response.output_text.delta", "item_id": part[0],
                         "output_index": event.get("output_index"), "content_index": part[1],
                         "delta": wrapper, "logprobs": []}
                if number is not None:
                    delta["sequence_number"] = number + self._added
                added.append(_sse("response.output_text.delta", delta))
                self._added += 1
        if not self._added:
            return [block]
        _edit_repeats(event, self._signed)
        if number is not None:
            event["sequence_number"] = number + self._added
        return [*added, _reframed(block, event)]

    def _signed(self, part: tuple[Any, Any], text: str) -> str | None:
        """A signed part's text as the later events repeat it: with its wrapper."""
        wrapper = self._wrappers.get(part)
        return text + wrapper if wrapper else None


class StreamLabels:
    """A stream's explicit labels: the notice, then the manifests."""

    def __init__(self, notice: StreamNotice | None, manifests: StreamManifests | None):
        self._notice, self._manifests = notice, manifests

    @property
    def active(self) -> bool:
        return self._manifests is not None or (self._notice is not None and self._notice.active)

    @property
    def signs(self) -> bool:
        """Whether `place` may wait for a signature."""
        return self._manifests is not None

    async def place(self, block: bytes) -> bytes:
        """What to send for the provider's event `block` (as it came, should labelling it
        fail: a label is never worth the stream, nor the reading)."""
        try:
            events = [block]
            if self._notice is not None and self._notice.active:
                events = self._notice.events(block, event_data(block))
            if self._manifests is not None:
                events = await self._manifests.place(events)
            return b"".join(events)
        except Exception:
            log.exception("labelling a stream's event failed; it goes as it came")
            return block

    def received(self, texts: dict[int, str]) -> str:
        """The client's text, from the provider's (by choice): what was added, where."""
        added: list[tuple[int, int, str]] = []
        if self._notice is not None and self._notice.at is not None:
            added.append((*self._notice.at, self._notice.notice.text))
        if self._manifests is not None:
            added += self._manifests.insertions
        out = dict(texts)
        # back to front: a later insertion at the same place went after an earlier one
        for _, (choice, at, text) in sorted(enumerate(added),
                                            key=lambda a: (a[1][0], -a[1][1], -a[0])):
            whole = out.get(choice, "")
            out[choice] = whole[:at] + text + whole[at:]
        return "".join(out[i] for i in sorted(out))


def stream_labels(operation: str, notice: Notice | None, manifests: TextManifests | None,
                  seen: Seen, event_id: str, model: Callable[[], str | None]
                  ) -> StreamLabels | None:
    """The labels a stream gets, or None when it gets none."""
    if notice is None or operation not in NOTICED_STREAMS:
        return None
    visible = StreamNotice(operation, notice, seen) if notice.text else None
    signed = (StreamManifests(operation, manifests, seen, event_id, model)
              if notice.c2pa and manifests is not None else None)
    return StreamLabels(visible, signed) if visible or signed else None


def _choice_text(operation: str, choice: dict[str, Any]) -> str | None:
    """The answer's text in a streamed choice: a chat delta's content, a completion's text."""
    holder = choice.get("delta") if operation == "chat" else choice
    text = holder.get("content" if operation == "chat" else "text") \
        if isinstance(holder, dict) else None
    return text if isinstance(text, str) else None


def _choice_chunk(operation: str, event: dict[str, Any], index: Any, text: str) -> bytes:
    """A chunk like `event` (chat or completion), carrying `text` as choice `index`'s."""
    chunk: dict[str, Any] = {k: event[k] for k in ("id", "object", "created", "model")
                             if k in event}
    choice: dict[str, Any] = ({"index": index, "delta": {"content": text}} if operation == "chat"
                              else {"index": index, "text": text, "logprobs": None})
    chunk["choices"] = [{**choice, "finish_reason": None}]
    return b"data: " + dumps(chunk) + b"\n\n"


_KEYS = (str, int, type(None))  # what a provider's ids and indexes may be, to key by them


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


_TEXT_EVENTS = ("response.output_text.delta", "response.output_text.done")
_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


def _edit_repeats(event: dict[str, Any],
                  edit: Callable[[tuple[Any, Any], str], str | None]) -> None:
    """In a Responses event after a text's deltas, each repeat of an output text: the
    `output_text.done` text, the `content_part.done` part, and the parts of the
    `output_item.done` item and of the final response, as `edit(part, text)` has it (None:
    left as it is); a part is (item id, content index)."""
    kind = event.get("type")
    items: Any = None
    if kind == "response.output_text.done":
        _edit(event, _part_of(event), edit)
    elif kind == "response.content_part.done" and _is_output_text(event.get("part")):
        _edit(event["part"], _part_of(event), edit)
    elif kind == "response.output_item.done":
        items = [event.get("item")]
    elif kind in _FINAL_EVENTS and isinstance(event.get("response"), dict):
        items = event["response"].get("output")
    for item in dicts(items):
        contents = item.get("content")
        if isinstance(item.get("id"), _KEYS) and isinstance(contents, list):
            for index, content in enumerate(contents):
                if _is_output_text(content):
                    _edit(content, (item["id"], index), edit)


def _is_output_text(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "output_text"


def _edit(holder: dict[str, Any], part: tuple[Any, Any],
          edit: Callable[[tuple[Any, Any], str], str | None]) -> None:
    text = holder.get("text")
    if isinstance(text, str) and (new := edit(part, text)) is not None:
        holder["text"] = new


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
