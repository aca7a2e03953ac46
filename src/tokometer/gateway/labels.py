"""The implicit label every generated response carries: machine-readable provenance in the
metadata GB 45438-2025 names (`AIGC`: Label, ContentProducer, ProduceID, ...), as a response
header and, in a whole JSON answer, as a top-level `AIGC` member the SDKs keep as an extra
field. A stream carries the header only: its events are the provider's.
"""

from __future__ import annotations

import json

HEADER = b"aigc"
_AI_GENERATED = "1"  # GB 45438's Label: the content is AI-generated


class Labels:
    """Builds a response's label: the producer (the config's `producer`), the content's id
    (the event id) and, where known before the answer leaves, the hash of its text."""

    def __init__(self, producer: str):
        # compact JSON, ASCII only (a header value must be): all but the id and the hash
        producer_json = json.dumps(producer, ensure_ascii=True)
        self._head = ('{"Label":"' + _AI_GENERATED + '","ContentProducer":' + producer_json
                      + ',"ProduceID":"').encode()

    def label(self, event_id: str, output_sha256: str | None = None) -> bytes:
        """The label of the answer `event_id` records (ids and hashes are plain ASCII)."""
        code = f"sha256:{output_sha256}" if output_sha256 else ""
        return self._head + (f'{event_id}","ReservedCode1":"{code}","ContentPropagator":"",'
                             '"PropagateID":"","ReservedCode2":""}').encode()

    def into_body(self, raw: bytes, body: dict[str, object], label: bytes) -> bytes:
        """A whole JSON answer with the label as its last member, every other byte as the
        provider sent it; unchanged if the provider labelled it already (its label stands)."""
        if "AIGC" in body:
            return raw
        end = raw.rstrip().rfind(b"}")
        return raw[:end] + (b',"AIGC":' if body else b'"AIGC":') + label + b"}"
