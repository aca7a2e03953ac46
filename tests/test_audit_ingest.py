"""Ingested readings checked against independent oracles: genai-prices' own calculator and a
hand-worked tariff for costs, EcoLogits' own `llm_impacts` for energy and CO2e, integer
arithmetic for a span's time, and a provider's usage export for `tokometer reconcile`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import genai_prices
import httpx
import pytest
from ecologits.tracers.utils import llm_impacts
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from conftest import MINIMAL_CONFIG, Gateway, start_gateway, stop_gateway
from processes import cli
from test_ingest import PRICED
from tokometer.ledger import open_store

ADMIN = "audit-ingest-admin"
TARIFF = {"input": Decimal("2.5"), "cache_read": Decimal("1.25"), "output": Decimal("10")}
CONFIG = 'admin_token_env = "AUDIT_INGEST_ADMIN"' + PRICED + """
[[budgets]]
tenant = "acme"
limit = 100000
unit = "USD"
period = "month"
""" + MINIMAL_CONFIG


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("audit-ingest"), CONFIG,
                            env={"AUDIT_INGEST_ADMIN": ADMIN})
    yield gateway
    stop_gateway(gateway)


def cloud_events(gw: Gateway, *data: dict[str, Any], time: datetime | None = None
                 ) -> list[dict[str, Any]]:
    """Each reading as a CloudEvent of one batch; the stored event of each (all accepted)."""
    batch = [{"specversion": "1.0", "id": os.urandom(8).hex(), "source": "/audit",
              "type": "tokometer.usage.v1", "data": d,
              **({"time": time.isoformat()} if time else {})} for d in data]
    answer = gw.post("/v1/events", json.dumps(batch).encode(), headers={
        "content-type": "application/cloudevents-batch+json"}).json()
    assert answer["accepted"] == len(data), answer
    return [gw.event(r["event_id"]) for r in answer["data"]]


def attribute(key: str, value: str | int) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value) if isinstance(value, str)
                    else AnyValue(int_value=value))


def send_spans(gw: Gateway, *spans: tuple[int, int, dict[str, str | int]]) -> None:
    """Spans (start and end in ns since the epoch, attributes) as one OTLP protobuf export,
    written here with OTLP's own message types; all must be accepted."""
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for start, end, attributes in spans:
        span = scope.spans.add(name="chat", trace_id=os.urandom(16), span_id=os.urandom(8),
                               start_time_unix_nano=start, end_time_unix_nano=end)
        span.attributes.extend(attribute(k, v) for k, v in attributes.items())
    response = gw.post("/v1/otlp/v1/traces", request.SerializeToString(),
                       headers={"content-type": "application/x-protobuf"})
    assert response.headers["x-tokometer-ingest"] == \
        f"accepted={len(spans)}, duplicate=0, rejected=0", response.content


def stored(gw: Gateway, where: str, *params: Any) -> list[dict[str, Any]]:
    with open_store(gw.store) as store:
        ids = [r[0] for r in store.execute(f"SELECT id FROM events WHERE {where} ORDER BY id",
                                           params)]
    return [gw.event(i) for i in ids]


def span_attributes(request_model: str, response_model: str, **usage: int
                    ) -> dict[str, str | int]:
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": request_model, "gen_ai.response.model": response_model,
            **{f"gen_ai.usage.{k}": v for k, v in usage.items()}}


def test_costs_are_genai_prices_own_for_providers_by_their_opentelemetry_names(gw):
    """genai-prices' calc_price for the same usage at the reading's own time, including
    dates either side of a price change, semconv provider names, and cache writes."""
    usage = {"input_tokens": 120_000, "cache_read_tokens": 30_000, "cache_write_tokens": 10_000,
             "output_tokens": 9_000, "reasoning_tokens": 1_000}
    cases = [  # (provider as OpenTelemetry names it, model, genai-prices' provider, time)
        ("anthropic", "claude-sonnet-4-6", "anthropic", datetime(2026, 3, 12, 23, tzinfo=UTC)),
        ("anthropic", "claude-sonnet-4-6", "anthropic", datetime(2026, 3, 13, 1, tzinfo=UTC)),
        ("gcp.gemini", "gemini-2.5-pro", "google", datetime(2026, 11, 2, tzinfo=UTC)),
        ("gcp.vertex_ai", "gemini-3-pro-preview", "google", datetime(2026, 1, 6, tzinfo=UTC)),
        ("gcp.gen_ai", "gemini-2.5-flash", "google", datetime(2026, 11, 2, tzinfo=UTC)),
        ("mistral_ai", "mistral-small-latest", "mistral", datetime(2026, 3, 15, tzinfo=UTC)),
        ("mistral_ai", "mistral-small-latest", "mistral", datetime(2026, 3, 17, tzinfo=UTC)),
        ("x_ai", "grok-3-mini", "x-ai", datetime(2026, 11, 2, tzinfo=UTC)),
        ("azure.ai.openai", "gpt-4o", "azure", datetime(2026, 11, 2, tzinfo=UTC)),
        ("aws.bedrock", "us.anthropic.claude-sonnet-4-20250514-v1:0", "aws",
         datetime(2026, 11, 2, tzinfo=UTC)),
        ("deepseek", "deepseek-chat", "deepseek", datetime(2026, 11, 2, 0, 15, tzinfo=UTC)),
        ("deepseek", "deepseek-chat", "deepseek", datetime(2026, 11, 2, 17, tzinfo=UTC)),
        ("openai", "gpt-5.6-luna", "openai", datetime(2026, 7, 29, tzinfo=UTC)),
        ("openai", "gpt-5.6-luna", "openai", datetime(2026, 7, 31, tzinfo=UTC)),
    ]
    for provider, model, price_provider, at in cases:
        event, = cloud_events(gw, {"provider": provider, "model": model, **usage}, time=at)
        oracle = genai_prices.calc_price(genai_prices.Usage(
            input_tokens=usage["input_tokens"], cache_read_tokens=usage["cache_read_tokens"],
            cache_write_tokens=usage["cache_write_tokens"], output_tokens=usage["output_tokens"],
            output_reasoning_tokens=usage["reasoning_tokens"]), model_ref=model,
            provider_id=price_provider, genai_request_timestamp=at).total_price
        assert Decimal(event["cost"]) == oracle, (provider, model, at)
    unknown, = cloud_events(gw, {"provider": "acme-llm", "model": "nobody-knows-1", **usage})
    assert unknown["cost"] is None and unknown["price_ref"] is None


def test_a_configured_tariff_prices_a_span_whose_response_model_is_the_dated_version(gw):
    """OpenAI answers `gpt-4o-mini` as `gpt-4o-mini-2024-07-18`, and OpenTelemetry's
    instrumentations report both: the route's tariff prices it, as it does the gateway's own
    calls, not the catalog's list price for the dated name."""
    now = int(datetime.now(UTC).timestamp()) * 10**9
    send_spans(gw, (now, now + 2 * 10**9, span_attributes(
        "gpt-4o-mini", "gpt-4o-mini-2024-07-18", input_tokens=10_000, output_tokens=500,
        **{"cache_read.input_tokens": 2_000})))
    event, = stored(gw, "model = ? AND input_tokens = 10000", "gpt-4o-mini-2024-07-18")
    hand = (8_000 * TARIFF["input"] + 2_000 * TARIFF["cache_read"]
            + 500 * TARIFF["output"]) / 1_000_000
    assert (Decimal(event["cost"]), event["price_ref"]) == (hand, "tariff:config")
    assert event["model_requested"] == "gpt-4o-mini"


def test_a_span_time_is_its_start_truncated_to_the_millisecond(gw):
    """A span's start in ns is the event's time cut to the millisecond (never rounded up into
    the next millisecond, second or month), so a span of the last instant of last month is
    not charged to this month's budget."""
    def spent() -> Decimal:
        budgets = gw.get("/admin/budgets", key=ADMIN).json()["data"]
        return Decimal(next(b for b in budgets if b["unit"] == "USD")["spent"])

    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    edge = int(month.timestamp()) * 10**9 - 100  # 100 ns before this month began
    inside = int((month - timedelta(days=1)).timestamp()) * 10**9 + 123_999_900
    before = spent()
    send_spans(gw, *((start, start + 1_500_000_123, span_attributes(
        "gpt-4o-mini", "gpt-4o-mini", input_tokens=77_001 + i, output_tokens=5))
        for i, start in enumerate((edge, inside))))
    last, other = (stored(gw, "input_tokens = ?", 77_001 + i)[0] for i in range(2))
    assert last["time"] == (month - timedelta(milliseconds=1)).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
    assert other["time"].endswith(".123Z")
    assert last["duration_ms"] == other["duration_ms"] == 1500.0
    assert spent() == before


@pytest.mark.parametrize("provider", ["gcp.gemini", "gcp.vertex_ai", "gcp.gen_ai"])
def test_google_by_its_opentelemetry_names_gets_ecologits_figures_for_google(gw, provider):
    """EcoLogits' llm_impacts for Google (its data centres' PUE and grid) for the same
    output and latency: a span naming Google as OpenTelemetry does is served by Google."""
    event, = cloud_events(gw, {"provider": provider, "model": "gemini-2.5-flash",
                               "input_tokens": 0, "output_tokens": 700, "duration_ms": 4321.5})
    theirs = llm_impacts("google_genai", "gemini-2.5-flash", 700, 4.3215)
    energy, gwp = theirs.energy.value, theirs.gwp.value
    for field, value in (("energy_wh_low", energy.min), ("energy_wh_high", energy.max),
                         ("co2e_g_low", gwp.min), ("co2e_g_high", gwp.max)):
        assert event[field] is not None, field
        assert float(event[field]) == pytest.approx(value * 1000, rel=1e-5), field


def test_reconcile_sets_an_export_against_ingested_events_of_an_unrouted_provider(gw, tmp_path):
    """An app calling Anthropic directly reports its usage here: its export reconciles with
    those events though the config routes nothing to Anthropic; a name neither the config nor
    the ledger knows is still refused."""
    day = datetime(2026, 10, 7, 9, tzinfo=UTC)
    cloud_events(gw, *({"provider": "anthropic", "model": "claude-haiku-4-5",
                        "input_tokens": 1_000 * i, "output_tokens": 10 * i}
                       for i in (1, 2, 3)), time=day)
    export = tmp_path / "anthropic.csv"
    export.write_text("date,model,requests,input_tokens,output_tokens\n"
                      "2026-10-07,claude-haiku-4-5,3,6000,60\n")
    done = cli(gw.config, "reconcile", str(export), "--provider", "anthropic", "--format",
               "json", "--since", "2026-10-07", "--until", "2026-10-08")
    assert done.returncode == 0, done.stderr
    row, = json.loads(done.stdout)
    assert (row["requests_ledger"], row["input_tokens_ledger"], row["output_tokens_ledger"]) \
        == (3, 6000, 60)
    typo = cli(gw.config, "reconcile", str(export), "--provider", "antrhopic")
    assert typo.returncode != 0 and "no provider antrhopic" in typo.stderr


def test_budget_spend_grows_by_the_oracle_cost_of_the_readings_of_this_month(gw):
    """Spend grows by exactly the oracle cost of this month's readings, by both channels."""
    def spent() -> Decimal:
        status = cli(gw.config, "budgets", "status", "--json")
        return Decimal(next(json.loads(line) for line in status.stdout.splitlines()
                            if json.loads(line)["unit"] == "USD")["spent"])

    at = datetime.now(UTC) - timedelta(minutes=2)
    before = spent()
    cloud_events(gw, {"provider": "anthropic", "model": "claude-haiku-4-5",
                      "input_tokens": 50_000, "cache_write_tokens": 20_000,
                      "output_tokens": 4_000}, time=at)
    ns = int(at.timestamp()) * 10**9
    send_spans(gw, (ns, ns + 10**9, span_attributes("gpt-4o-mini", "gpt-4o-mini",
                                                    input_tokens=3_000, output_tokens=300)))
    claude = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=50_000, cache_write_tokens=20_000, output_tokens=4_000),
        model_ref="claude-haiku-4-5", provider_id="anthropic",
        genai_request_timestamp=at).total_price
    assert spent() - before == claude + (3_000 * TARIFF["input"] + 300 * TARIFF["output"]) \
        / 1_000_000
    assert Decimal(httpx.get(gw.url + "/admin/budgets", headers={
        "authorization": f"Bearer {ADMIN}"}).json()["data"][0]["spent"]) == spent()
