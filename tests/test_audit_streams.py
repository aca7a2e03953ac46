"""Audit of issue 11's broken streams and recount fallbacks, through the real gateway: a
scripted provider cuts each API's stream after k events (and half of the next); the event's
output must be tiktoken's own count of exactly the text the client received, parsed here from
the bytes the client got, and its cost the tariff applied by hand."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import orjson
import pytest

from conftest import Gateway, inline_table, start_gateway, stop_gateway, wait_for_event
from scripted_upstream import Script

PRICE = {"input": Decimal("0.15"), "cache_read": Decimal("0.075"),
         "cache_write": Decimal("0.1875"), "output": Decimal("0.6")}
WORDS = ["Hello", " wörld", ",", " 日本語", " tokens", " are", " counted", " here", "!"]
MESSAGES = [{"role": "user", "content": "Say hello to the world."}]


@pytest.fixture(scope="module")
def gw(scripted, tmp_path_factory):
    price = inline_table(PRICE)
    body = f"""upstream_timeout = 5
{scripted.providers_toml()}
[[models]]
name = "chat"
tokenizer = "tiktoken:o200k_base"
routes = [{{ provider = "oa", model = "up-chat" }}]
price = {price}
[[models]]
name = "claude"
tokenizer = "tiktoken:o200k_base"
routes = [{{ provider = "an", model = "up-claude" }}]
price = {price}
"""
    g = start_gateway(tmp_path_factory.mktemp("audit-streams"), body)
    yield g
    stop_gateway(g)


def _cost(inp: int, out: int, cache_read: int = 0, cache_write: int = 0) -> Decimal:
    return ((inp - cache_read - cache_write) * PRICE["input"] + cache_read * PRICE["cache_read"]
            + cache_write * PRICE["cache_write"] + out * PRICE["output"]) / 1_000_000


def _chat_events(words: list[str]) -> list[bytes]:
    first = {"id": "c", "object": "chat.completion.chunk", "model": "up-chat",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    return [b"data: " + orjson.dumps(first)] + [
        b"data: " + orjson.dumps({**first, "choices": [{"index": 0, "delta": {"content": w}}]})
        for w in words]


def _responses_events(words: list[str]) -> list[bytes]:
    created = {"type": "response.created", "response": {"id": "r", "status": "in_progress"}}
    return [b"event: response.created\ndata: " + orjson.dumps(created)] + [
        b"event: response.output_text.delta\ndata: " + orjson.dumps(
            {"type": "response.output_text.delta", "item_id": "m", "output_index": 0,
             "content_index": 0, "delta": w}) for w in words]


def _anthropic_events(words: list[str], input_tokens: int) -> list[bytes]:
    start = {"type": "message_start", "message": {
        "id": "m", "type": "message", "role": "assistant", "content": [], "model": "up-claude",
        "usage": {"input_tokens": input_tokens, "cache_read_input_tokens": 7,
                  "cache_creation_input_tokens": 5, "output_tokens": 1}}}
    block = {"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}}
    return [b"event: message_start\ndata: " + orjson.dumps(start),
            b"event: content_block_start\ndata: " + orjson.dumps(block)] + [
        b"event: content_block_delta\ndata: " + orjson.dumps(
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": w}}) for w in words]


def _received_text(api: str, raw: bytes) -> tuple[str, bool]:
    """The text in the whole events the client received, and whether an error event ended it;
    parsed here, independently of the gateway's own SSE code."""
    text, errored = [], False
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"".join(line[5:].strip() for line in block.split(b"\n")
                        if line.startswith(b"data:"))
        if not data.startswith(b"{"):
            continue
        ev = orjson.loads(data)
        if "error" in ev:
            errored = True
        elif api == "chat":
            text += [c["delta"].get("content") or "" for c in ev.get("choices", [])]
        elif api == "responses" and ev.get("type") == "response.output_text.delta":
            text.append(ev["delta"])
        elif api == "messages" and ev.get("type") == "content_block_delta":
            text.append(ev["delta"].get("text", ""))
    return "".join(text), errored


def _chat_input(o200k, messages: list[dict[str, str]]) -> int:
    return 3 + sum(3 + len(o200k.encode(m["role"])) + len(o200k.encode(m["content"]))
                   for m in messages)


def _stream(gw: Gateway, path: str, body: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """What a streamed request's client received, and its event."""
    with gw.stream(path, body) as r:
        raw = b"".join(r.iter_bytes())
        event = wait_for_event(gw, r.headers["x-tokometer-event-id"])
    return raw, event


@pytest.mark.parametrize("k", [1, 2, 5, 9])
@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_a_cut_stream_bills_exactly_the_text_the_client_received(gw, scripted, o200k, api, k):
    tag = f"cut-{api}-{k}"
    inp = _chat_input(o200k, MESSAGES)
    if api == "chat":
        events, skip = _chat_events(WORDS), 1
        path, body = "/v1/chat/completions", {"model": "chat", "messages": MESSAGES, "user": tag}
    elif api == "responses":
        events, skip = _responses_events(WORDS), 1
        path, body = "/v1/responses", {"model": "chat", "input": MESSAGES, "user": tag}
    else:
        events, skip = _anthropic_events(WORDS, 40), 2
        path, body = "/v1/messages", {"model": "claude", "messages": MESSAGES, "max_tokens": 50,
                                      "metadata": {"user_id": tag}}
    # k text events reach the client; half of the next one is on the wire when it breaks.
    nxt = events[skip + k] if skip + k < len(events) else b"data: {\"choices\": [{\"delta\""
    scripted.scripts[tag] = Script(events=events, cut_after=skip + k, tail=nxt[:len(nxt) // 2])
    raw, event = _stream(gw, path, {**body, "stream": True})
    text, errored = _received_text(api, raw)
    assert text == "".join(WORDS[:k]) and errored
    out = len(o200k.encode(text))
    assert event["status"] == 502 and event["output_tokens"] == out
    if api == "messages":  # input as reported in message_start (40 + 7 read + 5 written)
        assert event["input_tokens"] == 52 and event["usage_source"] == "counted"
        assert Decimal(event["cost"]) == _cost(52, out, cache_read=7, cache_write=5)
    else:  # input recounted by OpenAI's chat accounting
        assert event["input_tokens"] == inp and event["usage_source"] == "counted"
        assert Decimal(event["cost"]) == _cost(inp, out)


def _chat_once(gw: Gateway, scripted, tag: str, events: list[bytes]) -> dict[str, Any]:
    scripted.scripts[tag] = Script(events=events)
    raw, event = _stream(gw, "/v1/chat/completions",
                         {"model": "chat", "messages": MESSAGES, "user": tag, "stream": True,
                          "stream_options": {"include_usage": True}})
    assert b"[DONE]" in raw
    return event


def _usage_chunk(usage: bytes) -> bytes:
    return b'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":' + usage + b"}"


@pytest.mark.parametrize("usage", [
    b'{"prompt_tokens":12,,"completion_tokens":}',  # not JSON
    b'{"prompt_tokens":"12","completion_tokens":-3}',  # wrong types
    b'{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}',  # zero for a real answer
    b'{"prompt_tokens":-1,"completion_tokens":5}',
    b'[1,2,3]',
])
def test_a_bad_usage_chunk_falls_back_to_the_recount(gw, scripted, o200k, usage):
    event = _chat_once(gw, scripted, f"bad-{usage.hex()[:40]}",
                       [*_chat_events(WORDS), _usage_chunk(usage), b"data: [DONE]"])
    out = len(o200k.encode("".join(WORDS)))
    inp = _chat_input(o200k, MESSAGES)
    assert (event["input_tokens"], event["output_tokens"]) == (inp, out)
    assert event["usage_source"] == "counted" and event["status"] == 200
    assert Decimal(event["cost"]) == _cost(inp, out)


def test_zero_output_reported_for_text_is_recounted_and_input_kept(gw, scripted, o200k):
    event = _chat_once(gw, scripted, "zero-out", [
        *_chat_events(WORDS),
        _usage_chunk(b'{"prompt_tokens":33,"completion_tokens":0,"total_tokens":33,'
                     b'"prompt_tokens_details":{"cached_tokens":11}}'),
        b"data: [DONE]"])
    out = len(o200k.encode("".join(WORDS)))
    assert (event["input_tokens"], event["cache_read_tokens"], event["output_tokens"]) == (
        33, 11, out)
    assert Decimal(event["cost"]) == _cost(33, out, cache_read=11)


def test_reasoning_and_reasoning_details_count_once(gw, scripted, o200k):
    reasoning = ["Two plus two", ": add them.", " It is four."]
    chunks = [{"reasoning": r, "reasoning_details": [
        {"type": "reasoning.text", "text": r, "format": "unknown", "index": 0}]}
        for r in reasoning]
    chunks.append({"content": "4"})
    chunks.append({"reasoning": "", "reasoning_details": [
        {"type": "reasoning.text", "text": " Checked.", "index": 0}]})  # details alone: counted
    events = [b"data: " + orjson.dumps({"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": c}]}) for c in chunks]
    event = _chat_once(gw, scripted, "reasoning-dup", [*events, b"data: [DONE]"])
    expected = "".join(reasoning) + "4" + " Checked."
    assert event["output_tokens"] == len(o200k.encode(expected))


@pytest.mark.parametrize("api", ["chat", "messages"])
def test_a_stream_that_ends_without_its_end_marker_is_not_a_clean_200(gw, scripted, o200k, api):
    """The provider closes the stream cleanly (EOF) but never sent `[DONE]` / `message_stop`:
    the answer was cut short all the same, and its client must not see a complete stream."""
    tag = f"eof-{api}"
    if api == "chat":
        events, path = _chat_events(WORDS[:3]), "/v1/chat/completions"
        body = {"model": "chat", "messages": MESSAGES, "user": tag}
    else:
        events, path = _anthropic_events(WORDS[:3], 40), "/v1/messages"
        body = {"model": "claude", "messages": MESSAGES, "max_tokens": 50,
                "metadata": {"user_id": tag}}
    scripted.scripts[tag] = Script(events=events)
    raw, event = _stream(gw, path, {**body, "stream": True})
    text, errored = _received_text(api, raw)
    assert text == "".join(WORDS[:3])
    assert event["output_tokens"] == len(o200k.encode(text))
    assert (event["status"], errored) == (502, True), (event["status"], event["error_type"])


def test_a_refusal_is_output_and_is_counted(gw, scripted, o200k):
    """OpenAI streams a refusal as `delta.refusal` text instead of `content`: it is generated
    and billed like any answer, so a recount must count it."""
    refusal = ["I'm sorry,", " but I can't", " help with that."]
    events = [b"data: " + orjson.dumps({"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": None, "refusal": r}}]}) for r in refusal]
    event = _chat_once(gw, scripted, "refusal", [*events, b'data: {"object":"chat.completion.'
                                                  b'chunk","choices":[{"index":0,"delta":{},'
                                                  b'"finish_reason":"stop"}]}', b"data: [DONE]"])
    assert event["output_tokens"] == len(o200k.encode("".join(refusal)))


@pytest.mark.parametrize("stream", [False, True])
def test_more_cached_tokens_than_input_is_recounted(gw, scripted, o200k, stream):
    """Cached tokens are part of the input: a report of 5,000 cached of 10 input cannot be right
    (taken as is, a negative uncached input and a negative cost), so it is recounted like a
    malformed one."""
    usage = {"prompt_tokens": 10, "completion_tokens": 3,
             "prompt_tokens_details": {"cached_tokens": 5000}}
    tag = f"parts-{stream}"
    text = "".join(WORDS)
    if stream:
        scripted.scripts[tag] = Script(events=[*_chat_events(WORDS), _usage_chunk(
            orjson.dumps(usage)), b"data: [DONE]"])
        _, event = _stream(gw, "/v1/chat/completions", {
            "model": "chat", "messages": MESSAGES, "user": tag, "stream": True})
    else:
        scripted.scripts[tag] = Script(body={
            "id": "c", "object": "chat.completion", "model": "up-chat", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text},
                 "finish_reason": "stop"}], "usage": usage})
        r = gw.chat("chat", messages=MESSAGES, user=tag)
        event = wait_for_event(gw, r.headers["x-tokometer-event-id"])
    inp, out = _chat_input(o200k, MESSAGES), len(o200k.encode(text))
    assert Decimal(event["cost"]) >= 0
    assert (event["input_tokens"], event["cache_read_tokens"], event["output_tokens"],
            event["reasoning_tokens"], event["usage_source"]) == (inp, 0, out, 0, "counted")
    assert Decimal(event["cost"]) == _cost(inp, out)


def test_a_recounted_tool_call_is_an_estimate(gw, scripted, o200k):
    """A streamed tool call without usage: the provider bills the call's name and its framing
    as well as its arguments, by no published rule, so the recount can only be an estimate."""
    first = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {
        "role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                             "function": {"name": "get_weather",
                                                          "arguments": ""}}]}}]}
    args = ['{"ci', 'ty": "Pa', 'ris"}']
    events = [b"data: " + orjson.dumps(first)] + [b"data: " + orjson.dumps({
        "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": a}}]}}]}) for a in args]
    scripted.scripts["tool-call"] = Script(events=[*events, b'data: {"choices":[{"index":0,'
                                                   b'"delta":{},"finish_reason":"tool_calls"}]}',
                                                   b"data: [DONE]"])
    _, event = _stream(gw, "/v1/chat/completions", {
        "model": "chat", "messages": MESSAGES, "user": "tool-call", "stream": True})
    assert event["output_tokens"] >= len(o200k.encode("".join(args)))
    assert event["usage_source"] == "estimated" and event["counted_output_tokens"] is None


@pytest.mark.parametrize("api", ["chat", "messages"])
def test_a_tool_call_in_a_body_without_usage_is_an_estimate(gw, scripted, api):
    """The same for a JSON answer: Anthropic's tool_use input is not even in the recounted
    text, so a count marked exact would bill it as nothing."""
    if api == "chat":
        answer = {"id": "c", "object": "chat.completion", "model": "up-chat", "choices": [
            {"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {
                        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]}}]}
        path, body = "/v1/chat/completions", {"model": "chat", "messages": MESSAGES}
        body["user"] = tag = "tool-body-chat"
    else:
        answer = {"id": "m", "type": "message", "role": "assistant", "model": "up-claude",
                  "content": [{"type": "tool_use", "id": "t1", "name": "get_weather",
                               "input": {"city": "Paris"}}], "stop_reason": "tool_use"}
        path, body = "/v1/messages", {"model": "claude", "messages": MESSAGES, "max_tokens": 50,
                                      "metadata": {"user_id": "tool-body-messages"}}
        tag = "tool-body-messages"
    scripted.scripts[tag] = Script(body=answer)
    r = gw.post(path, body)
    event = wait_for_event(gw, r.headers["x-tokometer-event-id"])
    assert event["usage_source"] == "estimated" and event["counted_output_tokens"] is None


def test_a_providers_error_event_wins_over_the_client_leaving_because_of_it(gw, scripted,
                                                                           o200k):
    """The provider sends an error event and keeps the connection open a moment; the client's
    SDK raises on the event and hangs up. The reading is the provider's error (502), not a
    client disconnect (499): the order the gateway notices the two in must not decide it."""
    linger = threading.Event()
    error = b'data: {"error":{"message":"The server had an error","type":"server_error"}}'
    scripted.scripts["error-linger"] = Script(events=[*_chat_events(WORDS[:2]), error],
                                              linger=linger)
    try:
        with gw.stream("/v1/chat/completions", {"model": "chat", "messages": MESSAGES,
                                                "stream": True, "user": "error-linger"}) as r:
            seen = b""
            for chunk in r.iter_bytes():
                seen += chunk
                if b'"error"' in seen:
                    break  # as the SDK does: raise, and close the connection
            event_id = r.headers["x-tokometer-event-id"]
        event = wait_for_event(gw, event_id)
    finally:
        linger.set()
    assert (event["status"], event["error_type"]) == (502, "server_error")
    assert event["output_tokens"] == len(o200k.encode("".join(WORDS[:2])))
