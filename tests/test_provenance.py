"""The provenance of generated text, through the real SDKs, whole and streamed, in both wire
formats: each event's `output_sha256` is of the text the client received, and every answer
carries its implicit label (GB 45438's AIGC metadata)."""

from __future__ import annotations

import hashlib
import json

import anthropic
import openai
import pytest

from conftest import Gateway, wait_for_event
from tokometer.config import load
from tokometer.errors import ConfigError
from tokometer.gateway.labels import Labels


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
