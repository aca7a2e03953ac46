"""Red-team: a provider's stream that ends wrong, seen through the real SDKs.

"A stream that breaks off is never free ... and the client is told" (issue 11): a stream that
simply stops (the connection closed cleanly, no end marker), or whose usage arrives before the
answer has ended, is a broken or short reading, not a complete one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest
from aiohttp import web

from conftest import TARIFF_TOML, Gateway, start_gateway, stop_gateway, wait_for_event
from fake_upstream import FakeUpstream

WORDS = 20  # text deltas of "hello world "
REFUSAL = "I'm sorry, but I cannot help with that request in any form whatsoever today."


def _chunk(text: str) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "c", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}) + b"\n\n"


_USAGE = (b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[],'
          b'"usage":{"prompt_tokens":8,"completion_tokens":1,"total_tokens":9}}\n\n')
_MESSAGE_START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"m",'
                  b'"type":"message","role":"assistant","model":"claude-x","content":[],'
                  b'"stop_reason":null,"usage":{"input_tokens":10,"output_tokens":1}}}\n\n'
                  b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
                  b'"content_block":{"type":"text","text":""}}\n\n')
_TEXT_DELTA = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
               b'"delta":{"type":"text_delta","text":"hello world "}}\n\n')


class StoppingUpstream(FakeUpstream):
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        model = orjson.loads(await request.read())["model"]
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        if model == "claude-stops":  # message_start, text, then a clean close: no message_stop
            await response.write(_MESSAGE_START + _TEXT_DELTA * WORDS)
        elif model == "stops":  # text, then a clean close: no finish, usage or [DONE]
            await response.write(_chunk("hello world ") * WORDS)
        elif model == "refusal-cut":  # a structured-output refusal, then the line drops
            for word in REFUSAL.split(" "):
                await response.write(b"data: " + orjson.dumps({
                    "id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [
                        {"index": 0, "delta": {"refusal": word + " "}, "finish_reason": None}]})
                    + b"\n\n")
            assert request.transport is not None
            request.transport.abort()
            return response
        elif model == "early-usage":  # a usage chunk of 1 token, then the answer goes on
            await response.write(_chunk("hi") + _USAGE + _chunk("hello world ") * WORDS
                                 + b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    fake = StoppingUpstream().start()
    models = "".join(
        f'[[models]]\nname = "{name}"\nroutes = [{{ provider = "{provider}" }}]\n'
        f'tokenizer = "tiktoken:o200k_base"\nprice = {TARIFF_TOML}\n'
        for name, provider in (("stops", "o"), ("early-usage", "o"), ("claude-stops", "a"),
                               ("refusal-cut", "o")))
    gateway = start_gateway(tmp_path_factory.mktemp("stops"), f"""
[[providers]]
name = "o"
api = "openai"
base_url = "{fake.url}/v1"
[[providers]]
name = "a"
api = "anthropic"
base_url = "{fake.url}/anthropic"
{models}""")
    yield gateway
    stop_gateway(gateway)
    fake.stop()


def _raw_stream(gw: Gateway, api: str) -> Any:
    """A stream of the model that just stops, opened with the API's own SDK."""
    if api == "openai":
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0,
                               timeout=20)
        return client.chat.completions.with_raw_response.create(
            model="stops", messages=[{"role": "user", "content": "hi"}], stream=True)
    claude = anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0, timeout=20)
    return claude.messages.with_raw_response.create(
        model="claude-stops", max_tokens=100, stream=True,
        messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(("api", "error"), [("openai", openai.APIError),
                                            ("anthropic", anthropic.APIError)])
def test_a_stream_that_just_stops_is_an_error_the_sdk_raises(gw, o200k, api, error):
    raw = _raw_stream(gw, api)
    with pytest.raises(error):
        for _ in raw.parse():
            pass
    event = wait_for_event(gw, raw.headers["x-tokometer-event-id"])
    assert event["status"] >= 500
    assert event["output_tokens"] == len(o200k.encode("hello world " * WORDS))


def test_usage_that_arrives_before_the_answer_ends_is_not_its_last_word(gw, o200k):
    """A usage chunk is the stream's last word only if no text follows it: here the provider
    says 1 output token and then streams 40 more; the reading must count them all."""
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(
        model="early-usage", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "hi" + "hello world " * WORDS
    event = wait_for_event(gw, raw.headers["x-tokometer-event-id"])
    assert event["output_tokens"] == len(o200k.encode(text)), event["usage_source"]


def test_a_cut_stream_of_refusal_deltas_is_not_recorded_without_output(gw, o200k):
    """OpenAI streams a structured-output refusal as `delta.refusal`: those are output tokens
    the provider bills, and when the stream breaks off before its usage chunk the recount
    must see them (it read content, reasoning and tool arguments, not refusals)."""
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(
        model="refusal-cut", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.APIError):
        for _ in raw.parse():
            pass
    event = wait_for_event(gw, raw.headers["x-tokometer-event-id"])
    assert event["status"] >= 500
    expected = len(o200k.encode("".join(w + " " for w in REFUSAL.split(" "))))
    assert event["output_tokens"] == expected
