"""Audit of issue 11's reservations: what the gateway reserves for a request in flight, read
from the admin API while a scripted provider holds the request, against the worst case worked
out by hand (input by OpenAI's published chat accounting with tiktoken itself, plus n times the
largest output bound, priced on the dearest route); and spend against the limit under load."""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image as PILImage

from conftest import Gateway, inline_table, start_gateway, stop_gateway
from scripted_upstream import Script

ADMIN = "audit-admin-token"
CHEAP = {"input": Decimal("0.15"), "cache_read": Decimal("0.075"), "cache_write": Decimal("0.15"),
         "output": Decimal("0.6")}
DEAR = {"input": Decimal("2.5"), "cache_read": Decimal("1.25"), "cache_write": Decimal("2.5"),
        "output": Decimal(10)}
CLAUDE = {"input": Decimal(3), "cache_read": Decimal("0.3"), "cache_write": Decimal("3.75"),
          "output": Decimal(15)}
DEFAULT_OUT = 1000


def _models(scripted) -> str:
    """Both gateways' providers (the scripted fake, over both APIs) and models."""
    return f"""{scripted.providers_toml()}
[[models]]
name = "dual"
tokenizer = "tiktoken:o200k_base"
routes = [{{ provider = "oa", model = "gpt-4o-mini", price = {inline_table(CHEAP)} }},
          {{ provider = "oa", model = "gpt-4o", price = {inline_table(DEAR)} }}]
[[models]]
name = "claude"
tokenizer = "tiktoken:o200k_base"
routes = [{{ provider = "an", model = "claude-x" }}]
price = {inline_table(CLAUDE)}"""


@pytest.fixture(scope="module")
def gw(scripted, tmp_path_factory):
    body = f"""admin_token_env = "AUDIT_ADMIN"
default_max_output_tokens = {DEFAULT_OUT}
{_models(scripted)}
[[budgets]]
tenant = "held-co"
limit = 1000
unit = "USD"
period = "month"
[[budgets]]
tenant = "held-co"
limit = 100000000
unit = "tokens"
period = "month"
"""
    g = start_gateway(tmp_path_factory.mktemp("audit-budgets"), body, env={"AUDIT_ADMIN": ADMIN})
    yield g
    stop_gateway(g)


def _budgets(gw: Gateway, tenant: str) -> dict[str, dict[str, Any]]:
    r = gw.get("/admin/budgets", key=ADMIN)
    assert r.status_code == 200, r.text
    return {b["unit"]: b for b in r.json()["data"] if b["scope_value"] == tenant}


def _n(o200k, text: str) -> int:
    return len(o200k.encode(text))


def _chat(o200k, messages: list[dict[str, str]]) -> int:
    """OpenAI's published chat accounting (3 per message, 1 per name, 3 to prime the reply)."""
    total = 3
    for m in messages:
        total += 3 + _n(o200k, m["role"]) + _n(o200k, m["content"])
        if m.get("name"):
            total += 1 + _n(o200k, m["name"])
    return total


def _png(size: tuple[int, int]) -> str:
    out = io.BytesIO()
    PILImage.new("RGB", size).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


TOOL = {"type": "function", "function": {"name": "lookup", "description": "Looks things up.",
                                         "parameters": {"type": "object"}}}
_ANTHROPIC_ANSWER = {"id": "m", "type": "message", "role": "assistant", "model": "claude-x",
                     "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                     "usage": {"input_tokens": 10, "output_tokens": 1}}
_RESPONSES_ANSWER = {"id": "r", "object": "response", "status": "completed", "model": "gpt-4o",
                     "output": [{"type": "message", "role": "assistant", "content": [
                         {"type": "output_text", "text": "ok"}]}],
                     "usage": {"input_tokens": 10, "output_tokens": 1}}
_COMPLETION_ANSWER = {"id": "c", "object": "text_completion", "model": "gpt-4o",
                      "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}


def _cases(o200k) -> list[tuple[str, str, dict[str, Any], int, int, dict | None]]:
    """(name, path, body, input tokens by hand, worst output by hand, answer)."""
    hi = [{"role": "user", "content": "Hello there, how are you?"}]
    sysmsg = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": "Name three rivers.", "name": "ann"}]
    image = [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": _png((1024, 1024)), "detail": "high"}}]}]
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    history = [*hi, {"role": "assistant", "content": "", "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    tool_json = orjson.dumps(TOOL).decode()
    mini_image = 2833 + 4 * 5667  # gpt-4o-mini, the first route: 1024 -> 768, 2 x 2 tiles
    return [
        ("chat max_tokens", "/v1/chat/completions", {"messages": hi, "max_tokens": 100},
         _chat(o200k, hi), 100, None),
        ("chat n x largest bound", "/v1/chat/completions",
         {"messages": hi, "n": 3, "max_completion_tokens": 50, "max_tokens": 70},
         _chat(o200k, hi), 3 * 70, None),
        ("chat no bound", "/v1/chat/completions", {"messages": hi},
         _chat(o200k, hi), DEFAULT_OUT, None),
        ("chat system and name", "/v1/chat/completions",
         {"messages": sysmsg, "max_tokens": 7, "n": 2}, _chat(o200k, sysmsg), 14, None),
        ("chat tools and history", "/v1/chat/completions",
         {"messages": history, "tools": [TOOL], "max_tokens": 64},
         _chat(o200k, [*hi, {"role": "assistant", "content": ""}]) + _n(o200k, tool_json)
         + _n(o200k, orjson.dumps(call["function"]).decode()) + _n(o200k, "42"), 64, None),
        ("chat image", "/v1/chat/completions", {"messages": image, "max_tokens": 10},
         _chat(o200k, [{"role": "user", "content": "What is this?"}]) + mini_image, 10, None),
        ("chat stream", "/v1/chat/completions",
         {"messages": hi, "max_tokens": 33, "stream": True}, _chat(o200k, hi), 33, None),
        ("completion best_of", "/v1/completions",
         {"prompt": "Once upon a time", "max_tokens": 20, "n": 2, "best_of": 4},
         _n(o200k, "Once upon a time"), 4 * 20, _COMPLETION_ANSWER),
        ("completion prompts", "/v1/completions",
         {"prompt": ["one two", "three four five"], "max_tokens": 5},
         _n(o200k, "one two") + _n(o200k, "three four five"), 5, _COMPLETION_ANSWER),
        ("responses", "/v1/responses",
         {"input": "Say hi.", "instructions": "Be kind.", "max_output_tokens": 300},
         _chat(o200k, [{"role": "system", "content": "Be kind."},
                       {"role": "user", "content": "Say hi."}]), 300, _RESPONSES_ANSWER),
        ("responses function_call items", "/v1/responses",
         {"input": [*hi, {"type": "function_call", "call_id": "c1", "name": "lookup",
                          "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "c1", "output": "42"}],
          "max_output_tokens": 9},
         _chat(o200k, hi) + _n(o200k, '{"name":"lookup","arguments":"{}"}') + _n(o200k, "42"),
         9, _RESPONSES_ANSWER),
        ("messages", "/v1/messages",  # no published framing: the text and 4 per message
         {"system": "Be brief.", "messages": hi, "max_tokens": 500},
         _n(o200k, "Be brief.") + _n(o200k, hi[0]["content"]) + 2 * 4, 500,
         _ANTHROPIC_ANSWER),
    ]


def _send(gw: Gateway, key: str, path: str, body: dict[str, Any], tag: str) -> httpx.Response:
    """`body` to the model of its API, tagged so that the scripted provider knows it."""
    model = "claude" if path == "/v1/messages" else "dual"
    tagged = ({"metadata": {"user_id": tag}} if model == "claude" else {"user": tag})
    return gw.post(path, {"model": model, **body, **tagged}, key=key, timeout=60)


def _worst_cost(model: str, inp: int, out: int) -> Decimal:
    """On the dearest route, the input at the dearer of its input and cache-write rates (all
    of it may be written to the provider's cache), the output at the output rate."""
    prices = [CLAUDE] if model == "claude" else [CHEAP, DEAR]
    return max((inp * max(p["input"], p["cache_write"]) + out * p["output"]) / 1_000_000
               for p in prices)


def _wait(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)  # readiness poll of another process


def test_reservations_equal_the_hand_computed_worst_case(gw, scripted, o200k):
    key, _ = gw.new_key("held-co")
    seen = []
    for i, (name, path, body, inp, out, answer) in enumerate(_cases(o200k)):
        tag = f"held-{i}"
        hold = threading.Event()
        scripted.scripts[tag] = Script(body=answer or {
            "id": "x", "object": "chat.completion", "model": "gpt-4o", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}},
            hold=hold)
        if body.get("stream"):
            scripted.scripts[tag] = Script(hold=hold, events=[
                b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}', b"data: [DONE]"])
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(_send, gw, key, path, body, tag)
            _wait(lambda t=tag, f=future: f.done() or any(
                a.get("user") == t or (a.get("metadata") or {}).get("user_id") == t
                for a in scripted.arrived))
            assert not future.done(), (name, future.result().text)
            held = _budgets(gw, "held-co")
            hold.set()
            assert future.result().status_code == 200, (name, future.result().text)
        model = "claude" if path == "/v1/messages" else "dual"
        seen.append((name, Decimal(held["tokens"]["reserved"]), Decimal(held["USD"]["reserved"])))
        assert seen[-1] == (name, inp + out, _worst_cost(model, inp, out)), name
    assert len(seen) == 12


@pytest.fixture(scope="module")
def tight(scripted, tmp_path_factory):
    """Budgets just large enough for a known number of worst cases."""
    body = f"""admin_token_env = "AUDIT_ADMIN"
{_models(scripted)}
[[models]]
name = "vision"
tokenizer = "tiktoken:o200k_base"
routes = [{{ provider = "oa", model = "gpt-4o" }}, {{ provider = "oa", model = "gpt-4o-mini" }}]
price = {inline_table(DEAR)}
[[budgets]]
tenant = "crowd-co"
limit = {7 * _worst_cost("dual", 14, 1000)}
unit = "USD"
period = "month"
[[budgets]]
tenant = "cache-co"
limit = {(1008 * CLAUDE["input"] + 100 * CLAUDE["output"]) / 1_000_000}
unit = "USD"
period = "month"
[[budgets]]
tenant = "vision-co"
limit = 1000
unit = "tokens"
period = "month"
"""
    g = start_gateway(tmp_path_factory.mktemp("audit-tight"), body, env={"AUDIT_ADMIN": ADMIN})
    yield g
    stop_gateway(g)


def test_50_concurrent_requests_never_pass_a_money_budget(tight, scripted, o200k):
    """7 worst cases fit: of 50 at once, exactly 7 go out, and the spend is their real cost."""
    hi = [{"role": "user", "content": "Hello there, how are you?"}]
    assert _chat(o200k, hi) == 14
    key, _ = tight.new_key("crowd-co")
    hold = threading.Event()
    answer = {"id": "x", "object": "chat.completion", "model": "gpt-4o", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 14, "completion_tokens": 1000, "total_tokens": 1014}}
    scripted.scripts["crowd"] = Script(body=answer, hold=hold)
    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(_send, tight, key, "/v1/chat/completions",
                               {"messages": hi, "max_tokens": 1000}, "crowd")
                   for _ in range(50)]
        _wait(lambda: sum(f.done() for f in futures) == 43)
        status = _budgets(tight, "crowd-co")["USD"]
        assert Decimal(status["reserved"]) == Decimal(status["limit"])
        hold.set()
        codes = sorted(f.result().status_code for f in futures)
    assert codes == [200] * 7 + [402] * 43
    spent = Decimal(_budgets(tight, "crowd-co")["USD"]["spent"])
    # Each was served by the cheap route (the first): well within the dearest-route worst case.
    assert spent == 7 * (14 * CHEAP["input"] + 1000 * CHEAP["output"]) / 1_000_000
    assert spent <= Decimal(status["limit"])


def test_an_exactly_counted_input_written_to_the_cache_cannot_pass_the_budget(tight, scripted,
                                                                              o200k):
    """Anthropic bills a cache write at 1.25x the input rate. If the reservation prices the
    input as plain input, a request that writes it all to the cache spends more than the worst
    case reserved, and the budget is passed, however well the input was counted. The limit
    here is that plain-input worst case."""
    text = "word " * 1000
    messages = [{"role": "user", "content": [
        {"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]}]
    inp = _chat(o200k, [{"role": "user", "content": text}])
    assert inp == 1008
    key, _ = tight.new_key("cache-co")
    scripted.scripts["cache"] = Script(body={
        "id": "m", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "max_tokens",
        "usage": {"input_tokens": 0, "cache_creation_input_tokens": inp,
                  "cache_read_input_tokens": 0, "output_tokens": 100}})
    r = _send(tight, key, "/v1/messages", {"messages": messages, "max_tokens": 100}, "cache")
    status = _budgets(tight, "cache-co")["USD"]
    cost = (inp * CLAUDE["cache_write"] + 100 * CLAUDE["output"]) / 1_000_000
    if r.status_code == 200:  # admitted: its real cost must fit in the limit
        assert Decimal(tight.event(r.headers["x-tokometer-event-id"])["cost"]) == cost
        assert Decimal(status["spent"]) <= Decimal(status["limit"]), (status, cost)
    else:  # refused up front, as a worst case priced at the cache-write rate would be
        assert r.status_code == 402 and cost > Decimal(status["limit"])


def test_a_token_budget_reserves_the_image_tokens_of_every_route(tight, scripted, o200k):
    """gpt-4o bills a 1024 x 1024 image as 765 tokens, gpt-4o-mini (the fallback) as 25,501.
    A token budget must reserve the larger: the request may end on either route."""
    image = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _png((1024, 1024)), "detail": "high"}}]}]
    inp_mini = _chat(o200k, [{"role": "user", "content": ""}]) + 2833 + 4 * 5667
    key, _ = tight.new_key("vision-co")
    scripted.failing.add("gpt-4o")
    scripted.scripts["vision"] = Script(body={
        "id": "x", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"},
             "finish_reason": "stop"}],
        "usage": {"prompt_tokens": inp_mini, "completion_tokens": 1,
                  "total_tokens": inp_mini + 1}})
    try:
        r = tight.chat("vision", messages=image, max_tokens=10, user="vision", key=key,
                       timeout=60)
    finally:
        scripted.failing.discard("gpt-4o")
    status = _budgets(tight, "vision-co")["tokens"]
    # 1000 tokens cannot hold the gpt-4o-mini worst case (25,518): refused up front.
    assert r.status_code == 402, (r.status_code, status["spent"], status["limit"])
