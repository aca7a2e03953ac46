"""Budgets and TPM limits reserve a request's true worst case, through a real gateway: every
choice it asks for at its largest output bound, and its input as billed (tools, images)."""

from __future__ import annotations

import math
from decimal import Decimal

import orjson
import pytest

from conftest import FAKE_KEYS, providers_toml, start_gateway, stop_gateway

MESSAGES = [{"role": "user", "content": "hi"}]
OUT_PRICE = Decimal(10)  # per 1M output tokens; input is free, so a request costs its output
ONE_REQUEST = 300 * OUT_PRICE / 1_000_000  # the fake's answer: 300 output tokens
TPM = 10_000
IMAGE_URL = "https://example.com/cat.png"  # no size known: reserved at the rule's most
IMAGE_MOST = 2833 + 8 * 5667  # gpt-4o-mini's tile rates, 8 tiles (a 768 x 2048 image)
TOOL = {"type": "function", "function": {
    "name": "lookup", "description": " ".join(f"clause {i} of the house rules applies" for i in
                                              range(2_200)),  # about 80 kB
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory, o200k):
    body = f"""{providers_toml(upstream)}
[[models]]
name = "metered"
routes = [{{ provider = "fake-openai", model = "gpt-4o-mini" }}]
tokenizer = "tiktoken:o200k_base"
price = {{ input = 0, cache_read = 0, cache_write = 0, output = {OUT_PRICE} }}

[[limits]]
app = "tpm-app"
tpm = {TPM}

[[budgets]]
tenant = "n-co"
limit = {10 * ONE_REQUEST}
unit = "USD"
period = "month"

[[budgets]]
tenant = "bounds-co"
limit = {hi_tokens(o200k) + 300}
unit = "tokens"
period = "month"

[[budgets]]
tenant = "image-co"
limit = {hi_tokens(o200k) + IMAGE_MOST + 10}
unit = "tokens"
period = "month"
"""
    g = start_gateway(tmp_path_factory.mktemp("worst-case"), body, env=FAKE_KEYS)
    yield g
    stop_gateway(g)


def hi_tokens(o200k) -> int:
    """The input of a 'hi' chat by OpenAI's chat accounting, counted with tiktoken."""
    return 3 + 3 + len(o200k.encode("user")) + len(o200k.encode("hi"))


def test_n_choices_multiply_the_reservation_so_n_128_cannot_overspend(gw, upstream):
    key, _ = gw.new_key("n-co")
    calls = len(upstream.calls_for("gpt-4o-mini"))
    r = gw.chat("metered", key=key, n=128, max_tokens=300)  # 128 x the budget
    assert r.status_code == 402 and r.json()["error"]["code"] == "budget_exceeded"
    assert "lower max_tokens or n" in r.json()["error"]["message"]
    assert gw.event(r.headers["x-tokometer-event-id"])["status"] == 402
    assert len(upstream.calls_for("gpt-4o-mini")) == calls  # refused before the provider
    assert gw.chat("metered", key=key, n=10, max_tokens=300).status_code == 200  # all the budget
    # 10 more choices no longer fit beside what the first request spent.
    assert gw.chat("metered", key=key, n=10, max_tokens=300).status_code == 402
    assert gw.chat("metered", key=key, n=9, max_tokens=300).status_code == 200


def test_the_largest_output_bound_is_reserved(gw, o200k):
    key, _ = gw.new_key("bounds-co")  # a budget of the input plus 300 output tokens
    r = gw.chat("metered", key=key, max_tokens=10, max_completion_tokens=301)
    assert r.status_code == 402
    assert f"at most it may take {hi_tokens(o200k) + 301} tokens" in r.json()["error"]["message"]
    assert gw.chat("metered", key=key, max_output_tokens=10, max_tokens=300).status_code == 200


@pytest.mark.parametrize("extra", [
    {"n": 0}, {"n": 129}, {"n": "2"}, {"n": 2.0}, {"best_of": 500}, {"max_tokens": 0},
    {"max_tokens": -1}, {"max_tokens": 1.5}, {"max_tokens": "300"},
    {"max_completion_tokens": True}, {"max_output_tokens": [1]},
])
def test_bounds_that_cannot_be_reserved_for_are_a_400(gw, upstream, extra):
    key, _ = gw.new_key("acme", app="tpm-app")
    calls = len(upstream.calls_for("gpt-4o-mini"))
    r = gw.chat("metered", key=key, **extra)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and next(iter(extra)) in error["message"]
    assert len(upstream.calls_for("gpt-4o-mini")) == calls


def test_tpm_reserves_every_choice(gw, o200k):
    key, _ = gw.new_key("acme", app="tpm-app")
    r = gw.chat("metered", key=key, n=40, max_tokens=300)
    assert r.status_code == 429
    assert f"needs up to {hi_tokens(o200k) + 40 * 300} tokens" in r.json()["error"]["message"]


def test_80_kb_of_tool_definitions_are_reserved(gw, o200k):
    key, _ = gw.new_key("acme", app="tpm-app")
    tool_tokens = len(o200k.encode(orjson.dumps(TOOL).decode()))
    assert tool_tokens > TPM and len(orjson.dumps(TOOL)) > 80_000
    r = gw.chat("metered", key=key, max_tokens=1, tools=[TOOL])
    assert r.status_code == 429
    assert f"needs up to {hi_tokens(o200k) + tool_tokens + 1} tokens" in \
        r.json()["error"]["message"]


def test_an_image_is_reserved_at_its_cost(gw, o200k):
    key, _ = gw.new_key("image-co")  # a budget of the input, one image and 10 output tokens

    def with_images(count: int) -> list[dict]:
        image = {"type": "image_url", "image_url": {"url": IMAGE_URL}}
        return [{"role": "user", "content": [{"type": "text", "text": "hi"}] + [image] * count}]

    r = gw.chat("metered", key=key, max_tokens=10, messages=with_images(2))
    assert r.status_code == 402
    expected = hi_tokens(o200k) + 2 * IMAGE_MOST + 10
    assert f"at most it may take {expected} tokens" in r.json()["error"]["message"]
    assert gw.chat("metered", key=key, max_tokens=10, messages=with_images(1)).status_code == 200


def test_a_body_too_deep_to_walk_is_reserved_by_its_size(gw):
    key, _ = gw.new_key("acme", app="tpm-app")
    deep = b"[" * 400 + b'"' + b"x" * 50_000 + b'"' + b"]" * 400  # deeper than encoders go
    raw = orjson.dumps({"model": "metered", "messages": MESSAGES, "max_tokens": 1,
                        "tools": []}).replace(b'"tools":[]', b'"tools":[' + deep + b"]")
    r = gw.post("/v1/chat/completions", raw, key=key)
    assert r.status_code == 429, r.text
    assert f"needs up to {math.ceil(len(raw) / 4) + 1} tokens" in r.json()["error"]["message"]
