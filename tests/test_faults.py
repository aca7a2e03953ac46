"""Upstream failures: fallback before the first byte, errors passed on in the SDK's shape and
recorded, timeouts, and a client that leaves mid-stream."""

from __future__ import annotations

import openai
import pytest

from conftest import tariff_cost, wait_for_event
from fake_upstream import FakeUpstream

MESSAGES = [{"role": "user", "content": "Hi"}]


def test_falls_back_past_refused_connection_500_and_429(gateway, upstream: FakeUpstream):
    before_500 = len(upstream.calls_for("fail-500"))
    before_429 = len(upstream.calls_for("fail-429"))
    r = gateway.chat("fallback", "Hi")
    assert r.status_code == 200
    assert len(upstream.calls_for("fail-500")) == before_500 + 1
    assert len(upstream.calls_for("fail-429")) == before_429 + 1
    event = gateway.event(r.headers["x-tokometer-event-id"])
    assert event["provider"] == "fake-openai" and event["status"] == 200
    assert event["input_tokens"] == 2006


def test_the_last_routes_error_is_passed_on_and_recorded(gateway):
    r = gateway.chat("fail-500", "Hi")
    assert r.status_code == 500
    assert r.json() == {"error": {"message": "The server had an error", "type": "server_error"}}
    event = gateway.event(r.headers["x-tokometer-event-id"])
    assert (event["status"], event["error_type"]) == (500, "server_error")
    assert (event["input_tokens"], event["output_tokens"], event["cost"]) == (0, 0, "0")


def test_a_client_error_from_upstream_is_passed_through_untouched(gateway):
    r = gateway.chat("fail-400", "Hi")
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens"
    assert gateway.event(r.headers["x-tokometer-event-id"])["status"] == 400


def test_a_non_json_upstream_error_becomes_an_openai_shaped_502(gateway):
    with pytest.raises(openai.InternalServerError) as e:
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0) \
            .chat.completions.create(model="html-502", messages=MESSAGES)
    assert e.value.status_code == 502
    assert "Bad Gateway" in e.value.body["message"]
    event_id = e.value.response.headers["x-tokometer-event-id"]
    assert gateway.event(event_id)["error_type"] == "upstream_error"


def test_a_malformed_success_body_is_a_502_not_a_free_request(gateway):
    r = gateway.chat("garbage", "Hi")
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "upstream_malformed"
    assert gateway.event(r.headers["x-tokometer-event-id"])["status"] == 502


def test_an_upstream_that_never_answers_times_out_as_504(gateway):
    r = gateway.chat("hang", "Hi")
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "upstream_timeout"
    assert gateway.event(r.headers["x-tokometer-event-id"])["status"] == 504


def test_a_client_leaving_mid_stream_is_recorded_as_499_with_tokens_so_far(gateway, upstream,
                                                                          o200k):
    upstream.release_slow.clear()
    with gateway.stream("/v1/chat/completions", {"model": "slow", "messages": MESSAGES,
                                                 "stream": True}) as r:
        event_id = r.headers["x-tokometer-event-id"]
        received = b""
        for chunk in r.iter_bytes():
            received += chunk
            if b"quick brown fox" in received:
                break  # leave while the provider is still generating
    event = wait_for_event(gateway, event_id)
    upstream.release_slow.set()
    assert event["status"] == 499 and event["error_type"] == "client_disconnected"
    assert event["output_tokens"] == len(o200k.encode("The quick brown fox")) > 0
    assert event["usage_source"] == "counted"
    assert event["input_tokens"] > 0
    assert event["cost"] == str(tariff_cost(event["input_tokens"], 0, 0,
                                            event["output_tokens"]).normalize())
