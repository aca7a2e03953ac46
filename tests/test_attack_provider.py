"""Red-team: a hostile (or broken) provider, and what the gateway keeps of what it says.

A provider is configured by the operator, but its answers are still input: a 1 MB `model`
or error `type` must not land whole in the append-only store or become a /metrics label, and
its usage must not let a request spend past a budget.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal

import orjson
import pytest
from aiohttp import web

from conftest import TARIFF_TOML, Gateway, start_gateway, stop_gateway, wait_for_event
from fake_upstream import FakeUpstream
from tokometer.gateway.call import MAX_LABEL_CHARS
from tokometer.gateway.metrics import ERROR_TYPES

HUGE = "x" * 1_000_000
_serial = itertools.count()


class HostileUpstream(FakeUpstream):
    """Answers by the model name: oversized strings, made-up error types, big bills."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        model = body["model"]
        if model == "huge-strings":
            if body.get("stream"):
                response = web.StreamResponse(headers={"content-type": "text/event-stream"})
                await response.prepare(request)
                chunk = {"id": "c", "object": "chat.completion.chunk", "model": HUGE,
                         "choices": [{"index": 0, "delta": {"content": "hi"},
                                      "finish_reason": HUGE}]}
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                usage = {"id": "c", "object": "chat.completion.chunk", "model": HUGE,
                         "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1,
                                                  "total_tokens": 6}}
                await response.write(b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n")
                await response.write_eof()
                return response
            return web.json_response({
                "id": "c", "object": "chat.completion", "model": HUGE,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                             "finish_reason": HUGE}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})
        if model == "made-up-errors":
            kind = f"error_{next(_serial)}_" + "e" * 5000
            return web.json_response({"error": {"message": "no", "type": kind}}, status=500)
        if model == "long-answer":  # writes 20,000 tokens unless it was sent a lower bound
            bounds = [body[k] for k in ("max_tokens", "max_completion_tokens") if k in body]
            out = min([20000, *bounds])
            return web.json_response({
                "id": "c", "object": "chat.completion", "model": "long-answer",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "w " * out},
                             "finish_reason": "stop" if out == 20000 else "length"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": out,
                          "total_tokens": 10 + out}})
        if model == "stateful":  # bills the conversation it keeps, not the request's input
            return web.json_response({
                "id": "resp_2", "object": "response", "status": "completed", "model": "stateful",
                "output": [{"type": "message", "role": "assistant", "content": [
                    {"type": "output_text", "text": "yes", "annotations": []}]}],
                "usage": {"input_tokens": 200_000, "output_tokens": 1, "total_tokens": 200_001,
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}})
        raise AssertionError(model)


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    fake = HostileUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(hostile: HostileUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = "".join(f'[[models]]\nname = "{m}"\nroutes = [{{ provider = "h" }}]\n'
                     f'price = {TARIFF_TOML}\n'
                     for m in ("huge-strings", "made-up-errors", "long-answer", "stateful"))
    gateway = start_gateway(tmp_path_factory.mktemp("hostile"), f"""
default_max_output_tokens = 1000
admin_token_env = "ADMIN"
[[providers]]
name = "h"
api = "openai"
base_url = "{hostile.url}/v1"
region = "US"
{models}
[[budgets]]
tenant = "spender"
limit = 0.02
unit = "USD"
period = "total"
[[budgets]]
tenant = "stateful"
limit = 0.02
unit = "USD"
period = "total"
""", env={"ADMIN": "admin-secret"})
    yield gateway
    stop_gateway(gateway)


@pytest.mark.parametrize("stream", [False, True])
def test_a_providers_huge_model_and_finish_reason_are_not_stored_whole(gw, stream):
    r = gw.chat("huge-strings", stream=stream, max_tokens=5)
    assert r.status_code == 200
    event = wait_for_event(gw, r.headers["x-tokometer-event-id"])
    assert len(event["model"] or "") <= MAX_LABEL_CHARS
    assert len(event["finish_reason"] or "") <= MAX_LABEL_CHARS


def test_a_providers_made_up_error_types_stay_bounded_in_store_and_metrics(gw):
    ids = []
    for _ in range(ERROR_TYPES + 20):
        r = gw.chat("made-up-errors", max_tokens=5)
        assert r.status_code == 500
        ids.append(r.headers["x-tokometer-event-id"])
    for event_id in ids:
        assert len(wait_for_event(gw, event_id)["error_type"] or "") <= MAX_LABEL_CHARS
    metrics = gw.get("/metrics", key="admin-secret").text
    lines = [ln for ln in metrics.splitlines() if ln.startswith("tokometer_upstream_errors_total")]
    assert len(metrics) < 100_000, f"/metrics is {len(metrics)} bytes"
    assert len(lines) <= ERROR_TYPES + 1, "each of a provider's made-up error types is a label"


def test_a_request_without_max_tokens_cannot_spend_past_its_budget(gw):
    """The README: a request is admitted only if its worst case fits, "so spend stays within
    it". Without max_tokens the reservation is default_max_output_tokens (1,000 here: $0.01 at
    $10/M, inside the $0.02 budget), but nothing tells the provider that bound, and a model
    that writes 20,000 tokens ($0.20) spends ten times the budget in one request."""
    key, _ = gw.new_key(tenant="spender")
    r = gw.chat("long-answer", key=key)
    assert r.status_code == 200  # the reserved bound went upstream with it
    event = wait_for_event(gw, r.headers["x-tokometer-event-id"])
    assert event["output_tokens"] == 1000, "the provider wrote past the reserved bound"
    budgets = gw.get("/admin/budgets", key="admin-secret").json()
    (budget,) = [b for b in budgets["data"] if b.get("scope_value") == "spender"]
    assert Decimal(str(budget["spent"])) <= Decimal("0.02"), budget


def test_a_responses_request_that_continues_a_stored_conversation_cannot_overspend(gw):
    """`previous_response_id` (or `conversation`) makes OpenAI bill the whole stored
    conversation as input, which the request does not carry: the reservation counts the
    request's 1-token input, and one such request spends 25x the $0.02 budget ($0.50 for
    200,000 input tokens at $2.50/M). The README promises spend stays within a budget unless
    an *estimated* count was short; this count is called exact."""
    key, _ = gw.new_key(tenant="stateful")
    r = gw.post("/v1/responses", {"model": "stateful", "input": "and then?",
                                   "max_output_tokens": 10, "previous_response_id": "resp_1"},
                key=key)
    assert r.status_code == 402 and "'previous_response_id'" in r.json()["error"]["message"]
    budgets = gw.get("/admin/budgets", key="admin-secret").json()
    (budget,) = [b for b in budgets["data"] if b.get("scope_value") == "stateful"]
    assert Decimal(str(budget["spent"])) <= Decimal("0.02"), budget
