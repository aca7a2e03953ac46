"""C2PA text manifests ([[labels]] c2pa = true), checked with the C2PA SDK's own reader (the
Rust library under c2pa-python) and the text wrapper's reference implementation (c2pa-text):
the signature verifies under the root `tokometer provenance c2pa-chain --root` prints, the
hash of the text matches, the exclusion is exactly the wrapper, and an edit breaks it."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import anthropic
import c2pa
import c2pa_text
import httpx
import openai
import pytest

from conftest import Gateway, start_gateway, stop_gateway, wait_for_event
from processes import cli
from tokometer.provenance.manifests import TextManifests

NOTICE = "[AI] "
TRAINED_MODEL = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
MANIFESTS = TextManifests(bytes(range(32)), "P")  # a signer for the streams driven here


@pytest.fixture(scope="module")
def signing(upstream, tmp_path_factory):
    """Tenant "acme": a manifest and no visible notice; app "both": a notice and a manifest;
    any other key: neither."""
    from conftest import FAKE_KEYS, MODELS_TOML, providers_toml

    labels = (f'[[labels]]\napp = "both"\ntext = "{NOTICE}"\nc2pa = true\n'
              '[[labels]]\ntenant = "acme"\ntext = ""\nc2pa = true\n')
    gw = start_gateway(tmp_path_factory.mktemp("c2pa"), "producer = \"Example Org\"\n"
                       f"{providers_toml(upstream)}\n{MODELS_TOML}\n{labels}", env=FAKE_KEYS)
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="module")
def root(signing: Gateway) -> str:
    done = cli(signing.config, "provenance", "c2pa-chain", "--root")
    assert done.returncode == 0, done.stderr
    return done.stdout


def verdict(text: str, root_pem: str) -> tuple[dict[str, Any], dict[str, Any], tuple[int, int]]:
    """(the reader's report, the active manifest in detail, the wrapper's (start, length) in
    UTF-8 bytes) for a text carrying a manifest."""
    found = c2pa_text.find_wrapper_info(text)
    assert found is not None, "no C2PA wrapper in the text"
    manifest, start, length = found
    context = c2pa.Context.from_dict({"trust": {"trust_anchors": root_pem},
                                      "verify": {"verify_trust": True}})
    reader = c2pa.Reader("application/c2pa", io.BytesIO(text.encode()), manifest_data=manifest,
                         context=context)
    report, detail = json.loads(reader.json()), json.loads(reader.detailed_json())
    return report, detail["manifests"][detail["active_manifest"]], (start, length)


def assert_valid(text: str, root_pem: str, event_id: str, model: str) -> None:
    report, active, wrapper = verdict(text, root_pem)
    codes = {s["code"] for s in report["validation_results"]["activeManifest"]["success"]}
    assert {"signingCredential.trusted", "claimSignature.validated",
            "assertion.dataHash.match"} <= codes, codes
    # The Rust reader does not know text, so it cannot find the wrapper the exclusion names:
    # the one failure it reports. That the exclusion is the wrapper is checked here instead.
    failures = report["validation_results"]["activeManifest"]["failure"]
    assert [f["explanation"] for f in failures] == [
        "data hash exclusion does not match the manifest location in the asset"], failures
    store = active["assertion_store"]
    exclusion = store["c2pa.hash.data"]["exclusions"]
    assert [(e["start"], e["length"]) for e in exclusion] == [wrapper]
    assert store["org.tokometer.answer"] == {"event_id": event_id, "producer": "Example Org"}
    action, = store["c2pa.actions.v2"]["actions"]
    assert (action["action"], action["digitalSourceType"]) == ("c2pa.created", TRAINED_MODEL)
    assert action["softwareAgent"]["name"] == model
    assert active["signature"]["alg"] == "ed25519"


def _client(gw: Gateway, key: str, ids: list[str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0,
                         http_client=httpx.Client(event_hooks={"response": [
                             lambda r: ids.append(r.headers["x-tokometer-event-id"])]}))


def test_a_chat_answer_carries_a_manifest_that_verifies(signing, root):
    ids: list[str] = []
    client = _client(signing, signing.key, ids)
    answer = client.chat.completions.create(model="gpt-4o-mini",
                                            messages=[{"role": "user", "content": "hi"}])
    text = answer.choices[0].message.content or ""
    event = wait_for_event(signing, ids[0])
    assert_valid(text, root, ids[0], answer.model)
    assert event["output_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    visible = c2pa_text.extract_manifest(text)[1]
    plain = _client(signing, signing.new_key(tenant="nobody")[0], [])
    bare = plain.chat.completions.create(model="gpt-4o-mini",
                                         messages=[{"role": "user", "content": "hi"}])
    assert visible == bare.choices[0].message.content  # no visible notice for "acme"
    # the reading is of what the model wrote, not of the manifest
    assert event["output_tokens"] == bare.usage.completion_tokens


def test_an_edited_text_no_longer_matches_its_manifest(signing, root):
    client = _client(signing, signing.key, [])
    text = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    ).choices[0].message.content or ""
    visible = c2pa_text.extract_manifest(text)[1]
    edited = text.replace(visible, visible[:-1] + ("x" if visible[-1:] != "x" else "y"), 1)
    report, _, _ = verdict(edited, root)
    failures = [f["explanation"] for f in report["validation_results"]["activeManifest"]
                ["failure"]]
    assert any("Hashes do not match" in f for f in failures), failures
    report, _, _ = verdict(text, _other_root())
    codes = {s["code"] for s in report["validation_results"]["activeManifest"].get("failure",
                                                                                  [])}
    assert "signingCredential.untrusted" in codes  # another gateway's root does not vouch


def _other_root() -> str:
    from tokometer.provenance.manifests import certificate_chain

    return certificate_chain(bytes(range(32)), "Someone Else")[1].decode()


@pytest.mark.parametrize("api", ["messages", "responses"])
def test_each_text_of_a_message_or_responses_answer_carries_a_manifest(signing, root, api):
    key = signing.new_key(tenant="acme", app="both")[0]
    if api == "messages":
        client = anthropic.Anthropic(base_url=signing.url, api_key=key, max_retries=0)
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
        texts = [b.text for b in raw.parse().content if b.type == "text"]
        event_id, model = raw.headers["x-tokometer-event-id"], raw.parse().model
    else:
        ids: list[str] = []
        response = _client(signing, key, ids).responses.create(model="gpt-4.1", input="hi")
        texts = [response.output_text]
        event_id, model = ids[0], response.model
    assert texts[0].startswith(NOTICE)  # app "both": the notice and the manifest
    for text in texts:
        assert_valid(text, root, event_id, model)
    assert wait_for_event(signing, event_id)["output_sha256"] == hashlib.sha256(
        "".join(texts).encode()).hexdigest()


def _streamed(gw: Gateway, key: str, api: str) -> tuple[str, str, str, list[Any]]:
    """(the client's text, its event id, the model, the SDK's events) of a streamed answer."""
    ids: list[str] = []
    if api == "chat":
        chunks = list(_client(gw, key, ids).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, ids[0], chunks[0].model, chunks
    if api == "messages":
        client = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)
        with client.messages.stream(model="claude-sonnet-5", max_tokens=64,
                                    messages=[{"role": "user", "content": "hi"}]) as s:
            events = list(s)
            final = s.get_final_message()
            event_id = s.response.headers["x-tokometer-event-id"]
        text = "".join(b.text for b in final.content if b.type == "text")
        deltas = "".join(e.delta.text for e in events if e.type == "content_block_delta"
                         and e.delta.type == "text_delta")
        assert deltas == text  # the final message holds what the deltas carried
        return text, event_id, final.model, events
    if api == "text_completion":
        chunks = list(_client(gw, key, ids).completions.create(
            model="gpt-3.5-turbo-instruct", prompt="hi", max_tokens=16, stream=True))
        return ("".join(c.choices[0].text for c in chunks if c.choices), ids[0],
                chunks[0].model, chunks)
    with _client(gw, key, ids).responses.stream(model="gpt-4.1", input="hi") as s:
        events = list(s)
        final = s.get_final_response()
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert [e.text for e in events if e.type == "response.output_text.done"] == [text]
    assert final.output_text == text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return text, ids[0], final.model, events


@pytest.mark.parametrize("api", ["chat", "text_completion", "messages", "responses"])
def test_a_streamed_answer_carries_a_manifest_that_verifies(signing, root, api):
    """The manifest goes in one more text event before the text ends; the SDK's text, its
    final answer and the event's hash all hold it; the reading is the provider's."""
    for key in (signing.key, signing.new_key(tenant="acme", app="both")[0]):
        text, event_id, model, _ = _streamed(signing, key, api)
        assert_valid(text, root, event_id, model)
        event = wait_for_event(signing, event_id)
        assert event["output_sha256"] == hashlib.sha256(text.encode()).hexdigest()
        visible = c2pa_text.extract_manifest(text)[1]
        bare, bare_id, _, _ = _streamed(signing, signing.new_key(tenant="nobody")[0], api)
        assert visible == (bare if key == signing.key else NOTICE + bare)
        assert event["output_tokens"] == wait_for_event(signing, bare_id)["output_tokens"]


def test_the_chain_is_the_same_for_every_process_holding_the_key(signing, root):
    again = cli(signing.config, "provenance", "c2pa-chain")
    assert again.returncode == 0 and again.stdout.endswith(root)
    assert again.stdout.count("BEGIN CERTIFICATE") == 2


def _through(operation: str, events: list[Any], notice: str = "") -> tuple[
        list[dict[str, Any]], str]:
    """Provider events (objects, or SSE events as bytes) through a stream's labels (a
    manifest, and a notice at the end if given; a chat stream ends with [DONE]): (the
    events sent, decoded; the text the event would hash)."""
    import asyncio

    from tokometer.config import Notice, Scope
    from tokometer.gateway.stream_labels import stream_labels
    from tokometer.usage.stream import SSESplitter, StreamTap, event_data

    tap = StreamTap(operation)
    labels = stream_labels(operation, Notice(Scope("tenant", "t"), notice, "end", True),
                           MANIFESTS, tap.texts, "e1", lambda: "m")
    assert labels is not None
    if operation == "chat":
        events = [*events, b"data: [DONE]\n\n"]

    async def run() -> list[bytes]:
        sent = []
        for i, event in enumerate(events):
            if isinstance(event, bytes):
                block = event
            elif operation == "responses":
                block = (b"event: x\ndata: "
                         + json.dumps({**event, "sequence_number": i}).encode() + b"\n\n")
            else:
                block = b"data: " + json.dumps(event).encode() + b"\n\n"
            tap.feed(block)
            sent.append(await labels.place(block))
        return sent

    blocks = SSESplitter().feed(b"".join(asyncio.run(run())))
    assert operation != "chat" or blocks[-1] == b"data: [DONE]\n\n"
    decoded = [json.loads(event_data(b)) for b in blocks if event_data(b).startswith(b"{")]
    return decoded, labels.received(tap.texts())


def _wrapped(text: str) -> str:
    """The visible text before the one wrapper `text` ends with."""
    found = c2pa_text.find_wrapper_info(text)
    assert found is not None and found[1] + found[2] == len(text.encode()), repr(text[:40])
    return c2pa_text.extract_manifest(text)[1]


def test_every_choice_of_a_chat_stream_gets_its_manifest():
    """Two interleaved choices, one whose finishing chunk carries text (the manifest goes
    after it, so it ends the text), and a notice at the end of the first."""
    def chunk(index: int, text: str | None = None, finish: str | None = None) -> dict:
        return {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [
            {"index": index, "delta": {"content": text} if text else {},
             "finish_reason": finish}]}

    events, hashed = _through("chat", [chunk(1, "B"), chunk(0, "A"), chunk(0, finish="stop"),
                                       chunk(1, "C", finish="stop")], notice="!")
    texts: dict[int, str] = {}
    for event in events:
        for choice in event["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (
                choice["delta"].get("content") or "")
    assert (_wrapped(texts[0]), _wrapped(texts[1])) == ("A!", "BC")
    assert hashed == texts[0] + texts[1]


def test_a_chat_stream_with_no_finish_reason_still_gets_its_notice_and_manifest():
    """Some OpenAI-compatible servers end with [DONE] alone: the notice (at the end) and the
    manifest go in before it."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m",
             "choices": [{"index": 0, "delta": {"content": "A"}, "finish_reason": None}]}
    events, hashed = _through("chat", [chunk], notice="!")
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert _wrapped(text) == "A!" and hashed == text


def test_each_text_block_of_a_message_stream_gets_its_manifest():
    events, hashed = _through("messages", [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                       "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                              "text": "one"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "t", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                              "partial_json": "{}"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "text",
                                                                       "text": ""}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta",
                                                              "text": "two"}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_stop"}])
    blocks: dict[int, str] = {}
    for event in events:
        if event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta":
            blocks[event["index"]] = blocks.get(event["index"], "") + event["delta"]["text"]
    assert [_wrapped(blocks[0]), _wrapped(blocks[2])] == ["one", "two"]
    assert hashed == blocks[0] + "{}" + blocks[2]
    stops = [i for i, e in enumerate(events) if e["type"] == "content_block_stop"]
    assert all(events[i - 1]["type"] == "content_block_delta" for i in stops)


def test_each_output_text_of_a_responses_stream_gets_its_manifest():
    """Two parts: each `done`, the item's `done` and the final response repeat each part's
    text with its manifest, and the numbers count up by one."""
    parts = [{"type": "output_text", "text": t, "annotations": []} for t in ("one", "two")]
    item = {"id": "m", "type": "message", "content": parts}
    events, hashed = _through("responses", [
        {"type": "response.created", "response": {"id": "r", "output": []}},
        *(event for i, t in enumerate(("one", "two")) for event in (
            {"type": "response.output_text.delta", "item_id": "m", "output_index": 0,
             "content_index": i, "delta": t},
            {"type": "response.output_text.done", "item_id": "m", "output_index": 0,
             "content_index": i, "text": t})),
        {"type": "response.content_part.done", "item_id": "m", "output_index": 0,
         "content_index": 1, "part": parts[1]},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": {"id": "r", "output": [item]}}])
    deltas: dict[int, str] = {}
    for event in events:
        if event["type"] == "response.output_text.delta":
            deltas[event["content_index"]] = deltas.get(event["content_index"], "") \
                + event["delta"]
    assert [_wrapped(deltas[0]), _wrapped(deltas[1])] == ["one", "two"]
    assert hashed == deltas[0] + deltas[1]
    assert [e["text"] for e in events if e["type"] == "response.output_text.done"] == [
        deltas[0], deltas[1]]
    assert next(e for e in events if e["type"] == "response.content_part.done")[
        "part"]["text"] == deltas[1]
    for final in (events[-2]["item"], events[-1]["response"]["output"][0]):
        assert [p["text"] for p in final["content"]] == [deltas[0], deltas[1]]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
