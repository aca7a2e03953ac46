"""Bad requests get a clear 4xx in the client's API shape and never reach a provider."""

from __future__ import annotations

import pytest

CHAT = "/v1/chat/completions"
GOOD = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(("case", "status", "fragment"), [
    ("no key", 401, "no API key"),
    ("unknown key", 401, "invalid API key"),
    ("malformed JSON", 400, "not valid JSON"),
    ("JSON not an object", 400, "must be a JSON object"),
    ("missing model", 400, "has no 'model'"),
    ("unknown model", 404, "does not exist"),
    ("oversized body", 413, "larger than the limit"),
    ("wrong method", 405, "takes POST"),
    ("unknown path", 404, "no such endpoint"),
])
def test_bad_input_is_refused_before_any_upstream_call(gateway, upstream, case, status, fragment):
    before = len(upstream.calls)
    body: object = GOOD
    path, method, key = CHAT, "POST", gateway.key
    if case == "no key":
        key = None
    elif case == "unknown key":
        key = "tkm-not-a-real-key"
    elif case == "malformed JSON":
        body = b'{"model": "gpt-4o-mini", "messages": ['
    elif case == "JSON not an object":
        body = ["gpt-4o-mini"]
    elif case == "missing model":
        body = {"messages": GOOD["messages"]}
    elif case == "unknown model":
        body = {**GOOD, "model": "gpt-9"}
    elif case == "oversized body":
        body = {**GOOD, "messages": [{"role": "user", "content": "x" * 150_000}]}
    elif case == "wrong method":
        method, body = "GET", None
    elif case == "unknown path":
        path = "/v1/nothing"
    r = gateway.request(method, path, body, key=key)
    assert r.status_code == status
    error = r.json()["error"]
    assert fragment in error["message"]
    assert error["type"]
    assert len(upstream.calls) == before


def test_an_oversized_chunked_body_without_length_is_refused_too(gateway, upstream):
    before = len(upstream.calls)

    def body():  # no Content-Length: the limit must hold while the body streams in
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}]}'

    r = gateway.post(CHAT, body())
    assert r.status_code == 413
    assert len(upstream.calls) == before


def test_unknown_model_has_openais_model_not_found_code(gateway):
    r = gateway.post(CHAT, {**GOOD, "model": "gpt-9"})
    assert r.json()["error"]["code"] == "model_not_found"


def test_x_api_key_header_authenticates_too(gateway):
    r = gateway.post(CHAT, GOOD, key=None, headers={"x-api-key": gateway.key})
    assert r.status_code == 200


def test_errors_on_the_messages_api_are_anthropic_shaped(gateway, upstream):
    before = len(upstream.calls)
    r = gateway.post("/v1/messages", b"{nope")
    assert r.status_code == 400
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert len(upstream.calls) == before


def test_a_revoked_key_is_refused(gateway, upstream):
    from tokometer.cli import main

    key, key_id = gateway.new_key()
    assert gateway.post(CHAT, GOOD, key=key).status_code == 200
    assert main(["keys", "revoke", key_id, "--config", str(gateway.config)]) == 0
    before = len(upstream.calls)
    # Revocations reach a running gateway within a second; poll for it as a client would.
    import time
    deadline = time.monotonic() + 5
    while (r := gateway.post(CHAT, GOOD, key=key)).status_code == 200:
        assert time.monotonic() < deadline, "revoked key still accepted after 5 s"
        before = len(upstream.calls)
        time.sleep(0.1)
    assert r.status_code == 401
    assert len(upstream.calls) == before


def test_a_key_created_while_running_works_at_once(gateway):
    key, _ = gateway.new_key(tenant="newco", app="fresh")
    r = gateway.post(CHAT, GOOD, key=key)
    assert r.status_code == 200
    assert gateway.event(r.headers["x-tokometer-event-id"])["tenant"] == "newco"


def test_a_model_whose_provider_has_no_key_is_a_503_naming_the_variable(upstream, tmp_path):
    from conftest import providers_toml, start_gateway, stop_gateway

    gw = start_gateway(tmp_path, providers_toml(upstream) + """
[[models]]
name = "keyless"
routes = [{ provider = "fake-openai", model = "gpt-4o-mini" }]
""")  # FAKE_OPENAI_KEY is not set for this gateway
    try:
        before = len(upstream.calls)
        r = gw.post(CHAT, {**GOOD, "model": "keyless"})
        assert r.status_code == 503
        assert "set FAKE_OPENAI_KEY" in r.json()["error"]["message"]
        assert len(upstream.calls) == before
    finally:
        stop_gateway(gw)


@pytest.mark.parametrize(("extra", "fragment"), [
    ({"stream": True, "stream_options": "x"}, "'stream_options' must be an object"),
    ({"stream": True, "stream_options": ["include_usage"]}, "'stream_options' must be an object"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}},
     "'stream_options.include_usage' must be true or false"),
    ({"stream_options": {"include_usage": 1}}, "'stream_options.include_usage' must be true"),
    ({"stream": "yes"}, "'stream' must be true or false"),
    ({"stream": 1}, "'stream' must be true or false"),
])
def test_a_bad_stream_flag_or_stream_options_is_a_400_not_a_500(gateway, upstream, extra,
                                                                fragment):
    before = len(upstream.calls)
    r = gateway.post(CHAT, {**GOOD, **extra})
    assert r.status_code == 400
    assert fragment in r.json()["error"]["message"]
    assert len(upstream.calls) == before


@pytest.mark.parametrize("max_price", [{"prompt": 1e300}, {"completion": "1e999999999"},
                                       {"prompt": "NaN"}, {"prompt": "-0.5"}])
def test_a_routing_price_limit_out_of_range_is_a_400(gateway, upstream, max_price):
    before = len(upstream.calls)
    r = gateway.post(CHAT, {**GOOD, "provider": {"max_price": max_price}})
    assert r.status_code == 400
    assert "must be a number from 0 to 1000000" in r.json()["error"]["message"]
    assert len(upstream.calls) == before
