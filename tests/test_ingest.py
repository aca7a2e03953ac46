"""Usage reported by apps: OTLP/HTTP spans from the OpenTelemetry SDK's exporter (protobuf,
gzip) and OTLP/JSON, and CloudEvents from the CloudEvents SDK (batch, structured and binary
modes), on SQLite and PostgreSQL. Each reading becomes an event of the sending key's
consumer, priced here (the config's tariff, else genai-prices, checked against its own
calculator), charged to its budgets in the period of its own time, and stored once however
often it is sent; a partly bad batch keeps its good readings and says why the others were
rejected."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import genai_prices
import httpx
import pytest
from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status, StatusCode

from conftest import MINIMAL_CONFIG, Gateway, start_gateway, stop_gateway, tariff_cost
from processes import cli, reply_head
from test_replicas import sharing  # noqa: F401  (a fixture)
from tokometer.config import PostgresURL
from tokometer.ledger import open_store

ADMIN = "ingest-admin-token"
TRACES, EVENTS = "/v1/otlp/v1/traces", "/v1/events"
CLAUDE = "claude-sonnet-4-20250514"
# The tariff readings are priced at when they name this provider and model.
PRICED = """
[[providers]]
name = "openai"
api = "openai"
base_url = "http://127.0.0.1:9/v1"
region = "US"

[[models]]
name = "gpt-4o-mini"
routes = [{ provider = "openai", model = "gpt-4o-mini" }]
price = { input = 2.5, cache_read = 1.25, cache_write = 3.75, output = 10 }
"""
CONFIG = 'admin_token_env = "INGEST_ADMIN"' + PRICED + """
[[budgets]]
tenant = "acme"
limit = 1000
unit = "USD"
period = "month"
""" + MINIMAL_CONFIG


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[Gateway]:
    store = PostgresURL(request.getfixturevalue("postgres").new_database()) \
        if request.param == "postgresql" else None
    gateway = start_gateway(tmp_path_factory.mktemp("ingest"), CONFIG, store=store,
                            env={"INGEST_ADMIN": ADMIN})
    yield gateway
    stop_gateway(gateway)


class Keep(SpanExporter):
    """Keeps the finished spans, to send them as a test says."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def spans(*calls: dict[str, Any], start: datetime | None = None) -> list[ReadableSpan]:
    """A span per call (its attributes; "_error" marks a failed call), made by the SDK."""
    kept = Keep()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracer = provider.get_tracer("tests")
    at = int((start or datetime.now(UTC)).timestamp() * 1e9)
    for i, attributes in enumerate(calls):
        attributes = dict(attributes)
        error = attributes.pop("_error", False)
        span = tracer.start_span(f"chat {i}", attributes=attributes, start_time=at)
        if error:
            span.set_status(Status(StatusCode.ERROR, "boom"))
        span.end(end_time=at + 1_250_000_000)  # 1.25 s
    return kept.spans


def chat(model: str = "gpt-4o-mini", provider: str = "openai", **extra: Any) -> dict[str, Any]:
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
            "gen_ai.request.model": model, "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 300,
            "gen_ai.usage.cache_read.input_tokens": 200, **extra}


def label(span: ReadableSpan) -> str:
    context = span.get_span_context()
    return f"{context.trace_id:032x}/{context.span_id:016x}"


def events_of(gw: Gateway, where: str = "source = 'ingest'") -> list[dict[str, Any]]:
    with open_store(gw.store) as store:
        rows = store.execute(f"SELECT * FROM events WHERE {where} ORDER BY id")
        names = [d[0] for d in rows.description]
        return [dict(zip(names, row, strict=True)) for row in rows]


def by_id(gw: Gateway, event_id: str) -> dict[str, Any]:
    return events_of(gw, f"id = '{event_id}'")[0]


def post_spans(gw: Gateway, found: list[ReadableSpan], *, as_json: bool = False,
               key: str | None = None) -> httpx.Response:
    message = encode_spans(found)
    if as_json:
        document = json_format.MessageToDict(message)
        for resource in document["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                for span in scope["spans"]:  # OTLP/JSON writes ids in hex
                    for k in ("traceId", "spanId", "parentSpanId"):
                        if k in span:
                            span[k] = base64.b64decode(span[k]).hex()
        return gw.post(TRACES, json.dumps(document).encode(), key=key or gw.key,
                       headers={"content-type": "application/json"})
    return gw.post(TRACES, message.SerializeToString(), key=key or gw.key,
                   headers={"content-type": "application/x-protobuf"})


def partial(response: httpx.Response) -> ExportTraceServiceResponse:
    answer = ExportTraceServiceResponse()
    answer.ParseFromString(response.content)
    return answer


def tally(response: httpx.Response) -> dict[str, int]:
    return {k: int(v) for k, v in (p.split("=") for p in
                                   response.headers["x-tokometer-ingest"].split(", "))}


# --- OTLP ---------------------------------------------------------------------------------


def test_the_sdk_exporter_sends_spans_that_become_priced_events_once(gw):
    """Through the OTLP/HTTP exporter itself (protobuf, gzip): each chat span is one event of
    the key's consumer, at the span's own time and duration, priced here; a replay adds
    nothing."""
    exporter = OTLPSpanExporter(endpoint=gw.url + TRACES, compression=Compression.Gzip,
                                headers={"authorization": f"Bearer {gw.key}"})
    sent = spans(chat(), chat(CLAUDE, "anthropic", **{"gen_ai.usage.output_tokens": 41}),
                 start=datetime(2026, 11, 20, 8, 30, tzinfo=UTC))
    before = len(events_of(gw))
    assert exporter.export(sent) is SpanExportResult.SUCCESS
    assert exporter.export(sent) is SpanExportResult.SUCCESS  # a retry: stored once
    exporter.shutdown()
    stored = events_of(gw)[before:]
    assert len(stored) == 2
    mini, claude = sorted(stored, key=lambda e: e["model"] != "gpt-4o-mini")
    for event in stored:
        assert (event["tenant"], event["app"], event["key_id"]) == ("acme", "tests", gw.key_id)
        assert event["time"] == "2026-11-20T08:30:00.000Z"
        assert event["duration_ms"] == 1250.0
        assert (event["api"], event["operation"], event["usage_source"]) == (
            "otlp", "chat", "reported")
        assert (event["input_tokens"], event["cache_read_tokens"]) == (1200, 200)
        assert event["reported_cost"] is None
    assert mini["provider"] == "openai" and mini["provider_region"] == "US"
    assert Decimal(mini["cost"]) == tariff_cost(1200, 200, 0, 300)
    assert mini["price_ref"] == "tariff:config"
    oracle = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1200, cache_read_tokens=200, output_tokens=41),
        model_ref=CLAUDE, provider_id="anthropic",
        genai_request_timestamp=datetime(2026, 11, 20, 8, 30, tzinfo=UTC))
    assert Decimal(claude["cost"]) == oracle.total_price
    assert claude["output_tokens"] == 41 and claude["model_origin"] == "US"


def test_a_partly_bad_export_keeps_the_good_spans_and_says_why_the_rest_were_rejected(gw):
    sent = spans(
        chat(),
        chat(**{"gen_ai.usage.cache_read.input_tokens": 5000}),  # more cached than input
        chat(**{"gen_ai.usage.input_tokens": -3}),
        {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
         "gen_ai.usage.input_tokens": 5, "gen_ai.usage.output_tokens": 5},  # no provider
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner",
         "gen_ai.usage.input_tokens": 99, "gen_ai.usage.output_tokens": 99},  # wraps calls
        {"http.request.method": "GET"},  # not a GenAI span
        chat(_error=True, **{"error.type": "rate_limited", "http.response.status_code": 429}),
    )
    response = post_spans(gw, sent)
    assert response.status_code == 200
    answer = partial(response)
    assert answer.partial_success.rejected_spans == 3
    message = answer.partial_success.error_message
    assert f"span {label(sent[1])}: cache_read_tokens and cache_write_tokens add up to more" \
        in message
    assert f"span {label(sent[2])}: input_tokens must be a whole number" in message
    assert f"span {label(sent[3])}: no provider" in message
    assert tally(response) == {"accepted": 2, "duplicate": 0, "rejected": 3}
    failed = events_of(gw, "error_type = 'rate_limited'")
    assert [(e["status"], e["energy_wh"]) for e in failed][-1] == (429, None)
    assert not events_of(gw, "agent = 'planner'")


def test_otlp_json_with_hex_ids_is_read_and_answered_in_json(gw):
    sent = spans(chat(**{"gen_ai.usage.output_tokens": 77, "gen_ai.agent.name": "writer",
                         "gen_ai.conversation.id": "conv-9", "user.id": "u-1"}),
                 chat(**{"gen_ai.usage.output_tokens": "many"}))
    response = post_spans(gw, sent, as_json=True)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["partialSuccess"]["rejectedSpans"] == "1"
    assert "output_tokens must be a whole number" in body["partialSuccess"]["errorMessage"]
    event = events_of(gw, "agent = 'writer'")[-1]
    assert (event["task"], event["end_user"], event["output_tokens"]) == ("conv-9", "u-1", 77)
    again = post_spans(gw, sent)  # the same spans as protobuf: the same readings
    assert tally(again) == {"accepted": 0, "duplicate": 1, "rejected": 1}


def test_the_same_call_reported_as_a_span_and_as_a_cloudevent_is_stored_once(gw):
    """Both name the provider's response id: one reading, whichever channel came first."""
    response_id = f"chatcmpl-{datetime.now(UTC).timestamp()}"
    first = post_spans(gw, spans(chat(**{"gen_ai.response.id": response_id})))
    assert tally(first)["accepted"] == 1
    event = cloud_event("other-id", provider="openai", model="gpt-4o-mini", input_tokens=1200,
                        output_tokens=300, response_id=response_id)
    answer = post_events(gw, [event]).json()
    original = events_of(gw, f"id = '{answer['data'][0]['event_id']}'")[0]
    assert answer["data"][0]["result"] == "duplicate" and original["api"] == "otlp"


# --- CloudEvents ----------------------------------------------------------------------------


def cloud_event(event_id: str, source: str = "/apps/batch-job", **data: Any) -> CloudEvent:
    attributes = {"id": event_id, "source": source, "type": "tokometer.usage.v1",
                  "specversion": "1.0", "datacontenttype": "application/json"}
    if "time" in data:
        attributes["time"] = data.pop("time")
    return CloudEvent(attributes, data)


def post_events(gw: Gateway, found: list[CloudEvent], key: str | None = None,
                **headers: str) -> httpx.Response:
    """A batch: the SDK's own JSON for each event, in a JSON array."""
    body = b"[" + b",".join(JSONFormat().write(e) for e in found) + b"]"
    return gw.post(EVENTS, body, key=key or gw.key, headers={
        "content-type": "application/cloudevents-batch+json", **headers})


def test_a_cloudevents_batch_is_answered_reading_by_reading(gw):
    late = datetime.now(UTC) - timedelta(days=75)
    found = [
        cloud_event("r-1", provider="openai", model="gpt-4o-mini", input_tokens=1000,
                    cache_write_tokens=100, output_tokens=250, reasoning_tokens=50,
                    cost="0.99", agent="etl", task="nightly", end_user="ops"),
        cloud_event("r-2", provider="openai", model="gpt-4o-mini", input_tokens=10,
                    output_tokens=1, time=late),
        cloud_event("r-3", provider="openai", model="gpt-4o-mini", prompt_tokens=10),
        cloud_event("r-4", provider="openai", model="gpt-4o-mini", input_tokens=10,
                    output_tokens=1, time=datetime.now(UTC) + timedelta(hours=2)),
        cloud_event("r-5", provider="openai", input_tokens=1, output_tokens=1),
        cloud_event("r-6", provider="openai", model="gpt-4o-mini", input_tokens=10,
                    output_tokens=1, cost="1e9"),
    ]
    response = post_events(gw, found)
    assert response.status_code == 200
    body = response.json()
    results = {r["id"]: r for r in body["data"]}
    assert [r["id"] for r in body["data"]] == [f"r-{i}" for i in range(1, 7)]
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (2, 0, 4)
    assert results["r-1"]["result"] == results["r-2"]["result"] == "accepted"
    assert "unknown field 'prompt_tokens'" in results["r-3"]["reason"]
    assert "is not between" in results["r-4"]["reason"]
    assert "no model" in results["r-5"]["reason"]
    assert "cost must be a non-negative decimal string" in results["r-6"]["reason"]
    first = by_id(gw, results["r-1"]["event_id"])
    assert (first["agent"], first["task"], first["end_user"]) == ("etl", "nightly", "ops")
    assert (first["api"], first["source"], first["reasoning_tokens"]) == (
        "cloudevents", "ingest", 50)
    assert Decimal(first["reported_cost"]) == Decimal("0.99")
    assert Decimal(first["cost"]) == tariff_cost(1000, 0, 100, 250)
    assert first["duration_ms"] == 0.0 and first["energy_wh"] is None  # no duration given
    assert by_id(gw, results["r-2"]["event_id"])["time"] == \
        late.isoformat(timespec="milliseconds").replace("+00:00", "Z")  # late: its own time

    replay = post_events(gw, found[:2]).json()
    assert [(r["result"], r["event_id"]) for r in replay["data"]] == [
        ("duplicate", results["r-1"]["event_id"]), ("duplicate", results["r-2"]["event_id"])]
    other_source = post_events(gw, [cloud_event("r-1", source="/apps/other", provider="openai",
                                                model="gpt-4o-mini", input_tokens=3,
                                                output_tokens=3)]).json()
    assert other_source["accepted"] == 1  # ids are unique per source, as CloudEvents says


def test_structured_and_binary_mode_events_from_the_sdk(gw):
    structured = to_structured(cloud_event("s-1", provider="openai", model="gpt-4o-mini",
                                           input_tokens=8, output_tokens=2), JSONFormat())
    binary = to_binary(cloud_event("b-1", provider="openai", model="gpt-4o-mini",
                                   input_tokens=9, output_tokens=3), JSONFormat())
    for message, tokens in ((structured, 8), (binary, 9)):
        response = gw.post(EVENTS, message.body, headers=dict(message.headers))
        assert response.status_code == 200, response.text
        result = response.json()["data"][0]
        assert result["result"] == "accepted"
        assert by_id(gw, result["event_id"])["input_tokens"] == tokens


def test_budgets_count_readings_in_the_period_of_their_own_time(gw):
    """This month's spend grows by a reading of this month, not by a late one of last
    year's; neither is refused (past usage), and both are in the ledger."""
    def spent() -> Decimal:
        budgets = gw.get("/admin/budgets", key=ADMIN).json()["data"]
        return Decimal(next(b for b in budgets if b["scope_value"] == "acme")["spent"])

    before = spent()
    old = datetime.now(UTC) - timedelta(days=400)
    answer = post_events(gw, [
        cloud_event(f"now-{before}", provider="openai", model="gpt-4o-mini",
                    input_tokens=40_000, output_tokens=2_000),
        cloud_event(f"old-{before}", provider="openai", model="gpt-4o-mini",
                    input_tokens=40_000, output_tokens=2_000, time=old)]).json()
    assert answer["accepted"] == 2
    assert spent() - before == tariff_cost(40_000, 0, 0, 2_000)


# --- hostile and broken requests ----------------------------------------------------------------


def test_bad_keys_are_refused_before_the_body_is_read(gw):
    before = len(events_of(gw))
    body = b"[" + JSONFormat().write(cloud_event("k-1", provider="openai", model="m",
                                                 input_tokens=1, output_tokens=1)) + b"]"
    for path in (TRACES, EVENTS):
        assert gw.post(path, body, key="tk-not-a-key").status_code == 401
        assert gw.post(path, body, key=None).status_code == 401
        # headers that promise a terabyte that never comes: answered without waiting
        reply = reply_head(gw, f"POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
                           f"tk-no\r\nContent-Type: application/json\r\nContent-Length: "
                           f"{10**12}\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 401")
    assert len(events_of(gw)) == before


@pytest.mark.parametrize("content_type, body, encoding, status, says", [
    ("application/x-protobuf", b"\xff\xff\xff", None, 400, "not an OTLP"),
    ("application/json", b"{\"resourceSpans\": 5}", None, 400, "not an OTLP"),
    ("application/json", b"{\"resourceSpans\": [{\"scopeSpans\": [{\"spans\": "
     b"[{\"traceId\": \"zz\"}]}]}]}", None, 400, "must be hex"),
    ("text/plain", b"hello", None, 415, "send OTLP traces as"),
    ("application/x-protobuf", b"not gzip", "gzip", 400, "not valid gzip"),
    ("application/x-protobuf", gzip.compress(b"\0" * 20_000_000), "gzip", 413, "decompressed"),
    ("application/x-protobuf", b"", "br", 415, "content-encoding"),
])
def test_broken_otlp_bodies_get_clear_errors(gw, content_type, body, encoding, status, says):
    headers = {"content-type": content_type, **({"content-encoding": encoding}
                                                 if encoding else {})}
    response = gw.post(TRACES, body, headers=headers)
    assert response.status_code == status
    assert says in response.json()["error"]["message"]


def test_oversized_and_malformed_batches_are_refused_whole_or_reading_by_reading(gw):
    many = [{"specversion": "1.0", "id": str(i), "source": "s", "type": "tokometer.usage.v1",
             "data": {}} for i in range(4097)]
    big = gw.post(EVENTS, json.dumps(many).encode(),
                  headers={"content-type": "application/cloudevents-batch+json"})
    assert big.status_code == 413 and "smaller batches" in big.json()["error"]["message"]
    assert gw.post(EVENTS, b"[1, 2", headers={
        "content-type": "application/cloudevents-batch+json"}).status_code == 400
    odd = gw.post(EVENTS, json.dumps([
        7, {"specversion": "0.3", "id": "a", "source": "s", "type": "tokometer.usage.v1"},
        {"specversion": "1.0", "id": "b", "source": "s", "type": "other"},
        {"specversion": "1.0", "id": "c", "source": "s", "type": "tokometer.usage.v1",
         "data": [1]},
        {"specversion": "1.0", "id": "d", "source": "s", "type": "tokometer.usage.v1",
         "data": {"provider": "openai", "model": "x" * 300, "input_tokens": 1,
                  "output_tokens": 1}},
        {"specversion": "1.0", "id": "e", "source": "s", "type": "tokometer.usage.v1",
         "data": {"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 2**41,
                  "output_tokens": 1}},
        {"specversion": "1.0", "id": "f", "source": "s", "type": "tokometer.usage.v1",
         "data": {"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 5,
                  "output_tokens": 3, "reasoning_tokens": 4}},
    ]).encode(), headers={"content-type": "application/cloudevents-batch+json"}).json()
    reasons = [r.get("reason", "") for r in odd["data"]]
    assert odd["rejected"] == 7 and odd["accepted"] == 0
    assert "a CloudEvent is a JSON object" in reasons[0]
    assert "specversion" in reasons[1] and "type must be" in reasons[2]
    assert "data must be a JSON object" in reasons[3]
    assert "longer than 256" in reasons[4]
    assert "whole number from 0" in reasons[5]
    assert "reasoning_tokens is more than output_tokens" in reasons[6]


def test_ingested_events_are_in_the_verified_log_with_receipts(gw):
    answer = post_events(gw, [cloud_event(f"audit-{datetime.now(UTC).timestamp()}",
                                          provider="openai", model="gpt-4o-mini",
                                          input_tokens=5, output_tokens=5)]).json()
    event_id = answer["data"][0]["event_id"]
    receipt = gw.get(f"/v1/receipts/{event_id}")
    assert receipt.status_code == 200 and receipt.json()["event"]["source"] == "ingest"
    done = cli(gw.config, "ledger", "audit")
    assert done.returncode == 0, done.stdout + done.stderr
    by_source = cli(gw.config, "report", "--by", "source", "--format", "json")
    rows = {r["source"]: r for r in json.loads(by_source.stdout)}
    assert rows["ingest"]["requests"] == len(events_of(gw))


# --- several processes ----------------------------------------------------------------------


def test_one_batch_sent_to_every_process_at_once_is_stored_and_charged_once(sharing):  # noqa: F811
    """Two workers on one SQLite file, or three replicas on one PostgreSQL: the same 40
    readings sent 12 times at once, spread over the processes. Each reading is accepted
    exactly once (every other answer names the same event), 40 events are stored, and the
    shared budget's spend is their cost, once."""
    gateways = sharing('[[budgets]]\ntenant = "acme"\nlimit = 1000\nunit = "USD"\n'
                       'period = "month"\n')
    batch = b"[" + b",".join(JSONFormat().write(cloud_event(
        f"p-{i}", provider="fake-openai", model="gpt-4o-mini-delayed", input_tokens=100,
        output_tokens=1000 + i)) for i in range(40)) + b"]"

    async def send() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(
                max_connections=12)) as client:
            answers = await asyncio.gather(*(client.post(
                gateways[i % len(gateways)].url + EVENTS, content=batch, headers={
                    "authorization": f"Bearer {gateways[i % len(gateways)].key}",
                    "content-type": "application/cloudevents-batch+json"})
                for i in range(12)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        return [r for a in answers for r in a.json()["data"]]

    results = asyncio.run(send())
    accepted = [r for r in results if r["result"] == "accepted"]
    assert sorted(r["id"] for r in accepted) == sorted(f"p-{i}" for i in range(40))
    holder = {r["id"]: r["event_id"] for r in accepted}
    assert all(r["result"] == "duplicate" and r["event_id"] == holder[r["id"]]
               for r in results if r not in accepted)
    stored = events_of(gateways[0])
    assert sorted(e["id"] for e in stored) == sorted(holder.values())
    cost = sum(Decimal(e["cost"]) for e in stored)
    assert cost == sum(Decimal(1000 + i) * 10 / 1_000_000 for i in range(40))
    status = cli(gateways[0].config, "budgets", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert Decimal(json.loads(status.stdout.splitlines()[0])["spent"]) == cost


def test_a_cost_in_another_currency_is_not_kept_but_the_reading_is(gw):
    """Usage is never lost for a field beside it: the reading is priced here, and the answer
    says its reported cost was not kept. RFC 3339's lower-case t and z are times too."""
    answer = gw.post(EVENTS, [{  # by hand: the SDK takes a time only as a datetime
        "specversion": "1.0", "id": f"eur-{datetime.now(UTC).timestamp()}", "source": "/s",
        "type": "tokometer.usage.v1", "time": "2026-11-20t10:00:00z",
        "datacontenttype": "application/json; charset=utf-8",
        "data": {"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 100,
                 "output_tokens": 10, "cost": "0.5", "currency": "EUR"}}]).json()
    result = answer["data"][0]
    assert result["result"] == "accepted" and "is not kept" in result["reason"]
    event = by_id(gw, result["event_id"])
    assert event["reported_cost"] is None
    assert Decimal(event["cost"]) == tariff_cost(100, 0, 0, 10)
    assert event["time"] == "2026-11-20T10:00:00.000Z"
