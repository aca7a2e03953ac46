"""Usage parsing as pure functions: every dialect's quirks, and a stream tap that reads the
same numbers however the network cuts the bytes."""

from __future__ import annotations

import itertools
import json
import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_upstream import FIXTURES
from tokometer.events import Usage
from tokometer.usage import StreamTap, read_body
from tokometer.usage.stream import SSESplitter

CASES = [
    ("openai_chat", "chat", Usage(2006, 1920, 0, 300, 192)),
    ("deepseek_chat", "chat", Usage(1500, 1024, 0, 120, 0)),
    ("kimi", "chat", Usage(820, 512, 0, 64, 0)),
    ("completions", "text_completion", Usage(5, 0, 0, 7, 0)),
    ("responses", "responses", Usage(1284, 1024, 0, 210, 128)),
    ("anthropic", "messages", Usage(3050, 2000, 1000, 393, 0)),
    # 1-hour cache writes are a part of the writes; web searches counted in server_tool_use
    ("anthropic_1h", "messages", Usage(44125, 12000, 30000, 512, 0, 20000, 2)),
    ("openai_priority", "chat", Usage(2006, 1920, 0, 300, 192)),
    # two web_search_call output items
    ("responses_search", "responses", Usage(9012, 0, 0, 340, 0, 0, 2)),
]
# The tier each fixture's body and stream say they were served at (None: they do not say).
TIERS = {"anthropic": ("standard", None), "anthropic_1h": ("standard", "standard"),
         "openai_priority": ("priority", "priority"),
         "responses_search": ("default", "default"), "openai_chat": ("default", "default")}


@pytest.mark.parametrize(("fixture", "operation", "expected"), CASES)
def test_whole_bodies(fixture, operation, expected):
    body = orjson.loads((FIXTURES / f"{fixture}.json").read_bytes())
    assert read_body(operation, body).usage == expected


@pytest.mark.parametrize(("fixture", "operation", "expected"), CASES)
def test_the_served_service_tier_is_read_from_bodies_and_streams(fixture, operation, expected):
    in_body, in_stream = TIERS.get(fixture, (None, None))
    body = orjson.loads((FIXTURES / f"{fixture}.json").read_bytes())
    assert read_body(operation, body).service_tier == in_body
    if (FIXTURES / f"{fixture}.sse").exists():
        tap, _ = tap_all(operation, (FIXTURES / f"{fixture}.sse").read_bytes(), [])
        assert tap.service_tier == in_stream


@pytest.mark.parametrize(("raw", "expected"), [
    # read as sent, even where a part exceeds its whole: the meter distrusts that and recounts
    ({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 250},
      "completion_tokens": 10, "completion_tokens_details": {"reasoning_tokens": 40}},
     Usage(100, 250, 0, 10, 40)),
    ({"prompt_tokens": -5, "completion_tokens": True}, Usage(0, 0, 0, 0, 0)),
])
def test_counts_are_read_as_sent_and_bad_ones_as_absent(raw, expected):
    assert read_body("chat", {"usage": raw}).usage == expected


def test_a_tier_name_is_bounded():
    body = {"service_tier": "p" * 65, "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    assert read_body("chat", body).service_tier is None
    tap, _ = tap_all("chat", b'data: {"service_tier":"' + b"p" * 65 + b'","choices":[]}\n\n',
                     [])
    assert tap.service_tier is None


def test_embeddings_have_input_only():
    body = orjson.loads((FIXTURES / "embeddings.json").read_bytes())
    assert read_body("embeddings", body).usage == Usage(8, 0, 0, 0, 0)


def test_a_body_without_usage_reads_as_none_not_zero():
    body = orjson.loads((FIXTURES / "nousage.json").read_bytes())
    assert read_body("chat", body).usage is None


def tap_all(operation: str, data: bytes, cuts: list[int], hide: bool = False):
    tap, splitter = StreamTap(operation, hide_usage_chunk=hide), SSESplitter()
    kept, bounds = [], sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(bounds):
        kept += [block for block in splitter.feed(data[a:b]) if tap.feed(block)]
    assert splitter.rest() == b""
    return tap, b"".join(kept)


@pytest.mark.parametrize(("fixture", "operation", "expected"),
                         [c for c in CASES if (FIXTURES / f"{c[0]}.sse").exists()])
@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_streams_read_the_same_however_the_bytes_are_cut(fixture, operation, expected, cuts):
    data = (FIXTURES / f"{fixture}.sse").read_bytes()
    tap, forwarded = tap_all(operation, data, cuts)
    assert tap.usage() == expected
    assert tap.final_usage_seen and tap.terminal
    assert forwarded == data  # nothing dropped, nothing added


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_crlf_streams_split_too(cuts):
    data = (FIXTURES / "openai_chat.sse").read_bytes().replace(b"\n", b"\r\n")
    tap, forwarded = tap_all("chat", data, cuts)
    assert tap.usage() == Usage(2006, 1920, 0, 300, 192)
    assert forwarded == data


def test_the_usage_chunk_is_hidden_only_when_asked():
    data = (FIXTURES / "openai_chat.sse").read_bytes()
    tap, forwarded = tap_all("chat", data, [], hide=True)
    assert b'"usage":{' not in forwarded and forwarded.endswith(b"data: [DONE]\n\n")
    assert tap.usage().input_tokens == 2006


def test_kimis_usage_chunk_carries_content_and_is_never_hidden():
    data = (FIXTURES / "kimi.sse").read_bytes()
    _, forwarded = tap_all("chat", data, [], hide=True)
    assert forwarded == data


def test_a_cut_off_anthropic_stream_keeps_its_input_but_has_no_final_usage():
    data = (FIXTURES / "anthropic.sse").read_bytes()
    cut = data[:data.index(b"event: content_block_stop")]
    tap, _ = tap_all("messages", cut, [])
    assert not tap.final_usage_seen
    assert tap.usage().input_tokens == 3050
    assert tap.text() == "Hi! My name is Claude."


def test_stream_text_for_recounts():
    tap, _ = tap_all("chat", (FIXTURES / "nousage.sse").read_bytes(), [])
    assert tap.usage() is None
    assert tap.text() == "The quick brown fox jumps over the lazy dog."
    tap, _ = tap_all("responses", (FIXTURES / "responses.sse").read_bytes(), [])
    assert tap.text() == "Hi there!"


# The tap reads an event further only when one byte scan says it may matter (usage/stream.py).
# Its oracle: the same tap with that scan made to let every event through, which is how the
# tap read streams before the scan existed. Words of the reading hide in the answer's text,
# with quotes escaped, in events of every wire format, spaced or compact, cut anywhere.
TRICKY = ['"usage":{"prompt_tokens":7,"completion_tokens":3}', '"usage": {', "usage",
          '"finish_reason":"length"', '"finish_reason": null', '"error":{"type":"x"}',
          '"type":"error"', '"tool_calls":[{"index":0}]', '"type":"tool_use"',
          '"function_call":{"name":"f"}', "message_stop", "response.completed", "[DONE]",
          "\\", '"', "\\\"", "data: ", "\n", "\n\n", '"model":"evil"', '"service_tier":"flex"',
          " ", "word"]
USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "input_tokens": 13, "output_tokens": 6}


def _events(t: str) -> list[tuple[str | None, object]]:
    """(SSE event name, payload) of every kind the readings distinguish, with text `t`."""
    chunk = {"model": "gpt-4o-mini", "service_tier": "default", "usage": None,
             "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]}
    return [
        (None, chunk),
        (None, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        (None, {**chunk, "choices": [], "usage": USAGE}),
        (None, {**chunk, "choices": [{"index": 0, "delta": {"content": t}, "usage": USAGE}]}),
        (None, {**chunk, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": t}}]}, "finish_reason": None}]}),
        (None, {"error": {"type": "server_error", "message": t}}),
        ("message_start", {"type": "message_start", "message": {
            "model": "claude-x", "usage": {"input_tokens": 9, "output_tokens": 1}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": t}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "input_json_delta", "partial_json": t}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 4}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                           "usage": None}),
        ("message_stop", {"type": "message_stop"}),
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": t}}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": t}),
        ("response.completed", {"type": "response.completed", "response": {
            "status": "completed", "usage": USAGE, "output": []}}),
        ("response.incomplete", {"type": "response.incomplete", "response": {
            "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}}),
        (None, t),  # not JSON at all
        (None, "[DONE]"),
    ]


@st.composite
def sse_streams(draw):
    blocks = []
    for _ in range(draw(st.integers(1, 12))):
        text = "".join(draw(st.lists(st.sampled_from(TRICKY), max_size=5)))
        name, payload = draw(st.sampled_from(_events(text)))
        if isinstance(payload, str):
            data = payload.replace("\n", " ").encode()
        elif draw(st.booleans()):
            data = orjson.dumps(payload)
        else:  # as Python's json writes it: a space after every colon and comma
            data = json.dumps(payload).encode()
        if draw(st.booleans()) and len(data) > 1:  # one payload on two data lines
            at = draw(st.integers(1, len(data) - 1))
            data = data[:at] + b"\ndata: " + data[at:]
        head = b"event: " + name.encode() + b"\n" if name else b""
        blocks.append(head + b"data: " + data + b"\n\n")
    return b"".join(blocks)


def reading(tap: StreamTap) -> tuple:
    return (tap.usage(), tap.final_usage_seen, tap.model, tap.service_tier, tap.finish_reason,
            tap.terminal, tap.error, tap.tool_call, tap.web_searches, tap.text())


@pytest.mark.parametrize("operation", ["chat", "messages", "responses"])
@settings(max_examples=300, deadline=None)
@given(stream=sse_streams(), cuts=st.lists(st.integers(0, 10_000), max_size=8),
       hide=st.booleans())
def test_the_quick_scan_never_changes_a_reading(operation, stream, cuts, hide):
    tap, forwarded = tap_all(operation, stream, cuts, hide)
    oracle = StreamTap(operation, hide_usage_chunk=hide)
    oracle._notable = re.compile(b"")  # every event read in full
    kept = [block for block in SSESplitter().feed(stream) if oracle.feed(block)]
    assert reading(tap) == reading(oracle)
    assert forwarded == b"".join(kept)


def test_words_of_the_reading_inside_the_answer_change_nothing():
    """The answer's text quotes a usage object, a finish reason and an error: escaped inside
    a string, none of them is read, and the real usage chunk after them still is."""
    text = '"usage":{"prompt_tokens":1} "finish_reason":"length" "error":{"type":"x"} [DONE]'
    chunk = {"model": "m", "choices": [{"index": 0, "delta": {"content": text},
                                        "finish_reason": None}], "usage": None}
    stream = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in [
        chunk, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"model": "m", "choices": [], "usage": USAGE}]) + b"data: [DONE]\n\n"
    tap, forwarded = tap_all("chat", stream, [], hide=True)
    assert tap.usage() == Usage(11, 0, 0, 5, 0) and tap.final_usage_seen
    assert (tap.finish_reason, tap.error, tap.tool_call, tap.terminal) == ("stop", None, False,
                                                                            True)
    assert tap.text() == text
    assert forwarded == stream[:stream.index(b'data: {"model":"m","choices":[]')] \
        + b"data: [DONE]\n\n"  # only the usage chunk the gateway asked for is hidden


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": "), (" , ", " :  ")])
def test_spaced_json_is_read_like_compact_json(separators):
    def event(payload: dict) -> bytes:
        return b"data: " + json.dumps(payload, separators=separators).encode() + b"\n\n"
    stream = (event({"model": "m", "choices": [{"delta": {"content": "Hi"},
                                                "finish_reason": None}], "usage": None})
              + event({"choices": [{"delta": {"tool_calls": [{"index": 0}]},
                                    "finish_reason": "tool_calls"}], "usage": None})
              + event({"choices": [], "usage": USAGE}) + b"data: [DONE]\n\n")
    tap, _ = tap_all("chat", stream, [7, 100, 101, 250])
    assert (tap.usage(), tap.finish_reason, tap.tool_call, tap.terminal) == (
        Usage(11, 0, 0, 5, 0), "tool_calls", True, True)


def test_usage_on_its_own_data_line_is_read():
    """A payload may run over several `data:` lines, the usage object's value on the next."""
    stream = (b'data: {"model":"m","choices":[],"usage":\ndata: {"prompt_tokens":11,'
              b'"completion_tokens":5}}\n\ndata: [DONE]\n\n')
    tap, _ = tap_all("chat", stream, [30])
    assert tap.usage() == Usage(11, 0, 0, 5, 0) and tap.terminal
