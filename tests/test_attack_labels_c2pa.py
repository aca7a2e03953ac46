"""Attacks on the streamed explicit notice (StreamNotice) and C2PA text manifests."""

from __future__ import annotations

import json
import time

import pytest

from tokometer.config import Notice, Scope
from tokometer.gateway.stream_labels import StreamNotice
from tokometer.usage.stream import StreamTap, event_data
from tokometer.usage.text import body_text, chunk_texts

N = "[AI] "


def _run(operation: str, position: str, stream: list[bytes]) -> tuple[StreamNotice, StreamTap,
                                                                        list[bytes]]:
    notice = Notice(Scope("tenant", "t"), N, position)
    tap = StreamTap(operation)
    marker = StreamNotice(operation, notice, tap.texts)
    sent = []
    for block in stream:
        tap.feed(block)
        sent.append(block if not marker.active else marker.place(block, event_data(block)))
    return marker, tap, sent


def _events(sent: list[bytes]) -> list[dict]:
    out = []
    for b in b"".join(sent).split(b"\n\n"):
        data = event_data(b + b"\n\n") if b.strip() else b""
        if data.startswith(b"{"):
            out.append(json.loads(data))
    return out


def _delta(text: str) -> dict:
    return {"type": "response.output_text.delta", "item_id": "m", "output_index": 0,
            "content_index": 0, "delta": text}


def _sse(i: int, e: dict) -> bytes:
    # json.dumps (ensure_ascii) writes a lone surrogate as the escape "\ud83d", as providers do
    return (b"event: " + e["type"].encode() + b"\ndata: "
            + json.dumps({**e, "sequence_number": i}).encode() + b"\n\n")


def test_responses_answer_cut_inside_an_emoji_keeps_notice_and_numbering():
    """(Mended.) A Responses answer cut off by max_output_tokens in the middle of an emoji: its last
    delta, the `done` text and the final response hold a lone surrogate escape (RFC 8259 JSON,
    which the tap reads with parse_json's fallback). StreamNotice reads events with orjson only,
    so those events are passed unamended: the final response lacks the notice the deltas
    carried, and their sequence numbers are not moved up (two events share a number)."""
    text = "Hi \ud83d"
    part = {"type": "output_text", "text": text, "annotations": []}
    message = {"id": "m", "type": "message", "role": "assistant", "content": [part]}
    raw = [
        {"type": "response.created", "response": {"id": "r", "output": []}},
        _delta("Hi "),
        _delta("\ud83d"),
        {"type": "response.output_text.done", "item_id": "m", "output_index": 0,
         "content_index": 0, "text": text},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": "response.incomplete", "response": {
            "id": "r", "status": "incomplete", "output": [message],
            "incomplete_details": {"reason": "max_output_tokens"}}},
    ]
    marker, tap, sent = _run("responses", "start", [_sse(i, e) for i, e in enumerate(raw)])
    events = _events(sent)
    numbers = [e["sequence_number"] for e in events]
    assert numbers == list(range(len(events))), numbers
    final = events[-1]["response"]
    assert body_text("responses", final) == N + text
    assert marker.received(tap.texts()) == N + text


def test_responses_first_delta_half_an_emoji_notice_not_at_start():
    """(Mended.) The first delta is the high half of a surrogate pair split across two events: the
    notice (position start) is skipped past it and lands between the two halves, breaking
    the emoji and not being at the start."""
    raw = [
        {"type": "response.created", "response": {"id": "r", "output": []}},
        _delta("\ud83d"),
        _delta("\ude00 ok"),
        _delta(" more"),
    ]
    _, _, sent = _run("responses", "start", [_sse(i, e) for i, e in enumerate(raw)])
    events = _events(sent)
    client = "".join(t for e in events for _, t in chunk_texts("responses", e))
    assert client.startswith(N), repr(client)


def _chunk(index: int, content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "m",
                                   "choices": [{"index": index, "delta": delta,
                                                "finish_reason": finish}]}).encode() + b"\n\n"


def _client_text(sent: list[bytes]) -> str:
    """What an SDK rebuilds: each choice's deltas, choice after choice (as the tap/meter do)."""
    choices: dict[int, str] = {}
    for e in _events(sent):
        for c in e.get("choices", []):
            choices[c["index"]] = choices.get(c["index"], "") + (c["delta"].get("content") or "")
    return "".join(choices[i] for i in sorted(choices))


@pytest.mark.parametrize("position", ["start", "end"])
def test_chat_stream_with_two_choices_hash_matches_client(position):
    """(Mended.) n=2, choices interleaved (as OpenAI streams them): the notice's offset was
    taken in the choice-ordered concatenation of all choices, but the notice goes into one
    choice, so the text the event hashed (`received`) was not what the client got."""
    stream = [_chunk(1, "B"), _chunk(0, "A"), _chunk(0, finish="stop"), _chunk(1, "C"),
              _chunk(1, finish="stop"), b"data: [DONE]\n\n"]
    marker, tap, sent = _run("chat", position, stream)
    assert marker.received(tap.texts()) == _client_text(sent)


def test_c2pa_signing_sends_the_text_in_its_nfc_form():
    """(A decision, not a defect.) sign() sends the text in its NFC form, as c2pa-text's
    reference `embed_manifest` does: the C2PA SDK's reader hashes the bytes it is given, so
    only an NFC text verifies there. The characters are canonically equivalent (the same to
    a reader: U+212B ANGSTROM SIGN is U+00C5, e + U+0301 is U+00E9)."""
    import unicodedata

    import c2pa_text

    from tokometer.provenance.manifests import TextManifests

    manifests = TextManifests(bytes(range(32)), "P")
    for text in ("\u212b", "\uf900", "e\u0301"):
        signed = manifests.sign(text, event_id="e", model="m")
        visible = c2pa_text.extract_manifest(signed)[1]
        assert visible == unicodedata.normalize("NFC", text) == signed[:len(visible)]


def test_a_c2pa_signing_failure_leaves_the_answer_as_it_came():
    """(Mended.) Whatever the C2PA SDK refuses, the answer goes unsigned and intact."""
    from tokometer.gateway.labels import sign_body

    class Refusing:
        def sign(self, text: str, **_: object) -> str:
            if text == "two":
                raise RuntimeError("C2PA signing: refused")
            return text + "\ufeff"

    body = {"choices": [{"message": {"content": "one"}}, {"message": {"content": "two"}}]}
    assert sign_body(Refusing(), "chat", body, "e", "m") is False  # type: ignore[arg-type]
    assert [c["message"]["content"] for c in body["choices"]] == ["one", "two"]


def test_a_failed_c2pa_signing_does_not_lose_the_event(scripted, tmp_path):
    """(Mended.) The provider's `model` holds a lone surrogate escape (valid JSON, read by
    parse_json's fallback). It went into the manifest definition as "\\ud800", which the SDK's
    JSON parser refused: sign() raised in relay, outside any handler: the client got a bare
    500 and the answer the provider billed was never recorded."""
    from conftest import start_gateway, stop_gateway
    from scripted_upstream import Script

    scripted.scripts["c2pa-bad-model"] = Script(raw=(
        b'{"id":"x","object":"chat.completion","model":"gpt\\ud800","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}'))
    toml = (f'{scripted.providers_toml()}\n[[models]]\nname = "chat"\n'
            'tokenizer = "tiktoken:o200k_base"\n'
            'routes = [{ provider = "oa", model = "gpt-4o-mini" }]\n'
            'price = { input = 1, output = 2 }\n'
            '[[labels]]\ntenant = "acme"\ntext = "[AI] "\nc2pa = true\n')
    gw = start_gateway(tmp_path / "gw", toml)
    try:
        before = gw.count_events()
        r = gw.chat("chat", user="c2pa-bad-model")
        deadline = time.monotonic() + 5
        while gw.count_events() == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.count_events() == before + 1, (r.status_code, r.text[:200])
        assert r.status_code == 200, (r.status_code, r.text[:200])
        assert r.json()["choices"][0]["message"]["content"].startswith("[AI] hello")
    finally:
        stop_gateway(gw)


def test_responses_delta_without_content_index_final_response_lacks_notice():
    """(Mended.) Deltas without `content_index` (the done events have it): the notice goes into the
    deltas and the event hashes text with it, but the part is keyed (item_id, None), so the
    `done`, item and final response are not amended: the SDK's final `output_text` has no
    notice, and differs from what the event hashes."""
    part = {"type": "output_text", "text": "hello", "annotations": []}
    message = {"id": "m", "type": "message", "role": "assistant", "content": [part]}
    raw = [
        {"type": "response.output_text.delta", "item_id": "m", "output_index": 0,
         "delta": "hello"},
        {"type": "response.output_text.done", "item_id": "m", "output_index": 0,
         "content_index": 0, "text": "hello"},
        {"type": "response.completed", "response": {"id": "r", "output": [message]}},
    ]
    marker, tap, sent = _run("responses", "start", [_sse(i, e) for i, e in enumerate(raw)])
    final = _events(sent)[-1]["response"]
    assert body_text("responses", final) == marker.received(tap.texts())
