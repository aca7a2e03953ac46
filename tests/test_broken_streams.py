"""A stream that breaks off is never free, and the client is told, through a real gateway:
cut or silent providers, malformed or implausible usage, reasoning sent twice."""

from __future__ import annotations

import math

import anthropic
import openai
import orjson
import pytest

from conftest import Gateway, tariff_cost, wait_for_event

MESSAGES = [{"role": "user", "content": "Hi"}]
DELIVERED = "The quick brown fox"  # what the fake sends before it breaks off or falls silent
ANSWER = "The quick brown fox jumps over the lazy dog."  # the whole answer


def hi_tokens(o200k) -> int:
    return 3 + 3 + len(o200k.encode("user")) + len(o200k.encode("Hi"))


def openai_client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)


def stream_text(stream) -> tuple[str, BaseException | None]:
    """The text an SDK stream yielded, and what it raised (None when it ended cleanly)."""
    parts = []
    try:
        for chunk in stream:
            if isinstance(chunk, openai.types.chat.ChatCompletionChunk):
                parts.extend(c.delta.content or "" for c in chunk.choices)
            elif chunk.type == "content_block_delta":
                parts.append(chunk.delta.text)
    except (openai.APIError, anthropic.APIError) as error:
        return "".join(parts), error
    return "".join(parts), None


@pytest.mark.parametrize(("model", "status", "error_type"), [
    ("broken", 502, "upstream_broken"),  # the connection drops mid-stream
    ("slow", 504, "upstream_timeout"),  # the provider falls silent past upstream_timeout
])
def test_openai_sdk_raises_and_the_delivered_tokens_are_billed(gateway, upstream, o200k, model,
                                                               status, error_type):
    upstream.release_slow.clear()
    try:
        stream = openai_client(gateway).chat.completions.create(model=model, messages=MESSAGES,
                                                                stream=True)
        text, error = stream_text(stream)
    finally:
        upstream.release_slow.set()
    assert text == DELIVERED
    assert isinstance(error, openai.APIError) and "provider fake-openai" in error.message
    event = wait_for_event(gateway, stream.response.headers["x-tokometer-event-id"])
    assert (event["status"], event["error_type"]) == (status, error_type)
    assert event["output_tokens"] == len(o200k.encode(DELIVERED))
    assert event["input_tokens"] == hi_tokens(o200k)
    assert event["usage_source"] == "counted"
    assert event["cost"] == str(tariff_cost(hi_tokens(o200k), 0, 0,
                                            len(o200k.encode(DELIVERED))).normalize())


def test_anthropic_sdk_raises_and_the_delivered_tokens_are_billed(gateway):
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0)
    stream = client.messages.create(model="claude-broken", max_tokens=100, messages=MESSAGES,
                                    stream=True)
    text, error = stream_text(stream)
    assert text == "Hi! My name is Claude."
    assert isinstance(error, anthropic.APIStatusError)
    event = wait_for_event(gateway, stream.response.headers["x-tokometer-event-id"])
    assert (event["status"], event["error_type"]) == (502, "upstream_broken")
    # Input as message_start reported it (50 + 1000 written + 2000 read); output recounted
    # without a Claude tokenizer: an estimate at four characters a token.
    assert (event["input_tokens"], event["cache_read_tokens"], event["cache_write_tokens"]) == (
        3050, 2000, 1000)
    assert event["output_tokens"] == math.ceil(len(text) / 4)
    assert event["usage_source"] == "estimated"
    assert event["cost"] == str(tariff_cost(3050, 2000, 1000, event["output_tokens"]).normalize())


@pytest.mark.parametrize(("path", "model", "error_line"), [
    ("/v1/chat/completions", "broken", b"data: "),
    ("/v1/messages", "claude-broken", b"event: error\ndata: "),
])
def test_a_broken_stream_ends_with_one_whole_error_event_in_its_wire_format(gateway, path, model,
                                                                             error_line):
    with gateway.stream(path, {"model": model, "messages": MESSAGES, "max_tokens": 100,
                               "stream": True}) as r:
        received = b"".join(r.iter_bytes())
    assert b"[DONE]" not in received and b"message_stop" not in received
    events = received.split(b"\n\n")
    assert events[-1] == b""  # nothing half-sent after the last event
    last = events[-2]
    assert last.startswith(error_line)
    error = orjson.loads(last.removeprefix(error_line))
    if model == "broken":
        assert error["error"]["type"] == "upstream_broken"
    else:
        assert error["type"] == "error" and error["error"]["type"] == "api_error"
    for event in events[:-2]:  # every event before it is whole
        data = event.split(b"data: ", 1)[1]
        assert isinstance(orjson.loads(data), dict)


@pytest.mark.parametrize("model", ["bad-usage-json", "bad-usage-types"])
def test_a_malformed_usage_chunk_falls_back_to_the_recount(gateway, o200k, model):
    stream = openai_client(gateway).chat.completions.create(model=model, messages=MESSAGES,
                                                            stream=True)
    text, error = stream_text(stream)
    assert (text, error) == (ANSWER, None)  # the client's stream is whole
    event = wait_for_event(gateway, stream.response.headers["x-tokometer-event-id"])
    assert event["status"] == 200 and event["usage_source"] == "counted"
    assert (event["input_tokens"], event["output_tokens"]) == (hi_tokens(o200k),
                                                               len(o200k.encode(ANSWER)))


def test_a_reported_zero_for_an_answer_with_text_is_recounted(gateway, o200k):
    r = gateway.chat("zero-usage", "Hi")
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 0
    event = gateway.event(r.headers["x-tokometer-event-id"])
    assert event["usage_source"] == "counted"
    assert (event["input_tokens"], event["output_tokens"]) == (hi_tokens(o200k),
                                                               len(o200k.encode(ANSWER)))
    assert event["cost"] == str(tariff_cost(hi_tokens(o200k), 0, 0,
                                            len(o200k.encode(ANSWER))).normalize())


def test_reasoning_sent_twice_in_a_delta_is_counted_once(gateway, o200k):
    with gateway.stream("/v1/chat/completions", {"model": "reasoning-dup", "messages": MESSAGES,
                                                 "stream": True}) as r:
        event_id = r.headers["x-tokometer-event-id"]
        assert b"[DONE]" in b"".join(r.iter_bytes())
    event = gateway.event(event_id)
    text = "Two plus two: add them. It is four.The answer is 4."
    assert event["output_tokens"] == len(o200k.encode(text))
    assert event["usage_source"] == "counted"


def test_a_providers_own_error_event_mid_stream_is_recorded_with_the_tokens_delivered(gateway,
                                                                                      o200k):
    stream = openai_client(gateway).chat.completions.create(model="error-mid-stream",
                                                            messages=MESSAGES, stream=True)
    text, error = stream_text(stream)
    assert text == DELIVERED and isinstance(error, openai.APIError)  # passed through as sent
    event = wait_for_event(gateway, stream.response.headers["x-tokometer-event-id"])
    assert (event["status"], event["error_type"]) == (502, "server_error")
    assert event["output_tokens"] == len(o200k.encode(DELIVERED))
    assert event["usage_source"] == "counted"

    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0)
    stream = client.messages.create(model="claude-overloaded", max_tokens=100, messages=MESSAGES,
                                    stream=True)
    text, error = stream_text(stream)
    assert text == "Hi! My name is Claude." and isinstance(error, anthropic.APIStatusError)
    assert error.body["error"]["type"] == "overloaded_error"
    event = wait_for_event(gateway, stream.response.headers["x-tokometer-event-id"])
    assert (event["status"], event["error_type"]) == (502, "overloaded_error")
    assert (event["input_tokens"], event["output_tokens"]) == (3050, math.ceil(len(text) / 4))


def test_a_client_that_leaves_before_the_watch_began_is_noticed():
    """granian tells a disconnect only to a receive() already waiting: a client that read
    the first bytes and left before the gateway began to watch would go unnoticed while the
    provider stayed silent (its reservation held, its event late). Here receive() behaves so,
    and the client leaves the moment the first bytes are sent: the stream still ends at
    once, recorded as the client's leaving (499)."""
    import asyncio
    import time
    from types import SimpleNamespace

    from test_attack_stream_manifests import _Answer
    from tokometer.gateway.labels import Labels
    from tokometer.gateway.relay import _relay_stream
    from tokometer.policy.keys import Consumer

    first = b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    call = SimpleNamespace(endpoint=SimpleNamespace(operation="chat", api="openai"),
                           client_wants_usage=True, consumer=Consumer("k", "t", "a", None),
                           t0=time.perf_counter())
    route = SimpleNamespace(model="m", provider=SimpleNamespace(name="oa"))

    async def run() -> int:
        gone = asyncio.Event()

        async def send(message: dict) -> None:
            if message.get("more_body"):
                gone.set()  # the client has its first bytes, and leaves

        async def receive() -> dict:
            if gone.is_set():  # began after the client left: told nothing, ever
                await asyncio.Event().wait()
            await gone.wait()
            return {"type": "http.disconnect"}

        outcome, _ = await asyncio.wait_for(_relay_stream(
            call, route, _Answer([first]), "e1", send, receive, set(), Labels("P")), 2)
        return outcome.status

    assert asyncio.run(run()) == 499
