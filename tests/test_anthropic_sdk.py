"""The official anthropic SDK through the gateway: cache reads and writes are outside
Anthropic's input_tokens, and stream usage is cumulative."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import pytest

from conftest import Gateway, tariff_cost

# input_tokens 50 + cache_read 2000 + cache_creation 1000 = 3050 total input
TOKENS = (3050, 2000, 1000, 393)


@pytest.fixture
def client(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0)


def ask(client: anthropic.Anthropic, stream: bool, model: str = "claude-sonnet-5"):
    kw = {"model": model, "max_tokens": 1024,
          "messages": [{"role": "user", "content": "Hello, Claude"}]}
    if stream:
        with client.messages.with_streaming_response.create(stream=True, **kw) as r:
            kinds = [e.type for e in r.parse()]
            return r.headers["x-tokometer-event-id"], r.headers.get("x-tokometer-cost"), kinds
    raw = client.messages.with_raw_response.create(**kw)
    return raw.headers["x-tokometer-event-id"], raw.headers.get("x-tokometer-cost"), raw.parse()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_cache_reads_and_writes_count_once_in_total_input(client, gateway, stream):
    event_id, cost_header, answer = ask(client, stream)
    event = gateway.event(event_id)
    got = (event["input_tokens"], event["cache_read_tokens"], event["cache_write_tokens"],
           event["output_tokens"])
    assert got == TOKENS
    assert Decimal(event["cost"]) == tariff_cost(*TOKENS)
    assert event["api"] == "anthropic" and event["operation"] == "messages"
    assert event["model"] == "claude-sonnet-5-20260801"
    assert event["finish_reason"] == "end_turn"
    if stream:
        assert answer[-1] == "message_stop"
    else:
        assert answer.content[0].text == "Hi! My name is Claude."
        assert Decimal(cost_header) == Decimal(event["cost"])


def test_upstream_gets_the_providers_key_and_the_clients_anthropic_version(client, upstream):
    before = len(upstream.calls)
    ask(client, stream=False)
    headers = upstream.calls[before]["headers"]
    assert headers["x-api-key"] == "sk-ant-upstream"
    assert headers["anthropic-version"] == client.default_headers["anthropic-version"]
    assert upstream.calls[before]["path"] == "/anthropic/v1/messages"


def test_a_client_without_anthropic_version_gets_a_default(gateway, upstream):
    before = len(upstream.calls)
    r = gateway.post("/v1/messages", {"model": "claude-sonnet-5", "max_tokens": 10,
                                      "messages": [{"role": "user", "content": "Hi"}]},
                     key=None, headers={"x-api-key": gateway.key})
    assert r.status_code == 200
    assert upstream.calls[before]["headers"]["anthropic-version"] == "2023-06-01"


def test_errors_come_in_anthropics_shape(client, gateway):
    with pytest.raises(anthropic.NotFoundError) as e:
        ask(client, stream=False, model="no-such-model")
    assert e.value.body["error"]["type"] == "not_found_error"
    bad = anthropic.Anthropic(base_url=gateway.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        ask(bad, stream=False)


def test_a_non_json_upstream_error_becomes_an_anthropic_shaped_502(client, gateway):
    with pytest.raises(anthropic.InternalServerError) as e:
        ask(client, stream=False, model="claude-html-502")
    assert e.value.status_code == 502
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "api_error"
    assert "Bad Gateway" in e.value.body["error"]["message"]
    event = gateway.event(e.value.response.headers["x-tokometer-event-id"])
    assert (event["status"], event["api"]) == (502, "anthropic")


def test_an_openai_only_model_is_refused_on_the_messages_api(client):
    with pytest.raises(anthropic.BadRequestError, match="not served over the anthropic API"):
        ask(client, stream=False, model="gpt-4o-mini")


def test_models_list_in_anthropic_shape(client):
    assert "claude-sonnet-5" in {m.id for m in client.models.list()}
