"""Audit of cost on every path: 20 random realistic requests (four APIs, streamed or not,
cache reads and writes, reasoning) through the real gateway, each event's reading checked
against genai-prices' own usage extractor on the provider's body, its cost against the tariff
applied by hand or genai-prices' own `calc_price`, and `tokometer report` against the sums of
the raw events."""

from __future__ import annotations

import json
import random
from datetime import datetime
from decimal import Decimal
from typing import Any

import genai_prices
import orjson
import pytest
from genai_prices import data_snapshot

from conftest import inline_table, start_gateway, stop_gateway, wait_for_event
from scripted_upstream import Script
from tokometer.cli import main

TARIFFS = {
    "t-oa": {"input": Decimal("1.1"), "cache_read": Decimal("0.275"),
             "cache_write": Decimal("1.1"), "output": Decimal("4.4")},
    "t-an": {"input": Decimal(3), "cache_read": Decimal("0.3"),
             "cache_write": Decimal("3.75"), "output": Decimal(15)},
}
GENAI = {"g-oa": ("openai", "gpt-4.1"), "g-an": ("anthropic", "claude-sonnet-4-20250514")}
UPSTREAM = {"t-oa": "x1", "t-an": "x2", "g-oa": "gpt-4.1", "g-an": "claude-sonnet-4-20250514"}
PATHS = {"chat": "/v1/chat/completions", "text_completion": "/v1/completions",
         "responses": "/v1/responses", "messages": "/v1/messages"}


@pytest.fixture(scope="module")
def gw(scripted, tmp_path_factory):
    def tariff(name: str) -> str:
        return inline_table(TARIFFS[name])

    body = f"""{scripted.providers_toml()}
[[providers]]
name = "openai"
api = "openai"
base_url = "{scripted.url}/v1"
[[providers]]
name = "anthropic"
api = "anthropic"
base_url = "{scripted.url}/anthropic"
[[models]]
name = "t-oa"
routes = [{{ provider = "oa", model = "x1" }}]
price = {tariff("t-oa")}
[[models]]
name = "t-an"
routes = [{{ provider = "an", model = "x2" }}]
price = {tariff("t-an")}
[[models]]
name = "g-oa"
routes = [{{ provider = "openai", model = "gpt-4.1" }}]
[[models]]
name = "g-an"
routes = [{{ provider = "anthropic", model = "claude-sonnet-4-20250514" }}]
"""
    g = start_gateway(tmp_path_factory.mktemp("audit-costs"), body)
    yield g
    stop_gateway(g)


def _openai_usage(rng: random.Random, op: str) -> dict[str, Any]:
    inp = rng.randint(20, 120_000)
    cached = rng.choice([0, rng.randint(0, inp)])
    out = rng.randint(1, 20_000)
    reasoning = rng.choice([0, rng.randint(0, out)])
    if op == "responses":
        return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached},
                "output_tokens": out, "output_tokens_details": {"reasoning_tokens": reasoning},
                "total_tokens": inp + out}
    return {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


def _anthropic_usage(rng: random.Random) -> dict[str, Any]:
    return {"input_tokens": rng.randint(1, 30_000),
            "cache_creation_input_tokens": rng.choice([0, rng.randint(1, 50_000)]),
            "cache_read_input_tokens": rng.choice([0, rng.randint(1, 90_000)]),
            "output_tokens": rng.randint(1, 8_000)}


def _answer(op: str, model: str, usage: dict[str, Any], stream: bool) -> Script:
    """The provider's answer in its wire format, as a JSON body or an SSE stream."""
    if op == "messages":
        if not stream:
            return Script(body={"id": "m", "type": "message", "role": "assistant",
                                "model": model, "content": [{"type": "text", "text": "Hi."}],
                                "stop_reason": "end_turn", "usage": usage})
        start = {**usage, "output_tokens": 1}
        return Script(events=[
            b"event: message_start\ndata: " + orjson.dumps({"type": "message_start", "message": {
                "id": "m", "type": "message", "role": "assistant", "content": [],
                "model": model, "usage": start}}),
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"Hi."}}',
            b"event: message_delta\ndata: " + orjson.dumps({
                "type": "message_delta", "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": usage["output_tokens"]}}),
            b'event: message_stop\ndata: {"type":"message_stop"}'])
    if op == "responses":
        response = {"id": "r", "object": "response", "status": "completed", "model": model,
                    "output": [{"type": "message", "role": "assistant", "content": [
                        {"type": "output_text", "text": "Hi."}]}], "usage": usage}
        if not stream:
            return Script(body=response)
        return Script(events=[
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            b'"delta":"Hi."}',
            b"event: response.completed\ndata: " + orjson.dumps(
                {"type": "response.completed", "response": response})])
    choice = ({"index": 0, "text": "Hi.", "finish_reason": "stop"} if op == "text_completion"
              else {"index": 0, "message": {"role": "assistant", "content": "Hi."},
                    "finish_reason": "stop"})
    if not stream:
        return Script(body={"id": "c", "object": "x", "model": model, "choices": [choice],
                            "usage": usage})
    delta = ({"index": 0, "text": "Hi.", "finish_reason": "stop"} if op == "text_completion"
             else {"index": 0, "delta": {"content": "Hi."}, "finish_reason": "stop"})
    return Script(events=[
        b"data: " + orjson.dumps({"id": "c", "model": model, "choices": [delta]}),
        b"data: " + orjson.dumps({"id": "c", "model": model, "choices": [], "usage": usage}),
        b"data: [DONE]"])


def _request(name: str, op: str, tag: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": name, "stream": stream, "max_tokens": 100}
    if op == "messages":
        body.update(messages=[{"role": "user", "content": "Hi"}], metadata={"user_id": tag})
    elif op == "responses":
        body.update(input="Hi", user=tag)
        del body["max_tokens"]
    elif op == "text_completion":
        body.update(prompt="Hi", user=tag)
    else:
        body.update(messages=[{"role": "user", "content": "Hi"}], user=tag)
    return body


def _genai_reading(op: str, usage: dict[str, Any]) -> genai_prices.Usage:
    """The reading, by genai-prices' own extractor run on the provider's usage object (the
    model only has to be one it knows: the mapping is the provider's and the API's)."""
    provider, model = GENAI["g-an" if op == "messages" else "g-oa"]
    flavor = {"messages": "default", "responses": "responses"}.get(op, "chat")
    extracted = data_snapshot.get_snapshot().extract_usage(
        {"model": model, "usage": usage}, provider_id=provider, api_flavor=flavor)
    return extracted.usage


def _by_hand(tariff: dict[str, Decimal], u: genai_prices.Usage) -> Decimal:
    inp, read, write = u.input_tokens or 0, u.cache_read_tokens or 0, u.cache_write_tokens or 0
    return ((inp - read - write) * tariff["input"] + read * tariff["cache_read"]
            + write * tariff["cache_write"] + (u.output_tokens or 0) * tariff["output"]
            ) / 1_000_000


def test_20_random_requests_cost_what_the_tariff_and_genai_prices_say(gw, scripted, capsys):
    rng = random.Random(20261203)
    events = []
    for i in range(20):
        op = list(PATHS)[i % 4]
        name = rng.choice(["t-an", "g-an"] if op == "messages" else ["t-oa", "g-oa"])
        stream = (i // 4) % 2 == 1  # every API both ways
        usage = _anthropic_usage(rng) if op == "messages" else _openai_usage(rng, op)
        tag = f"cost-{i}"
        scripted.scripts[tag] = _answer(op, UPSTREAM[name], usage, stream)
        r = gw.post(PATHS[op], _request(name, op, tag, stream))
        assert r.status_code == 200, (i, r.text)
        event = wait_for_event(gw, r.headers["x-tokometer-event-id"])
        reading = _genai_reading(op, usage)
        assert (event["input_tokens"], event["cache_read_tokens"], event["cache_write_tokens"],
                event["output_tokens"]) == (reading.input_tokens, reading.cache_read_tokens or 0,
                                            reading.cache_write_tokens or 0,
                                            reading.output_tokens), (i, op, stream)
        reasoning = (usage.get("completion_tokens_details")
                     or usage.get("output_tokens_details") or {}).get("reasoning_tokens", 0)
        assert event["reasoning_tokens"] == reasoning and event["usage_source"] == "reported"
        if name in TARIFFS:
            expected = _by_hand(TARIFFS[name], reading)
        else:
            provider, model = GENAI[name]
            at = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
            expected = genai_prices.calc_price(reading, model, provider_id=provider,
                                               genai_request_timestamp=at).total_price
        assert Decimal(event["cost"]) == expected, (i, op, stream, name, event["cost"], expected)
        if not stream:
            assert Decimal(r.headers["x-tokometer-cost"]) == expected
        events.append(event)
    assert {e["operation"] for e in events} == set(PATHS) and {e["stream"] for e in events} == {
        True, False}

    gw.wait_rolled_up()
    assert main(["events", "--config", str(gw.config)]) == 0
    raw = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {e["id"] for e in events} <= {e["id"] for e in raw}
    assert main(["report", "--config", str(gw.config), "--by", "model_requested,operation",
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum(row["requests"] for row in rows) == len(raw)
    for row in rows:
        mine = [e for e in raw if (e["model_requested"], e["operation"]) ==
                (row["model_requested"], row["operation"])]
        assert row["requests"] == len(mine)
        for field in ("input_tokens", "cache_read_tokens", "cache_write_tokens",
                      "output_tokens", "reasoning_tokens"):
            assert row[field] == sum(e[field] for e in mine), (row, field)
        assert Decimal(row["cost"]) == sum(Decimal(e["cost"]) for e in mine), row
    total = sum(Decimal(e["cost"]) for e in events)
    assert sum(Decimal(row["cost"]) for row in rows) == total
