"""OTLP/HTTP traces in (protobuf or JSON), a reading out of each GenAI span.

A span is a reading when it carries OpenTelemetry GenAI attributes (`gen_ai.*`) and its
operation produces tokens (chat, text_completion, embeddings, generate_content, or none
named); agent, tool and workflow spans wrap such calls and are passed over, as are spans of
anything else. Its identity is its trace and span ids, and the provider's response id when
it names one. The answer is OTLP's: `partial_success` counts the spans rejected and says why.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from ..errors import RequestError
from .body import MAX_BATCH, too_many
from .readings import Reading, Rejected, reading
from .recorder import REJECTED, Refused, Result

PROTOBUF, JSON = "application/x-protobuf", "application/json"
API = "otlp"
# Event fields and the span attributes they are read from, the current name first.
_FIELDS: dict[str, tuple[str, ...]] = {
    "provider": ("gen_ai.provider.name", "gen_ai.system"),
    "model_requested": ("gen_ai.request.model",),
    "model": ("gen_ai.response.model",),
    "response_id": ("gen_ai.response.id",),
    "operation": ("gen_ai.operation.name",),
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    "output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    "cache_read_tokens": ("gen_ai.usage.cache_read.input_tokens",),
    "cache_write_tokens": ("gen_ai.usage.cache_creation.input_tokens",),
    "reasoning_tokens": ("gen_ai.usage.reasoning.output_tokens",),
    "agent": ("gen_ai.agent.name",),
    "task": ("gen_ai.conversation.id",),
    "end_user": ("user.id", "enduser.id"),
    "finish_reason": ("gen_ai.response.finish_reasons",),
    "service_tier": ("openai.response.service_tier",),
    "error_type": ("error.type",),
}
_READ = frozenset(name for names in _FIELDS.values() for name in names) | {
    "http.response.status_code"}
_WRAPPERS = frozenset({"invoke_agent", "create_agent", "execute_tool", "invoke_workflow",
                       "retrieval"})
_MAX_REASONS = 10  # in partial_success's message; the rest are counted


def decode(body: bytes, media: str) -> ExportTraceServiceRequest:
    """An ExportTraceServiceRequest from its protobuf or JSON encoding; RequestError 400 for
    one that is not, 415 for another media type."""
    request = ExportTraceServiceRequest()
    try:
        if media == PROTOBUF:
            request.ParseFromString(body)
        elif media == JSON:
            document = orjson.loads(body)
            _bound(_json_counts(document))  # before protobuf's (slow) JSON parser sees them
            _ids_to_base64(document)
            json_format.ParseDict(document, request, ignore_unknown_fields=True)
        else:
            raise RequestError(f"send OTLP traces as {PROTOBUF} or {JSON}, not "
                               f"{media[:60]!r}", status=415, type="unsupported_media_type")
    except (DecodeError, json_format.ParseError, orjson.JSONDecodeError, ValueError,
            TypeError, RecursionError) as e:
        raise RequestError(f"the body is not an OTLP ExportTraceServiceRequest "
                           f"({media}): {str(e)[:200]}") from None
    _bound(_counts(request))
    return request


def _bound(counts: Iterator[tuple[int, str]]) -> None:
    """RequestError 413 at the first count (resources, scopes, spans) over MAX_BATCH: a
    request of millions of empty ones is refused before they are walked one by one."""
    for count, what in counts:
        if count > MAX_BATCH:
            raise too_many(count, what)


def _counts(request: ExportTraceServiceRequest) -> Iterator[tuple[int, str]]:
    yield len(request.resource_spans), "resource spans"
    yield sum(len(resource.scope_spans) for resource in request.resource_spans), "scope spans"
    yield sum(len(scope.spans) for resource in request.resource_spans
              for scope in resource.scope_spans), "spans"


def _json_counts(document: Any) -> Iterator[tuple[int, str]]:
    """As _counts, under either name protobuf's JSON parser takes for a field."""
    resources = [*_list(document, "resourceSpans"), *_list(document, "resource_spans")]
    yield len(resources), "resource spans"
    scopes = [scope for resource in resources
              for scope in (*_list(resource, "scopeSpans"), *_list(resource, "scope_spans"))]
    yield len(scopes), "scope spans"
    yield sum(len(_list(scope, "spans")) for scope in scopes), "spans"


def readings(request: ExportTraceServiceRequest, now: datetime) -> list[Reading | Refused]:
    """A reading (or why not) for each GenAI span that produced tokens, in order."""
    found: list[Reading | Refused] = []
    for resource in request.resource_spans:
        for scope in resource.scope_spans:
            for span in scope.spans:
                attributes = {a.key: _value(a.value) for a in span.attributes if a.key in _READ}
                genai = any(a.key.startswith("gen_ai.") for a in span.attributes)
                if genai and attributes.get("gen_ai.operation.name") not in _WRAPPERS:
                    found.append(_reading(span, attributes, now))
    return found


def answer(results: list[Result], media: str) -> bytes:
    """OTLP's ExportTraceServiceResponse, encoded as the request was."""
    response = ExportTraceServiceResponse()
    if rejected := [r for r in results if r.result == REJECTED]:
        reasons = "; ".join(f"span {r.label}: {r.reason}" for r in rejected[:_MAX_REASONS])
        more = len(rejected) - _MAX_REASONS
        response.partial_success.rejected_spans = len(rejected)
        response.partial_success.error_message = reasons + (f"; and {more} more" if more > 0
                                                            else "")
    if media == JSON:
        return orjson.dumps(json_format.MessageToDict(response))
    return response.SerializeToString()


def _reading(span: Span, attributes: dict[str, Any], now: datetime) -> Reading | Refused:
    label = f"{span.trace_id.hex()}/{span.span_id.hex()}"
    if len(span.trace_id) != 16 or len(span.span_id) != 8 or not any(span.trace_id) \
            or not any(span.span_id):
        return Refused(label, "a span needs its trace id (16 bytes) and span id (8 bytes)")
    fields = {name: next((attributes[k] for k in keys if attributes.get(k) is not None), None)
              for name, keys in _FIELDS.items()}
    if isinstance(fields["finish_reason"], list):  # an array: the first choice's
        fields["finish_reason"] = next(iter(fields["finish_reason"]), None)
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if not start:
        return Refused(label, "the span has no start time")
    fields["time"] = _instant(start)
    if end:
        fields["duration_ms"] = (end - start) / 1e6 if end >= start else -1
    if span.status.code == Status.STATUS_CODE_ERROR:
        code = attributes.get("http.response.status_code")
        fields["status"] = code if isinstance(code, int) and 400 <= code <= 599 else 500
        fields["error_type"] = fields["error_type"] or "error"
    try:
        return reading(label, API, [("span", label)], fields, now)
    except Rejected as e:
        return Refused(label, e.reason)


def _instant(unix_nano: int) -> datetime:
    """A time in ns since the epoch, to the microsecond, in whole numbers: through a float
    (53 bits) it can round up into the next millisecond, or second, or month."""
    seconds, nanos = divmod(unix_nano, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanos // 1000)


def _value(value: AnyValue) -> Any:
    """A scalar attribute's value; an array's string members; None for anything else."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [v.string_value for v in value.array_value.values
                if v.WhichOneof("value") == "string_value"]
    if kind in ("string_value", "int_value", "double_value", "bool_value"):
        return getattr(value, kind)
    return None


def _ids_to_base64(document: Any) -> None:
    """OTLP/JSON writes trace and span ids in hex, where protobuf's JSON mapping (which
    decodes the rest) reads bytes as base64: turn the hex ones over, in place."""
    for resource in _list(document, "resourceSpans"):
        for scope in _list(resource, "scopeSpans"):
            for span in _list(scope, "spans"):
                for item in (span, *_list(span, "links")):
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if isinstance(item, dict) and isinstance(item.get(key), str):
                            item[key] = _base64(item[key])


def _list(parent: Any, key: str) -> list[Any]:
    found = parent.get(key) if isinstance(parent, dict) else None
    return found if isinstance(found, list) else []


def _base64(text: str) -> str:
    if len(text) in (16, 32):
        try:
            return base64.b64encode(bytes.fromhex(text)).decode()
        except ValueError:
            pass
    try:  # base64 already, as protobuf's own JSON printer writes it
        base64.b64decode(text, validate=True)
    except binascii.Error:
        raise RequestError(f"a trace or span id must be hex: {text[:40]!r}") from None
    return text
