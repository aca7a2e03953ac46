"""Labels of generated text (GB 45438-2025).

Implicit: every generated response carries machine-readable provenance in the metadata the
standard names (`AIGC`: Label, ContentProducer, ProduceID, ...), as a response header and, in
a whole JSON answer, as a top-level `AIGC` member the SDKs keep as an extra field. A stream
carries the header only: its events are the provider's.

Explicit (opt-in, `[[labels]]`): a visible notice in the generated text of a scope's answers,
in the client's wire format; and, asked for, a signed C2PA text manifest appended to each of
its texts (provenance/manifests.py). Here for whole answers; stream_labels.py for streams.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson

from ..config import Notice
from ..policy import Consumer
from ..provenance.manifests import TextManifests

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
    if operation not in CHOICES and texts:
        texts = [texts[0] if notice.position == "start" else texts[-1]]
    for holder, key in texts:
        holder[key] = placed(notice, holder[key])
    return bool(texts)


def sign_body(manifests: TextManifests, operation: str, body: dict[str, Any], event_id: str,
              model: str | None) -> bool:
    """Append a signed C2PA manifest to each text of a whole answer (every choice's, every
    text block's, an empty one's not); False when it has none, or the SDK failed. Blocks:
    call it off the loop."""
    texts = [(holder, key) for holder, key in _texts(operation, body) if holder[key]]
    try:
        signed = [manifests.sign(holder[key], event_id=event_id, model=model)
                  for holder, key in texts]
    except Exception:  # the C2PA SDK refused: the answer goes as it came, its event kept
        log.exception("could not sign the C2PA manifest of %s: sent without one", event_id)
        return False
    for (holder, key), text in zip(texts, signed, strict=True):
        holder[key] = text
    return bool(texts)


CHOICES = ("chat", "text_completion")  # each choice is an answer of its own


def _texts(operation: str, body: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(holder, key) of each generated text of a whole answer, in order."""
    if operation in CHOICES:
        key = "text" if operation == "text_completion" else "content"
        holders = [choice if operation == "text_completion" else choice.get("message")
                   for choice in dicts(body.get("choices"))]
        return [(h, key) for h in holders if isinstance(h, dict) and isinstance(h.get(key), str)]
    if operation == "messages":
        return [(b, "text") for b in dicts(body.get("content"))
                if b.get("type") == "text" and isinstance(b.get("text"), str)]
    if operation == "responses":
        return [(part, "text") for item in dicts(body.get("output"))
                if item.get("type") == "message" for part in dicts(item.get("content"))
                if part.get("type") == "output_text" and isinstance(part.get("text"), str)]
    return []


def dicts(value: Any) -> list[dict[str, Any]]:
    """The objects in a JSON list (nothing if it is no list)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def dumps(body: dict[str, Any]) -> bytes:
    """A labelled answer's JSON (orjson; Python's for a lone surrogate orjson refuses)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, separators=(",", ":")).encode()
