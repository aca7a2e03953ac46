"""Usage readings as CloudEvents 1.0 (`type` tokometer.usage.v1), for apps without
OpenTelemetry: a JSON batch (application/cloudevents-batch+json), one structured event
(application/cloudevents+json), or one in binary mode (ce-* headers, the data as the body).

A reading's identity is its CloudEvent's source and id (CloudEvents' own rule for telling
events apart), and the provider's response id when `data` names one. The answer lists each
reading by id with its result.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from ..errors import RequestError
from .body import MAX_BATCH, too_many
from .readings import TOKEN_FIELDS, Reading, Rejected, reading
from .recorder import Refused, Result

BATCH, STRUCTURED = "application/cloudevents-batch+json", "application/cloudevents+json"
JSON = "application/json"
TYPE = "tokometer.usage.v1"
API = "cloudevents"
DATA_FIELDS = frozenset({"provider", "model", "model_requested", *TOKEN_FIELDS, "cost",
                         "currency", "agent", "task", "end_user", "operation", "duration_ms",
                         "response_id", "status", "error_type", "finish_reason",
                         "service_tier"})
_BINARY_HEADERS = {b"ce-specversion": "specversion", b"ce-id": "id", b"ce-source": "source",
                   b"ce-type": "type", b"ce-time": "time"}


def decode(body: bytes, media: str, headers: dict[bytes, bytes]) -> list[Any]:
    """The CloudEvents a request carries, as JSON values (each checked by `readings`);
    RequestError for a body that holds none."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise RequestError(f"the body is not valid JSON: {e}") from None
    if media == BATCH or (media == JSON and isinstance(document, list)):
        if not isinstance(document, list):
            raise RequestError("a CloudEvents batch is a JSON array of events")
        if len(document) > MAX_BATCH:
            raise too_many(len(document), "events")
        return document
    if media == STRUCTURED:
        return [document]
    if media == JSON and b"ce-specversion" in headers:  # binary mode: the body is the data
        event = {name: headers[h].decode("utf-8", "replace") for h, name
                 in _BINARY_HEADERS.items() if h in headers}
        return [{**event, "datacontenttype": JSON, "data": document}]
    raise RequestError(f"send usage readings as {BATCH} (a JSON array of CloudEvents), as "
                       f"{STRUCTURED}, or in binary mode (ce-* headers), not {media[:60]!r}",
                       status=415, type="unsupported_media_type")


def readings(events: list[Any], now: datetime) -> list[Reading | Refused]:
    return [_reading(i, event, now) for i, event in enumerate(events)]


def answer(results: list[Result]) -> dict[str, Any]:
    """Each reading's result by id, and how many of each."""
    counts = {kind: sum(r.result == kind for r in results)
              for kind in ("accepted", "duplicate", "rejected")}
    return {**counts, "data": [r.json() for r in results]}


def _reading(index: int, event: Any, now: datetime) -> Reading | Refused:
    if not isinstance(event, dict):
        return Refused(f"#{index}", "a CloudEvent is a JSON object")
    ce_id, source = event.get("id"), event.get("source")
    label = ce_id if isinstance(ce_id, str) and ce_id else f"#{index}"
    try:
        if event.get("specversion") != "1.0":
            raise Rejected("specversion must be \"1.0\"")
        if not isinstance(ce_id, str) or not ce_id or not isinstance(source, str) or not source:
            raise Rejected("a CloudEvent needs an id and a source (non-empty strings)")
        if event.get("type") != TYPE:
            raise Rejected(f"type must be {TYPE!r}")
        declared = event.get("datacontenttype", JSON)
        if not isinstance(declared, str) or declared.split(";", 1)[0].strip().lower() != JSON \
                or "data_base64" in event:
            raise Rejected(f"data must be JSON (datacontenttype {JSON})")
        data = event.get("data")
        if not isinstance(data, dict):
            raise Rejected("data must be a JSON object of the reading's fields")
        if unknown := sorted(set(data) - DATA_FIELDS):
            raise Rejected(f"unknown field {str(unknown[0])[:60]!r} in data; expected: "
                           f"{', '.join(sorted(DATA_FIELDS))}")
        return reading(label[:256], API, [(f"ce:{source}", ce_id)],
                       {**data, "time": event.get("time")}, now)
    except Rejected as e:
        return Refused(label[:256], e.reason)
