"""Audit of C2PA text manifests and of the Responses-stream notice, against oracles
independent of the product's code: c2pa-text's validators, the C2PA SDK's reader, hashlib,
cryptography.x509, openssl, and an SSE parser written here."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import unicodedata
from typing import Any

import c2pa
import c2pa_text
import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from conftest import Gateway, start_gateway, stop_gateway, wait_for_event
from processes import cli
from scripted_upstream import Script
from test_attack_batch import chat_toml

TRAINED_MODEL = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
NOTICE, ENDING = "[AI] ", " [AI-generated]"


@pytest.fixture(scope="module")
def gw(scripted, tmp_path_factory):
    """app "sign": a manifest alone; app "start"/"end": a visible notice only."""
    labels = ('[[labels]]\napp = "sign"\ntext = ""\nc2pa = true\n'
              f'[[labels]]\napp = "start"\ntext = "{NOTICE}"\n'
              f'[[labels]]\napp = "end"\ntext = "{ENDING}"\nposition = "end"\n')
    g = start_gateway(tmp_path_factory.mktemp("audit-c2pa"),
                      'producer = "Example Org"\n' + chat_toml(scripted) + labels)
    yield g
    stop_gateway(g)


def _chat(gw: Gateway, scripted, tag: str, text: str, model: str = "gpt-4o-mini-2024-07-18"
          ) -> tuple[str, dict[str, Any], str]:
    """The client's text of a scripted whole chat answer for app "sign", its event, its id."""
    scripted.scripts[tag] = Script(body={
        "id": "x", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}})
    r = _ask(gw, tag)
    event_id = r.headers["x-tokometer-event-id"]
    return r.json()["choices"][0]["message"]["content"], wait_for_event(gw, event_id), event_id


def _ask(gw: Gateway, tag: str) -> httpx.Response:
    """A chat request of app "sign" that the scripted upstream answers with script `tag`."""
    key = gw.new_key(tenant="acme", app="sign")[0]
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=60,
                   headers={"authorization": f"Bearer {key}"},
                   json={"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                         "user": tag})
    assert r.status_code == 200, r.text
    return r


def _root(gw: Gateway) -> str:
    done = cli(gw.config, "provenance", "c2pa-chain", "--root")
    assert done.returncode == 0, done.stderr
    return done.stdout


def _read(text: str, root: str) -> tuple[dict[str, Any], dict[str, Any]]:
    manifest, _, _ = c2pa_text.find_wrapper_info(text)
    context = c2pa.Context.from_dict({"trust": {"trust_anchors": root},
                                      "verify": {"verify_trust": True}})
    reader = c2pa.Reader("application/c2pa", io.BytesIO(text.encode()), manifest_data=manifest,
                         context=context)
    detail = json.loads(reader.detailed_json())
    return json.loads(reader.json()), detail["manifests"][detail["active_manifest"]]


TEXTS = {
    "ascii": "Hello, world.",
    "nfd": "Cafe\u0301 nai\u0308ve \u1100\u1161 A\u030a",  # decomposed: NFC changes it
    "emoji": "I \u2764\ufe0f \U0001F469\u200d\U0001F469\u200d\U0001F467 \U0001F1EB\U0001F1F7",
    "cjk": "你好世界，こんにちは、안녕하세요。",
    "long": ("Ünïcödé text, 漢字 and 🙂. " * 12000),  # ~400 KB of UTF-8
}


@pytest.mark.parametrize("kind", list(TEXTS))
def test_a_signed_chat_answer_checks_out_with_independent_tools(gw, scripted, kind):
    provider_text = TEXTS[kind]
    text, event, event_id = _chat(gw, scripted, f"c2pa-{kind}", provider_text)
    root = _root(gw)
    nfc = unicodedata.normalize("NFC", provider_text)
    # the wrapper: c2pa-text finds exactly one, at the end, and its validators pass
    manifest, start, length = c2pa_text.find_wrapper_info(text)
    assert text.startswith(nfc) and start == len(nfc.encode())
    assert start + length == len(text.encode())
    assert c2pa_text.validate_text(text).valid
    assert c2pa_text.validate_manifest(manifest).valid
    assert c2pa_text.extract_manifest(text) == (manifest, nfc)
    # the hard binding: SHA-256 of the NFC text's UTF-8, exactly the wrapper excluded
    report, active = _read(text, root)
    binding = active["assertion_store"]["c2pa.hash.data"]
    assert binding["alg"] == "sha256"
    assert [(e["start"], e["length"]) for e in binding["exclusions"]] == [(start, length)]
    whole = text.encode()
    outside = whole[:start] + whole[start + length:]
    assert base64.b64decode(binding["hash"]) == hashlib.sha256(outside).digest() \
        == hashlib.sha256(nfc.encode()).digest()
    codes = {s["code"] for s in report["validation_results"]["activeManifest"]["success"]}
    assert {"signingCredential.trusted", "claimSignature.validated",
            "assertion.dataHash.match"} <= codes
    # the claims are the ledger's event
    store = active["assertion_store"]
    assert store["org.tokometer.answer"] == {"event_id": event_id, "producer": "Example Org"}
    assert event["id"] == event_id
    action, = store["c2pa.actions.v2"]["actions"]
    assert action["action"] == "c2pa.created"
    assert action["digitalSourceType"] == TRAINED_MODEL
    assert action["softwareAgent"]["name"] == event["model"]
    assert event["output_sha256"] == hashlib.sha256(whole).hexdigest()


def test_an_answer_quoting_a_signed_answer_carries_exactly_one_wrapper(gw, scripted):
    """(Mended.) A model that repeats an earlier signed answer (it is in the conversation
    the client sends back) gives a text that already holds a wrapper: Appendix A.8 (and
    c2pa-text) require exactly one wrapper per text; the old one goes, ours binds the rest."""
    earlier, _, _ = _chat(gw, scripted, "c2pa-earlier", "The capital of France is Paris.")
    quoted = f"As I said before: {earlier} Anything else?"
    text, _, _ = _chat(gw, scripted, "c2pa-quoting", quoted)
    result = c2pa_text.validate_text(text)
    assert result.valid, [i.code for i in result.issues]
    c2pa_text.find_wrapper_info(text)  # raises ValueError on two wrappers


def test_the_chain_is_deterministic_and_well_formed(gw, tmp_path):
    chains = [cli(gw.config, "provenance", "c2pa-chain") for _ in range(2)]
    assert all(c.returncode == 0 for c in chains)
    assert chains[0].stdout == chains[1].stdout
    from tokometer.provenance.manifests import certificate_chain

    assert certificate_chain(bytes(32), "P") == certificate_chain(bytes(32), "P")
    leaf, root = x509.load_pem_x509_certificates(chains[0].stdout.encode())
    assert chains[0].stdout.endswith(_root(gw))
    # the leaf's key is the ledger's key as `tokometer ledger pubkey` prints it
    pub = cli(gw.config, "ledger", "pubkey")
    raw = leaf.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)
    assert base64.b64encode(raw).decode() == pub.stdout.strip()
    # the root: a self-signed CA that signs certificates only
    assert root.issuer == root.subject == leaf.issuer and root.version == x509.Version.v3
    root.verify_directly_issued_by(root)
    leaf.verify_directly_issued_by(root)
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign \
        and not ku.value.digital_signature
    # the leaf: not a CA, digitalSignature, an EKU C2PA accepts, key ids linked
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in eku
    assert ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert root.not_valid_before_utc <= leaf.not_valid_before_utc
    assert leaf.not_valid_after_utc <= root.not_valid_after_utc
    assert 0 < leaf.serial_number < 2**159 and leaf.serial_number != root.serial_number
    (tmp_path / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    done = subprocess.run(["openssl", "verify", "-x509_strict", "-purpose", "smimesign",
                           "-CAfile", str(tmp_path / "root.pem"), str(tmp_path / "leaf.pem")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr


# ---- Responses-API streams with a notice --------------------------------------------------

def _responses_events(parts: list[list[str]]) -> list[bytes]:
    """A realistic Responses stream: one message item with one output_text part per entry of
    `parts` (each a list of deltas), every event numbered from 0."""
    events: list[dict[str, Any]] = []
    item_id = "msg_1"

    def resp(status: str, output: list[Any]) -> dict[str, Any]:
        return {"id": "resp_1", "object": "response", "status": status, "model": "gpt-4.1",
                "output": output, "usage": None if status != "completed" else {
                    "input_tokens": 5, "output_tokens": 9, "total_tokens": 14,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens_details": {"reasoning_tokens": 0}}}

    events.append({"type": "response.created", "response": resp("in_progress", [])})
    events.append({"type": "response.in_progress", "response": resp("in_progress", [])})
    item = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant",
            "content": []}
    events.append({"type": "response.output_item.added", "output_index": 0, "item": item})
    done_parts = []
    for index, deltas in enumerate(parts):
        events.append({"type": "response.content_part.added", "item_id": item_id,
                       "output_index": 0, "content_index": index,
                       "part": {"type": "output_text", "text": "", "annotations": []}})
        for d in deltas:
            events.append({"type": "response.output_text.delta", "item_id": item_id,
                           "output_index": 0, "content_index": index, "delta": d,
                           "logprobs": []})
        full = "".join(deltas)
        events.append({"type": "response.output_text.done", "item_id": item_id,
                       "output_index": 0, "content_index": index, "text": full,
                       "logprobs": []})
        part = {"type": "output_text", "text": full, "annotations": []}
        done_parts.append(part)
        events.append({"type": "response.content_part.done", "item_id": item_id,
                       "output_index": 0, "content_index": index, "part": part})
    done_item = {**item, "status": "completed", "content": done_parts}
    events.append({"type": "response.output_item.done", "output_index": 0, "item": done_item})
    events.append({"type": "response.completed", "response": resp("completed", [done_item])})
    return [b"event: " + e["type"].encode() + b"\ndata: "
            + orjson.dumps({**e, "sequence_number": i}) for i, e in enumerate(events)]


def _sse(raw: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    """(event name, JSON data) of each SSE event, parsed per the WHATWG rules."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n\n"):
        name, data = None, []
        for line in block.split(b"\n"):
            if not line or line.startswith(b":"):
                continue
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"event":
                name = value.decode()
            elif field == b"data":
                data.append(value)
        if data:
            payload = b"\n".join(data)
            if payload.startswith(b"{"):
                out.append((name, json.loads(payload)))
    return out


STREAM_PARTS = {
    "one": [["Bonjour ", "le ", "monde ", "😀", "。"]],
    "two": [["Első ", "rész. "], ["第二", "部分 ", "e\u0301"]],
    "empty-first": [[], ["Second ", "part"]],
}


@pytest.mark.parametrize("app", ["start", "end"])
@pytest.mark.parametrize("shape", list(STREAM_PARTS))
def test_a_responses_stream_rebuilds_to_the_hashed_text(gw, scripted, app, shape):
    parts = STREAM_PARTS[shape]
    tag = f"rs-{app}-{shape}"
    scripted.scripts[tag] = Script(events=_responses_events(parts))
    key = gw.new_key(tenant="acme", app=app)[0]
    with httpx.stream("POST", gw.url + "/v1/responses", timeout=60,
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "chat", "input": "hi", "user": tag, "stream": True}) as r:
        assert r.status_code == 200
        raw = b"".join(r.iter_bytes())
        event = wait_for_event(gw, r.headers["x-tokometer-event-id"])
    events = _sse(raw)
    for name, data in events:
        assert name == data["type"]
    numbers = [data["sequence_number"] for _, data in events]
    assert numbers == list(range(len(events)))
    # the client's text, from the deltas, part by part
    by_part: dict[int, str] = {}
    for _, data in events:
        if data["type"] == "response.output_text.delta":
            by_part[data["content_index"]] = by_part.get(data["content_index"], "") + data["delta"]
    done = {d["content_index"]: d["text"] for _, d in events
            if d["type"] == "response.output_text.done"}
    assert done == by_part | {i: "" for i in done if i not in by_part}
    completed = [d for _, d in events if d["type"] == "response.completed"]
    assert len(completed) == 1
    final = [p["text"] for item in completed[0]["response"]["output"]
             for p in item["content"] if p["type"] == "output_text"]
    assert final == [done[i] for i in sorted(done)]
    client_text = "".join(final)
    provider_text = "".join("".join(p) for p in parts)
    assert NOTICE in client_text or ENDING in client_text
    assert client_text.replace(NOTICE if app == "start" else ENDING, "", 1) == provider_text
    assert event["output_sha256"] == hashlib.sha256(client_text.encode()).hexdigest()


def test_a_text_with_a_lone_surrogate_gets_no_manifest(gw, scripted):
    """(Mended.) A provider's JSON may escape a lone surrogate ("\\ud800"); the gateway passes
    it on. A manifest would bind bytes that are no UTF-8 (a browser's TextEncoder gives
    U+FFFD for it; Python's str.encode refuses), which no verifier reproduces: no manifest."""
    tag = "c2pa-surrogate"
    scripted.scripts[tag] = Script(raw=(
        b'{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":'
        b'{"role":"assistant","content":"bad \\ud800 text"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}'))
    text = json.loads(_ask(gw, tag).content)["choices"][0]["message"]["content"]
    assert text == "bad \ud800 text"  # as the provider sent it, with no wrapper
