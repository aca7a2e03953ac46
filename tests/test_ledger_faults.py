"""A reading that cannot be recorded fails loudly, and only for the request it belongs to."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import anthropic
import openai
import pytest

from conftest import Gateway

MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def doomed(gateway: Gateway) -> Iterator[str]:
    """A key whose events the store refuses (a trigger stands in for a failing disk)."""
    key, _ = gateway.new_key(tenant="doomed")
    conn = sqlite3.connect(gateway.store)
    conn.execute("CREATE TRIGGER refuse_doomed BEFORE INSERT ON events "
                 "WHEN NEW.tenant = 'doomed' BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    conn.commit()
    yield key
    conn.execute("DROP TRIGGER refuse_doomed")
    conn.commit()
    conn.close()


def test_an_unrecorded_reading_is_a_500_in_the_clients_shape(gateway, doomed):
    r = gateway.chat("gpt-4o-mini", "Hi", key=doomed)
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "ledger_error"
    assert "disk says no" in r.json()["error"]["message"]
    with pytest.raises(AssertionError):
        gateway.event(r.headers["x-tokometer-event-id"])


def test_an_unrecorded_stream_ends_with_an_error_the_sdk_raises(gateway, doomed):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=doomed, max_retries=0)
    with pytest.raises(openai.APIError, match="could not record"):
        list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                            stream=True))
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=doomed, max_retries=0)
    with pytest.raises(anthropic.APIStatusError, match="could not record"):
        list(claude.messages.create(model="claude-sonnet-5", max_tokens=10, messages=MESSAGES,
                                    stream=True))


def test_other_requests_in_the_same_group_commit_are_recorded(gateway, doomed):
    responses = gateway.burst({"model": "gpt-4o-mini", "messages": MESSAGES},
                              [doomed if i % 2 else gateway.key for i in range(40)])
    good = [r for i, r in enumerate(responses) if i % 2 == 0]
    bad = [r for i, r in enumerate(responses) if i % 2 == 1]
    assert {r.status_code for r in good} == {200}
    assert {r.status_code for r in bad} == {500}
    for r in good:
        assert gateway.event(r.headers["x-tokometer-event-id"])["tenant"] == "acme"
