"""The official openai SDK through the gateway: every OpenAI wire format and quirk, billed
to the exact Decimal."""

from __future__ import annotations

from decimal import Decimal

import genai_prices
import openai
import pytest

from conftest import Gateway, tariff_cost
from fake_upstream import FIXTURES, FakeUpstream
from tokometer.events import FIELDS

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello."}]


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)


def chat(client: openai.OpenAI, model: str, stream: bool, **kw):
    """(event id, cost header or None, chunks or completion)."""
    if stream:
        with client.chat.completions.with_streaming_response.create(
                model=model, messages=MESSAGES, stream=True, **kw) as r:
            return r.headers["x-tokometer-event-id"], r.headers.get("x-tokometer-cost"), \
                list(r.parse())
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **kw)
    return raw.headers["x-tokometer-event-id"], raw.headers.get("x-tokometer-cost"), raw.parse()


def assert_tokens(event, inp, cache_read, cache_write, out, reasoning):
    got = tuple(event[k] for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens",
                                   "output_tokens", "reasoning_tokens"))
    assert got == (inp, cache_read, cache_write, out, reasoning)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("model", "tokens", "origin"), [
    ("gpt-4o-mini", (2006, 1920, 0, 300, 192), "US"),  # cached_tokens + reasoning_tokens
    ("kimi-k2", (820, 512, 0, 64, 0), "CN"),  # top-level cached_tokens, usage in choices[0]
])
def test_chat_bills_every_kind_of_token_at_its_own_rate(client, gateway, model, tokens, origin,
                                                        stream):
    event_id, cost_header, _ = chat(client, model, stream)
    event = gateway.event(event_id)
    assert_tokens(event, *tokens)
    assert event["usage_source"] == "reported"
    assert Decimal(event["cost"]) == tariff_cost(*tokens[:4])
    assert event["price_ref"] == "tariff:config"
    assert event["stream"] is stream
    assert event["model_origin"] == origin
    assert event["status"] == 200
    assert event["finish_reason"] == "stop"
    if not stream:
        assert Decimal(cost_header) == Decimal(event["cost"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_deepseek_cache_hits_are_priced_by_genai_prices_at_request_time(client, gateway, stream):
    event_id, _, _ = chat(client, "deepseek-chat", stream)
    event = gateway.event(event_id)
    assert_tokens(event, 1500, 1024, 0, 120, 0)  # prompt_cache_hit_tokens
    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1500, cache_read_tokens=1024, output_tokens=120),
        "deepseek-chat", provider_id="deepseek",
        genai_request_timestamp=_time(event["time"])).total_price
    assert Decimal(event["cost"]) == expected
    assert event["price_ref"].startswith("genai-prices ")
    assert event["provider_region"] == "CN"


def test_stream_hides_the_usage_chunk_the_client_did_not_ask_for(client, gateway, upstream):
    before = len(upstream.calls)
    _, _, chunks = chat(client, "gpt-4o-mini", stream=True)
    assert all(c.usage is None for c in chunks)
    assert [c for c in chunks if not c.choices] == []
    sent = upstream.calls[before]["body"]
    assert sent["stream_options"] == {"include_usage": True}


def test_stream_keeps_the_usage_chunk_the_client_asked_for(client, gateway):
    _, _, chunks = chat(client, "gpt-4o-mini", stream=True, stream_options={"include_usage": True})
    assert chunks[-1].usage.prompt_tokens == 2006
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 1920


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_bodies_and_streams_reach_the_client_byte_for_byte(gateway, stream):
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    r = gateway.post("/v1/chat/completions", body)
    fixture = (FIXTURES / f"openai_chat.{'sse' if stream else 'json'}").read_bytes()
    if stream:
        fixture = b"".join(e + b"\n\n" for e in fixture.split(b"\n\n") if e.strip())
    if stream:
        assert r.content == fixture
    else:  # the provider's bytes, with the implicit label (labels.py) as the last member
        label = r.headers["aigc"].encode()
        assert r.content == fixture.rstrip()[:-1] + b',"AIGC":' + label + b"}"
    assert r.headers["x-request-id"] == ("req_456" if stream else "req_123")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_text_completions(client, gateway, stream):
    if stream:
        with client.completions.with_streaming_response.create(
                model="gpt-3.5-turbo-instruct", prompt="Say this is a test", stream=True) as r:
            event_id = r.headers["x-tokometer-event-id"]
            text = "".join(c.choices[0].text for c in r.parse() if c.choices)
        assert text == "\n\nThis is indeed a test"
    else:
        raw = client.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct",
                                                          prompt="Say this is a test")
        event_id = raw.headers["x-tokometer-event-id"]
    event = gateway.event(event_id)
    assert event["operation"] == "text_completion"
    assert_tokens(event, 5, 0, 0, 7, 0)
    assert Decimal(event["cost"]) == tariff_cost(5, 0, 0, 7)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_api(client, gateway, stream):
    if stream:
        with client.responses.with_streaming_response.create(
                model="gpt-4.1", input="Hi", stream=True) as r:
            event_id = r.headers["x-tokometer-event-id"]
            kinds = [e.type for e in r.parse()]
        assert kinds[-1] == "response.completed"
    else:
        raw = client.responses.with_raw_response.create(model="gpt-4.1", input="Hi")
        event_id = raw.headers["x-tokometer-event-id"]
        assert raw.parse().usage.input_tokens == 1284
    event = gateway.event(event_id)
    assert event["operation"] == "responses"
    assert_tokens(event, 1284, 1024, 0, 210, 128)
    assert Decimal(event["cost"]) == tariff_cost(1284, 1024, 0, 210)
    assert event["finish_reason"] == "completed"


def test_embeddings(client, gateway):
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small",
                                                     input="The food was delicious")
    assert len(raw.parse().data[0].embedding) == 4
    event = gateway.event(raw.headers["x-tokometer-event-id"])
    assert event["operation"] == "embeddings"
    assert_tokens(event, 8, 0, 0, 0, 0)
    assert Decimal(event["cost"]) == tariff_cost(8, 0, 0, 0)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_missing_usage_is_recounted_with_the_models_tokenizer(client, gateway, stream, o200k):
    event_id, _, _ = chat(client, "no-usage", stream)
    event = gateway.event(event_id)
    enc = o200k
    # OpenAI's chat accounting: 3 tokens per message + role + content, 3 to prime the reply.
    expected_in = 3 + sum(3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"]))
                          for m in MESSAGES)
    expected_out = len(enc.encode("The quick brown fox jumps over the lazy dog."))
    assert event["usage_source"] == "counted"
    assert (event["input_tokens"], event["output_tokens"]) == (expected_in, expected_out)
    assert (event["counted_input_tokens"], event["counted_output_tokens"]) == \
        (expected_in, expected_out)
    assert Decimal(event["cost"]) == tariff_cost(expected_in, 0, 0, expected_out)


def test_reported_usage_carries_an_independent_recount_beside_it(client, gateway, o200k):
    event_id, _, _ = chat(client, "gpt-4o-mini", stream=True)
    event = gateway.event(event_id)
    enc = o200k
    assert event["output_tokens"] == 300  # what the provider billed
    assert event["counted_output_tokens"] == len(enc.encode("Hello! How can I assist you today?"))


def test_a_model_no_one_prices_is_recorded_with_null_cost_not_zero(client, gateway):
    event_id, cost_header, _ = chat(client, "mystery-model", stream=False)
    event = gateway.event(event_id)
    assert event["input_tokens"] == 2006
    assert event["cost"] is None and event["price_ref"] is None
    assert cost_header is None


def test_attribution_from_key_headers_and_user_field(client, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, user="end-user-7",
        extra_headers={"x-tokometer-agent": "planner", "x-tokometer-task": "task-42"})
    event = gateway.event(raw.headers["x-tokometer-event-id"])
    assert (event["tenant"], event["app"], event["consumer_region"]) == ("acme", "tests", "DE")
    assert (event["agent"], event["task"], event["end_user"]) == ("planner", "task-42",
                                                                  "end-user-7")
    assert event["key_id"] == gateway.key_id
    assert set(event) == set(FIELDS)


def test_upstream_gets_the_providers_key_not_the_clients(client, gateway, upstream: FakeUpstream):
    before = len(upstream.calls)
    chat(client, "gpt-4o-mini", stream=False)
    headers = upstream.calls[before]["headers"]
    assert headers["authorization"] == "Bearer sk-upstream-openai"
    assert gateway.key not in str(headers)


def test_models_lists_the_configured_models(client):
    names = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "deepseek-chat", "claude-sonnet-5", "fallback"} <= names


def _time(text: str):
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("options", ["x", {"include_usage": "yes"}, ["include_usage"]])
def test_a_bad_stream_options_is_a_bad_request_the_sdk_does_not_retry(client, upstream, options):
    before = len(upstream.calls)
    with pytest.raises(openai.BadRequestError, match="stream_options"):  # a 500 would be retried
        list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                            stream_options=options))
    assert len(upstream.calls) == before
