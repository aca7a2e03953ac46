"""The provenance of generated text, through the real SDKs, whole and streamed, in both wire
formats: each event's `output_sha256` is of the text the client received, and every answer
carries its implicit label (GB 45438's AIGC metadata)."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import random

import anthropic
import httpx
import openai
import pytest

from conftest import Gateway, start_gateway, stop_gateway, wait_for_event
from processes import cli
from scripted_upstream import Script
from test_attack_batch import chat_toml
from tokometer.config import load
from tokometer.errors import ConfigError
from tokometer.gateway.labels import Labels
from tokometer.ledger import open_store


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("stream", [False, True])
def test_an_openai_answer_is_hashed_as_the_client_received_it(gateway: Gateway, stream):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=stream)
    if stream:
        received = "".join(chunk.choices[0].delta.content or ""
                           for chunk in raw.parse() if chunk.choices)
    else:
        received = raw.parse().choices[0].message.content or ""
    assert received
    event = wait_for_event(gateway, raw.headers["x-tokometer-event-id"])
    assert event["output_sha256"] == sha256(received)


@pytest.mark.parametrize("stream", [False, True])
def test_an_anthropic_answer_is_hashed_as_the_client_received_it(gateway: Gateway, stream):
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key,
                                 max_retries=0)
    if stream:
        with client.messages.stream(model="claude-sonnet-5", max_tokens=64,
                                    messages=[{"role": "user", "content": "hi"}]) as s:
            received = "".join(s.text_stream)
            event_id = s.response.headers["x-tokometer-event-id"]
    else:
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
        received = "".join(b.text for b in raw.parse().content if b.type == "text")
        event_id = raw.headers["x-tokometer-event-id"]
    assert received
    assert wait_for_event(gateway, event_id)["output_sha256"] == sha256(received)


def test_no_answer_has_no_hash(gateway: Gateway):
    """A provider's error produced no text: null, not the hash of nothing."""
    failed = gateway.request("POST", "/v1/chat/completions",
                             {"model": "fail-400", "messages": [{"role": "user", "content": "x"}]})
    assert failed.status_code == 400
    assert gateway.event(failed.headers["x-tokometer-event-id"])["output_sha256"] is None


def aigc(header: str, event_id: str) -> dict:
    """A label as GB 45438 names its members, checked for the answer it labels."""
    label = json.loads(header)
    assert set(label) == {"Label", "ContentProducer", "ProduceID", "ReservedCode1",
                          "ContentPropagator", "PropagateID", "ReservedCode2"}
    assert (label["Label"], label["ProduceID"]) == ("1", event_id)
    return label


@pytest.mark.parametrize("stream", [False, True])
def test_every_openai_answer_carries_its_implicit_label(gateway: Gateway, stream):
    """A header on every answer; in a whole one also an `AIGC` member the SDK keeps, with
    the hash of the text the client received."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=stream)
    event_id = raw.headers["x-tokometer-event-id"]
    label = aigc(raw.headers["aigc"], event_id)
    if stream:
        assert all(c.model_extra.get("AIGC") is None for c in raw.parse())
        assert label["ReservedCode1"] == ""  # the header left before the text
    else:
        answer = raw.parse()
        assert answer.model_extra["AIGC"] == label
        text = answer.choices[0].message.content or ""
        assert label["ReservedCode1"] == "sha256:" + sha256(text)
        assert wait_for_event(gateway, event_id)["output_sha256"] == sha256(text)


def test_an_anthropic_answer_carries_its_implicit_label(gateway: Gateway):
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    label = aigc(raw.headers["aigc"], raw.headers["x-tokometer-event-id"])
    message = raw.parse()
    assert message.model_extra["AIGC"] == label
    assert message.content[0].type == "text"


def test_an_error_is_not_labelled(gateway: Gateway):
    failed = gateway.request("POST", "/v1/chat/completions",
                             {"model": "fail-400", "messages": [{"role": "user", "content": "x"}]})
    assert failed.status_code == 400 and "aigc" not in failed.headers
    assert "AIGC" not in failed.json()


def test_the_label_names_the_producer_in_plain_ascii_json():
    labels = Labels('Acme 智能 "AI" 😀')
    header = labels.label("0193a4c2-7b5e", "ab" * 32)
    assert header.isascii()
    assert json.loads(header)["ContentProducer"] == 'Acme 智能 "AI" 😀'
    assert labels.into_body(b'{"a": 1}\n', {"a": 1}, header) == \
        b'{"a": 1,"AIGC":' + header + b"}"
    assert labels.into_body(b" {} ", {}, header) == b' {"AIGC":' + header + b"}"
    theirs = b'{"AIGC": {"Label": "1", "ContentProducer": "DeepSeek"}}'
    assert labels.into_body(theirs, json.loads(theirs), header) == theirs  # theirs stands


@pytest.mark.parametrize("producer", ["x" * 257, "tab\tin", "line\nbreak"])
def test_a_bad_producer_is_a_config_error(tmp_path, producer):
    path = tmp_path / "tokometer.toml"
    path.write_text(f"[server]\nproducer = {json.dumps(producer)}\n")
    with pytest.raises(ConfigError, match=r"server\.producer: expected a name or code"):
        load(path)


def paragraphs(n: int) -> list[str]:
    """Distinct paragraphs of at least 40 words from the standard library's docstrings."""
    seen, out = set(), []
    for name in ("argparse", "collections", "decimal", "email.message", "http.client", "json",
                 "pathlib", "subprocess", "tarfile", "threading", "unittest", "urllib.request"):
        module = importlib.import_module(name)
        for _, obj in sorted(inspect.getmembers(module)):
            for para in (inspect.getdoc(obj) or "").split("\n\n"):
                text = " ".join(para.split())
                key = " ".join(text.split()[:8])
                if len(text.split()) >= 40 and key not in seen:
                    seen.add(key)
                    out.append(text)
    assert len(out) >= n
    return out[:n]


def chat_answer(text: str, completion_tokens: int) -> dict:
    """A provider's whole chat answer of `text`, reporting its usage."""
    return {"id": "x", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": completion_tokens,
                      "total_tokens": 9 + completion_tokens}}


def edited(text: str, share: float, seed: int) -> str:
    """`text` with `share` of its words replaced by others (deterministic)."""
    rnd, ws = random.Random(seed), text.split()
    for i in rnd.sample(range(len(ws)), int(len(ws) * share)):
        ws[i] = rnd.choice(["alpha", "beta", "gamma", "delta", "omega", "kappa"])
    return " ".join(ws)


def test_answers_are_registered_and_found_in_tiers_with_a_receipt(scripted, tmp_path,
                                                                   store_location):
    """On both stores: 20 distinct answers go through the gateway; the API and the CLI find
    one exactly, an edited copy strongly, an excerpt at least partially, an unrelated text
    not at all, only within the asking key's tenant; the receipt verifies offline and its
    event's fingerprint_sha256 is the hash of the text digest and fingerprints the registry
    keeps."""
    store = None if isinstance(store_location, type(tmp_path)) else store_location
    texts = paragraphs(24)
    answers, unrelated = texts[:20], texts[20:]
    gw = start_gateway(tmp_path / "gw", chat_toml(scripted, 'admin_token_env = "TKM_A"\n'),
                       env={"TKM_A": "admin"}, store=store)
    try:
        ids = []
        for i, text in enumerate(answers):
            tag = f"prov-{store_location!s}-{i}"[-60:]
            scripted.scripts[tag] = Script(body=chat_answer(text, 80))
            r = gw.chat("chat", user=tag)
            assert r.status_code == 200
            ids.append(r.headers["x-tokometer-event-id"])

        def check(text: str, key: str = "admin") -> dict:
            r = gw.request("POST", "/v1/provenance/check", {"text": text}, key=key)
            assert r.status_code == 200, r.text
            return r.json()

        exact = check("  " + answers[3].upper() + " !")
        strong = check(edited(answers[5], 0.1, seed=1))
        excerpt_words = answers[7].split()
        excerpt = check(" ".join(excerpt_words[5:5 + max(12, len(excerpt_words) * 3 // 10)]))
        nothing = [check(text)["tier"] for text in unrelated]
        other_key, _ = gw.new_key(tenant="someone-else")
        elsewhere = check(answers[3], key=other_key)
        own = check(answers[3], key=gw.key)
        text_file = tmp_path / "answer.txt"
        text_file.write_text(answers[3])
        by_cli = cli(gw.config, "provenance", "check", str(text_file), "--format", "json")
        pubkey = cli(gw.config, "ledger", "pubkey").stdout.strip()
        receipt_file = tmp_path / "receipt.json"
        receipt_file.write_text(json.dumps(exact["receipt"]))
        verified = cli(gw.config, "verify-receipt", str(receipt_file), "--pubkey", pubkey)
        with open_store(store or gw.store) as opened:
            digest, blob = opened.execute("SELECT text_sha256, fingerprints FROM provenance "
                                          "WHERE event_id = ?", (ids[3],)).fetchone()
    finally:
        stop_gateway(gw)
    assert (exact["tier"], exact["matches"][0]["event_id"]) == ("exact", ids[3])
    assert set(exact["matches"][0]) == {"event_id", "time", "model", "provider", "tenant",
                                        "share"}
    assert (strong["tier"], strong["matches"][0]["event_id"]) == ("strong", ids[5])
    assert excerpt["tier"] in ("strong", "partial") and excerpt["matches"][0]["event_id"] == \
        ids[7]
    assert nothing == ["none"] * len(unrelated)
    assert elsewhere == {"tier": "none", "matches": [], "receipt": None}
    assert own["tier"] == "exact"
    assert by_cli.returncode == 0 and json.loads(by_cli.stdout)["tier"] == "exact"
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert exact["receipt"]["event"]["fingerprint_sha256"] == hashlib.sha256(
        bytes.fromhex(digest) + bytes(blob)).hexdigest()
    assert exact["receipt"]["event"]["id"] == ids[3]


def test_a_check_needs_a_key_and_a_text(gateway: Gateway):
    assert gateway.request("POST", "/v1/provenance/check", {"text": "x"},
                           key="wrong").status_code == 401
    for body in ({}, {"text": ""}, {"text": 5}, ["x"]):
        r = gateway.request("POST", "/v1/provenance/check", body)
        assert r.status_code == 400, (body, r.text)


NOTICE, ENDING = "【AI生成】", " (AI-generated)"


@pytest.fixture(scope="module")
def labelled(upstream, tmp_path_factory):
    """A gateway whose keys of app "ends" get a notice at the end of their answers, and every
    other key of tenant "acme" one at the start."""
    from conftest import FAKE_KEYS, MODELS_TOML, providers_toml

    labels = (f'[[labels]]\napp = "ends"\ntext = "{ENDING}"\nposition = "end"\n'
              f'[[labels]]\ntenant = "acme"\ntext = "{NOTICE}"\n')
    gw = start_gateway(tmp_path_factory.mktemp("labelled"),
                       f"{providers_toml(upstream)}\n{MODELS_TOML}\n{labels}", env=FAKE_KEYS)
    yield gw
    stop_gateway(gw)


def openai_text(gw: Gateway, key: str, stream: bool, model: str = "gpt-4o-mini"
                ) -> tuple[str, dict]:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=stream)
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        text = raw.parse().choices[0].message.content or ""
    return text, wait_for_event(gw, raw.headers["x-tokometer-event-id"])


@pytest.mark.parametrize("stream", [False, True])
def test_an_explicit_label_reaches_openai_clients_whole_and_streamed(labelled, stream):
    """The notice at the start (the tenant's) or the end (the app's), through the SDK; the
    hash is of what the client got; the reading is the provider's, as without a label."""
    plain_key = labelled.new_key(tenant="nobody")[0]
    ends_key = labelled.new_key(tenant="acme", app="ends")[0]
    text, event = openai_text(labelled, labelled.key, stream)
    ending, ending_event = openai_text(labelled, ends_key, stream)
    bare, bare_event = openai_text(labelled, plain_key, stream)
    assert text == NOTICE + bare and ending == bare + ENDING
    for received, e in ((text, event), (ending, ending_event), (bare, bare_event)):
        assert e["output_sha256"] == sha256(received)
        assert (e["input_tokens"], e["output_tokens"]) == (bare_event["input_tokens"],
                                                           bare_event["output_tokens"])


@pytest.mark.parametrize("stream", [False, True])
def test_an_explicit_label_reaches_legacy_completion_clients(labelled, stream):
    """The legacy completions API, whole and streamed: the notice in the text the SDK gives,
    the hash of that text."""
    ends_key = labelled.new_key(tenant="acme", app="ends")[0]
    plain_key = labelled.new_key(tenant="nobody")[0]

    def ask(key: str) -> tuple[str, dict]:
        client = openai.OpenAI(base_url=labelled.url + "/v1", api_key=key, max_retries=0)
        raw = client.completions.with_raw_response.create(
            model="gpt-3.5-turbo-instruct", prompt="hi", max_tokens=16, stream=stream)
        if stream:
            text = "".join(c.choices[0].text for c in raw.parse() if c.choices)
        else:
            text = raw.parse().choices[0].text
        return text, wait_for_event(labelled, raw.headers["x-tokometer-event-id"])

    (start, start_event), (end, end_event), (bare, _) = (
        ask(labelled.key), ask(ends_key), ask(plain_key))
    assert bare and (start, end) == (NOTICE + bare, bare + ENDING)
    for received, e in ((start, start_event), (end, end_event)):
        assert e["output_sha256"] == sha256(received)


def test_a_labelled_answer_is_recounted_without_its_notice(labelled):
    """A provider that reports no usage: the recount is of what the model wrote, not of the
    notice the gateway added."""
    plain_key = labelled.new_key(tenant="nobody")[0]
    for stream in (False, True):
        text, event = openai_text(labelled, labelled.key, stream, model="no-usage")
        bare, bare_event = openai_text(labelled, plain_key, stream, model="no-usage")
        assert text == NOTICE + bare
        assert event["output_tokens"] == bare_event["output_tokens"] > 0
        assert event["usage_source"] == bare_event["usage_source"] == "counted"


@pytest.mark.parametrize("stream", [False, True])
def test_an_explicit_label_reaches_anthropic_clients_whole_and_streamed(labelled, stream):
    ends_key = labelled.new_key(tenant="acme", app="ends")[0]
    plain_key = labelled.new_key(tenant="nobody")[0]

    def ask(key: str) -> tuple[str, dict]:
        client = anthropic.Anthropic(base_url=labelled.url, api_key=key, max_retries=0)
        kw = {"model": "claude-sonnet-5", "max_tokens": 64,
              "messages": [{"role": "user", "content": "hi"}]}
        if stream:
            with client.messages.stream(**kw) as s:
                text = "".join(s.text_stream)
                event_id = s.response.headers["x-tokometer-event-id"]
                final = s.get_final_message()
            assert "".join(b.text for b in final.content if b.type == "text") == text
        else:
            raw = client.messages.with_raw_response.create(**kw)
            text = "".join(b.text for b in raw.parse().content if b.type == "text")
            event_id = raw.headers["x-tokometer-event-id"]
        return text, wait_for_event(labelled, event_id)

    (start, start_event), (end, _), (bare, _) = ask(labelled.key), ask(ends_key), ask(plain_key)
    assert (start, end) == (NOTICE + bare, bare + ENDING)
    assert start_event["output_sha256"] == sha256(start)


@pytest.mark.parametrize(("table", "message"), [
    ('[[labels]]\ntenant = "a"\nposition = "middle"', r"labels\[0\]\.position: expected one of"),
    ('[[labels]]\ntenant = "a"\ntext = ""', r"labels\[0\]\.text: expected a notice of 1 to 200"),
    ('[[labels]]\ntext = "x"', r"exactly one of tenant, app, key_id"),
    ('[[labels]]\napp = "a"\ncolour = "red"', r"labels\[0\]\.colour: unknown key"),
    ('[[labels]]\ntenant = "a"\nc2pa = "yes"', r"labels\[0\]\.c2pa: expected true or false"),
])
def test_bad_labels_are_config_errors(tmp_path, table, message):
    path = tmp_path / "tokometer.toml"
    path.write_text(table + "\n")
    with pytest.raises(ConfigError, match=message):
        load(path)


def test_embeddings_are_not_labelled(gateway: Gateway):
    """Vectors are not generated text: no label, no hash, nothing registered."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small",
                                                     input="hello")
    assert "aigc" not in raw.headers and raw.parse().model_extra.get("AIGC") is None
    event = gateway.event(raw.headers["x-tokometer-event-id"])
    assert event["output_sha256"] is None and event["fingerprint_sha256"] is None


def test_provenance_can_be_switched_off(upstream, tmp_path):
    """`provenance = false`: answers are hashed and labelled but not registered (no mark in
    the leaf, no row), and the log audits clean; a flag that is no boolean is refused."""
    from conftest import FAKE_KEYS, MODELS_TOML, providers_toml

    gw = start_gateway(tmp_path / "gw", f"provenance = false\n{providers_toml(upstream)}\n"
                       f"{MODELS_TOML}", env=FAKE_KEYS)
    try:
        text, event = openai_text(gw, gw.key, stream=False)
        audit = cli(gw.config, "ledger", "audit")
        with open_store(gw.store) as store:
            rows = store.execute("SELECT COUNT(*) FROM provenance").fetchone()[0]
    finally:
        stop_gateway(gw)
    assert event["output_sha256"] == sha256(text) and event["fingerprint_sha256"] is None
    assert rows == 0 and audit.returncode == 0, audit.stdout
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nprovenance = "no"\n')
    with pytest.raises(ConfigError, match=r"server\.provenance: expected true or false"):
        load(path)


@pytest.mark.parametrize("stream", [False, True])
def test_an_explicit_label_reaches_responses_clients_whole_and_streamed(labelled, stream):
    """The Responses API: the SDK's streamed text, its final response and the event's hash
    all hold the notice; the stream's sequence numbers still count up one by one."""
    ends_key = labelled.new_key(tenant="acme", app="ends")[0]
    plain_key = labelled.new_key(tenant="nobody")[0]

    def ask(key: str) -> tuple[str, dict]:
        ids: list[str] = []  # the event id of each answer, from its headers
        client = openai.OpenAI(
            base_url=labelled.url + "/v1", api_key=key, max_retries=0,
            http_client=httpx.Client(event_hooks={"response": [
                lambda r: ids.append(r.headers["x-tokometer-event-id"])]}))
        if not stream:
            text = client.responses.create(model="gpt-4.1", input="hi").output_text
            return text, wait_for_event(labelled, ids[0])
        with client.responses.stream(model="gpt-4.1", input="hi") as s:
            events = list(s)
            final = s.get_final_response()
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        done = [e.text for e in events if e.type == "response.output_text.done"]
        assert done == [text] == [final.output_text]
        numbers = [e.sequence_number for e in events]
        assert numbers == list(range(len(events)))
        return text, wait_for_event(labelled, ids[0])

    (start, start_event), (end, end_event), (bare, bare_event) = (
        ask(labelled.key), ask(ends_key), ask(plain_key))
    assert bare and (start, end) == (NOTICE + bare, bare + ENDING)
    for received, e in ((start, start_event), (end, end_event), (bare, bare_event)):
        assert e["output_sha256"] == sha256(received)
        assert e["output_tokens"] == bare_event["output_tokens"]


def _responses_stream(*events: dict) -> list[bytes]:
    return [b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(
        {**e, "sequence_number": i}).encode() + b"\n\n" for i, e in enumerate(events)]


@pytest.mark.parametrize("position", ["start", "end"])
def test_a_streamed_notice_lands_where_the_hash_says(position):
    """Reasoning before the answer, and an answer in two text parts: the text the client
    rebuilds from what was sent is the text the event hashes, and the final response holds
    the same notice in the same part."""
    from tokometer.config import Notice, Scope
    from tokometer.gateway.stream_labels import StreamNotice
    from tokometer.usage.stream import StreamTap, event_data
    from tokometer.usage.text import body_text, chunk_texts

    def delta(kind: str, item: str, index: int, text: str) -> dict:
        return {"type": f"response.{kind}.delta", "item_id": item, "output_index": 0,
                "content_index": index, "delta": text}

    parts = [{"type": "output_text", "text": "one ", "annotations": []},
             {"type": "output_text", "text": "two", "annotations": []}]
    message = {"id": "m", "type": "message", "role": "assistant", "content": parts}
    stream = [*_responses_stream(
        {"type": "response.created", "response": {"id": "r", "output": []}},
        delta("reasoning_summary_text", "rs", 0, "thinking"),
        delta("output_text", "m", 0, "one "),
        {"type": "response.output_text.done", "item_id": "m", "content_index": 0,
         "text": "one "},
        delta("output_text", "m", 1, "two"),
        {"type": "response.output_text.done", "item_id": "m", "content_index": 1,
         "text": "two"},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": "response.completed", "response": {"id": "r", "output": [message]}},
        {"type": "response.unknown", "x": "not JSON after all"}), b"data: {oops\n\n"]
    notice = Notice(Scope("tenant", "t"), "[AI] ", position)
    tap = StreamTap("responses")
    marker = StreamNotice("responses", notice, tap.texts)
    sent = []
    for block in stream:
        tap.feed(block)
        sent.append(block if not marker.active else marker.place(block, event_data(block)))
    events = [json.loads(event_data(b)) for b in b"".join(sent).split(b"\n\n")[:-2]]
    client_text = "".join(t for e in events for _, t in chunk_texts("responses", e))
    assert marker.received(tap.texts()) == client_text
    assert client_text == ("thinking[AI] one two" if position == "start"
                           else "thinkingone [AI] two")
    final = next(e for e in events if e["type"] == "response.completed")["response"]
    assert body_text("responses", final) == client_text.removeprefix("thinking")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert sent[-1] == stream[-1]  # a broken event passes as it came
