"""Attacks on the streamed C2PA manifests (gateway/stream_labels.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import c2pa_text
import pytest

from test_c2pa import MANIFESTS, _through
from tokometer.config import Notice, Scope
from tokometer.usage.stream import event_data
from tokometer.usage.text import chunk_texts


def _h(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _one_wrapper_at_end(text: str) -> None:
    found = c2pa_text.find_wrapper_info(text)
    assert found is not None and found[1] + found[2] == len(text.encode())
    assert text.count("\ufeff") == 1, "more than one wrapper"
    visible = c2pa_text.extract_manifest(text)[1]
    assert visible == text[:len(visible)]


def test_chat_finish_chunk_with_tool_arguments_but_no_content_hash_matches_arrival_order():
    """(Mended.) A provider that puts finish_reason on the last tool-call chunk (no content in it):
    the wrapper goes before that chunk, but `received` puts it after the chunk's text."""
    events, hashed = _through("chat", [
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"},
                                               "finish_reason": None}]},
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "{\"a\":1}"}}]},
            "finish_reason": "tool_calls"}]}])
    # the client's text per choice, in arrival order, read as the meter reads each event
    received: dict[int, str] = {}
    for event in events:
        for index, text in chunk_texts("chat", event):
            received[index] = received.get(index, "") + text
    assert _h(hashed) == _h("".join(received[i] for i in sorted(received)))


def test_messages_event_with_an_unhashable_index_does_not_break_the_stream():
    """(Mended.) A malformed provider event (index a list): the tap reads past it, the
    labels raised."""
    _through("messages", [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                       "text": ""}},
        {"type": "content_block_delta", "index": [0], "delta": {"type": "text_delta",
                                                                "text": "x"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                              "text": "one"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_stop"}])


def test_responses_event_with_an_unhashable_item_id_does_not_break_the_stream():
    _through("responses", [
        {"type": "response.output_text.delta", "item_id": ["m"], "output_index": 0,
         "content_index": 0, "delta": "x"},
        {"type": "response.output_text.done", "item_id": "m", "output_index": 0,
         "content_index": 0, "text": "x"},
        {"type": "response.completed", "response": {"id": "r", "output": []}}])


def test_a_repeated_responses_done_does_not_add_a_second_wrapper():
    events, hashed = _through("responses", [
        {"type": "response.output_text.delta", "item_id": "m", "output_index": 0,
         "content_index": 0, "delta": "one"},
        {"type": "response.output_text.done", "item_id": "m", "output_index": 0,
         "content_index": 0, "text": "one"},
        {"type": "response.output_text.done", "item_id": "m", "output_index": 0,
         "content_index": 0, "text": "one"},
        {"type": "response.completed", "response": {"id": "r", "output": []}}])
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert _h(hashed) == _h(deltas)
    _one_wrapper_at_end(deltas)


class _SlowManifests:
    """(Mended.) A TextManifests whose signing takes a while (a loaded signer: one lock for all)."""

    def __init__(self, delay: float):
        self.delay = delay

    def wrapper(self, text: str, *, event_id: str, model: str | None) -> str | None:
        import time
        time.sleep(self.delay)
        return MANIFESTS.wrapper(text, event_id=event_id, model=model)


class _Answer:
    status, content_type = 200, "text/event-stream"

    def __init__(self, chunks: list[bytes]):
        self._chunks = chunks

    def headers(self, names: frozenset[str]) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", b"text/event-stream")]

    async def chunks(self):
        for chunk in self._chunks:
            yield chunk
        await asyncio.sleep(10)


def test_a_stop_while_signing_does_not_hash_text_the_client_never_got():
    """(Mended.) One network chunk holds a content chunk and the finish chunk: the content
    is read by the tap, then the pump awaits the signer; the gateway stops (or the client
    leaves) there. The content was never sent, but the event's output_sha256 covered it."""
    import time
    from types import SimpleNamespace

    from tokometer.gateway.labels import Labels
    from tokometer.gateway.relay import _relay_stream
    from tokometer.policy.keys import Consumer

    chunk = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in [
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "Hello"},
                                               "finish_reason": None}]},
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {},
                                               "finish_reason": "stop"}]}])
    labels = Labels("P", (Notice(Scope("tenant", "t"), "", "end", True),),
                    _SlowManifests(0.5))  # type: ignore[arg-type]
    call = SimpleNamespace(endpoint=SimpleNamespace(operation="chat", api="openai"),
                           client_wants_usage=True, consumer=Consumer("k", "t", "a", None),
                           t0=time.perf_counter())
    route = SimpleNamespace(model="m", provider=SimpleNamespace(name="oa"))
    sent: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message.get("body", b""))

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(100)
        return {"type": "http.disconnect"}

    async def run() -> tuple[Any, Any]:
        streams: set[Any] = set()
        relayed = asyncio.ensure_future(_relay_stream(
            call, route, _Answer([chunk]), "e1", send, receive, streams, labels))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)  # the signer is at work
        for end in list(streams):
            end()  # the gateway stops
        outcome, finish = await relayed
        await finish(None)
        return outcome, finish

    outcome, _ = asyncio.run(run())
    body = b"".join(sent)
    got = "".join(t for e in body.split(b"\n\n") if event_data(e + b"\n\n").startswith(b"{\"id")
                  for _, t in chunk_texts("chat", json.loads(event_data(e + b"\n\n"))))
    assert outcome.received is not None
    assert _h(outcome.received()) == _h(got), (got, len(outcome.received()))


@pytest.fixture(scope="module")
def signing_gw(scripted, tmp_path_factory):
    from conftest import start_gateway, stop_gateway

    toml = (f'{scripted.providers_toml()}\n'
            '[[models]]\nname = "chat"\ntokenizer = "tiktoken:o200k_base"\n'
            'routes = [{ provider = "oa", model = "gpt-4o-mini" }]\n'
            'price = { input = 1, output = 2 }\n'
            '[[models]]\nname = "claude"\ntokenizer = "tiktoken:o200k_base"\n'
            'routes = [{ provider = "an", model = "claude-x" }]\n'
            'price = { input = 1, output = 2 }\n'
            '[[labels]]\ntenant = "acme"\ntext = ""\nc2pa = true\n')
    gw = start_gateway(tmp_path_factory.mktemp("sm"), toml)
    yield gw
    stop_gateway(gw)


def _anthropic_sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + json.dumps(event).encode()


def test_a_malformed_anthropic_event_does_not_cost_the_client_its_stream(signing_gw, scripted):
    """(Mended.) The tap reads past an event whose index is a list; the manifests raised
    TypeError in the pump: the stream was broken off, the client never got message_stop."""
    from conftest import wait_for_event
    from scripted_upstream import Script

    scripted.scripts["bad-index"] = Script(events=[_anthropic_sse(e) for e in [
        {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant",
                                              "model": "claude-x", "content": [],
                                              "usage": {"input_tokens": 3, "output_tokens": 0}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                       "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                              "text": "one"}},
        {"type": "content_block_delta", "index": [0], "delta": {"type": "text_delta",
                                                                "text": ""}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 1}},
        {"type": "message_stop"}]])
    import httpx

    body, cut = b"", None
    with signing_gw.stream("/v1/messages", {
            "model": "claude", "max_tokens": 10, "stream": True,
            "metadata": {"user_id": "bad-index"},
            "messages": [{"role": "user", "content": "hi"}]}) as r:
        event_id = r.headers["x-tokometer-event-id"]
        try:
            for piece in r.iter_bytes():
                body += piece
        except httpx.HTTPError as error:
            cut = error
    try:
        recorded = wait_for_event(signing_gw, event_id, timeout=5)
    except AssertionError as error:
        recorded = {"lost": str(error)}
    assert cut is None and b"message_stop" in body, (cut, recorded)
    assert recorded.get("status") == 200, recorded


def _verifies(text: str) -> None:
    import unicodedata
    _one_wrapper_at_end(text)
    manifest, start, _ = c2pa_text.find_wrapper_info(text)
    visible = text.encode()[:start].decode()
    digest = hashlib.sha256(unicodedata.normalize("NFC", visible).encode()).digest()
    assert bytes(digest) in manifest  # the hard binding's hash (raw in the CBOR)


def test_many_concurrent_signed_chat_streams_of_several_choices(signing_gw, scripted):
    """Holds (checked): every choice ends with one wrapper binding its text, and every event's
    hash is of what its client got."""
    import httpx

    from conftest import wait_for_event
    from scripted_upstream import Script

    def chunk(i: int, text: str | None, finish: str | None = None) -> bytes:
        return b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk",
                                       "model": "gpt-4o-mini", "choices": [
            {"index": i, "delta": {"content": text} if text else {},
             "finish_reason": finish}]}).encode()

    for t in range(16):
        scripted.scripts[f"many-{t}"] = Script(events=[
            *(chunk(i, f"w{t}-{i}-{k} ") for k in range(30) for i in range(8)),
            *(chunk(i, "end" if i % 2 else None, "stop") for i in range(8)),
            b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini",'
            b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9,'
            b'"total_tokens":12}}',
            b"data: [DONE]"])

    async def one(client: httpx.AsyncClient, t: int) -> tuple[str, bytes]:
        async with client.stream("POST", signing_gw.url + "/v1/chat/completions", json={
                "model": "chat", "stream": True, "user": f"many-{t}", "n": 8,
                "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {signing_gw.key}"}) as r:
            return r.headers["x-tokometer-event-id"], b"".join([b async for b in r.aiter_bytes()])

    async def run() -> list[tuple[str, bytes]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as c:
            return await asyncio.gather(*(one(c, t) for t in range(16)))

    for event_id, body in asyncio.run(run()):
        texts: dict[int, str] = {}
        for block in body.split(b"\n\n"):
            data = event_data(block + b"\n\n")
            if data.startswith(b"{"):
                for i, text in chunk_texts("chat", json.loads(data)):
                    texts[i] = texts.get(i, "") + text
        assert sorted(texts) == list(range(8))
        for text in texts.values():
            _verifies(text)
        whole = "".join(texts[i] for i in sorted(texts))
        assert wait_for_event(signing_gw, event_id)["output_sha256"] == _h(whole)


def test_a_repeated_finish_chunk_with_content_adds_no_second_wrapper():
    """(Mended.) `A`+stop, then `B`+stop: one wrapper, on the text the first finish ended;
    what came after it is the client's but not bound (it would break the binding)."""
    def chunk(text: str) -> dict:
        return {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": text},
                                                      "finish_reason": "stop"}]}

    events, hashed = _through("chat", [chunk("A"), chunk("B")])
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert text.count("\ufeff") == 1 and text.endswith("B") and hashed == text
