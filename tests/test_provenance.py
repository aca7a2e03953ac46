"""The provenance of generated text: each event's `output_sha256` is of the text the client
received, through the real SDKs, whole and streamed, in both wire formats."""

from __future__ import annotations

import hashlib

import anthropic
import openai
import pytest

from conftest import Gateway, wait_for_event


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
