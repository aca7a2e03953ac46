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

NOTICE = "[AI] "
TRAINED_MODEL = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


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
def test_the_last_text_of_a_message_or_responses_answer_carries_the_manifest(signing, root,
                                                                             api):
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
    assert_valid(texts[-1], root, event_id, model)
    assert wait_for_event(signing, event_id)["output_sha256"] == hashlib.sha256(
        "".join(texts).encode()).hexdigest()


def test_a_stream_gets_no_manifest_and_no_empty_event(signing):
    """Manifests are for whole answers: a stream of tenant "acme" is as the provider sent it
    (its notice is empty: no event is added for it)."""
    def chunks(key: str) -> list[Any]:
        return list(_client(signing, key, []).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))

    ours, plain = chunks(signing.key), chunks(signing.new_key(tenant="nobody")[0])
    text = "".join(c.choices[0].delta.content or "" for c in ours if c.choices)
    assert text and c2pa_text.find_wrapper_info(text) is None
    assert [c.choices[0].delta.content for c in ours if c.choices] == [
        c.choices[0].delta.content for c in plain if c.choices]


def test_the_chain_is_the_same_for_every_process_holding_the_key(signing, root):
    again = cli(signing.config, "provenance", "c2pa-chain")
    assert again.returncode == 0 and again.stdout.endswith(root)
    assert again.stdout.count("BEGIN CERTIFICATE") == 2
