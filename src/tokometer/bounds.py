"""The bound on a string from outside that a store keeps as a label (a model's name, an
attribution header, an ingested reading's fields): the gateway's requests and the ingest
API's readings check it alike. A module of its own: ingest/ and gateway/ both import it."""

from __future__ import annotations

from .errors import RequestError

MAX_LABEL_CHARS = 256


def bounded(text: str, what: str) -> str:
    """`text`, if a store may keep it as a label; else RequestError (400) saying why."""
    if len(text) > MAX_LABEL_CHARS:
        raise RequestError(f"{what} is longer than {MAX_LABEL_CHARS} characters")
    if "\x00" in text:
        raise RequestError(f"{what} contains a NUL character")
    return text
