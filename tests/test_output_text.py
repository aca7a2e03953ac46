"""What a response says beyond usage: the generated text a recount reads (every piece once,
even when a provider repeats it) and a finish reason that is a string or nothing."""

from __future__ import annotations

from tokometer.usage import read_body
from tokometer.usage.text import body_text, chunk_text

DETAILS = [{"type": "reasoning.text", "text": "Add them.", "format": "unknown", "index": 0}]


def test_reasoning_with_its_details_counts_once_in_a_delta_and_a_message():
    delta = {"choices": [{"delta": {"reasoning": "Add them.", "reasoning_details": DETAILS}}]}
    assert chunk_text("chat", delta) == "Add them."
    body = {"choices": [{"message": {"content": "4", "reasoning": "Add them.",
                                     "reasoning_details": DETAILS}}]}
    assert body_text("chat", body) == "4Add them."


def test_reasoning_details_alone_still_count():
    delta = {"choices": [{"delta": {"reasoning": None, "reasoning_details": DETAILS}}]}
    assert chunk_text("chat", delta) == "Add them."
    empty = {"choices": [{"delta": {"reasoning": "", "reasoning_details": DETAILS}}]}
    assert chunk_text("chat", empty) == "Add them."


def test_a_malformed_finish_reason_is_dropped():
    body = {"choices": [{"message": {"content": "4"}, "finish_reason": {"nested": True}}]}
    assert read_body("chat", body).finish_reason is None
    assert read_body("messages", {"stop_reason": ["end_turn"]}).finish_reason is None
    assert read_body("messages", {"stop_reason": "end_turn"}).finish_reason == "end_turn"


def test_a_tool_call_reads_alike_whole_and_streamed():
    """Anthropic sends a tool call's input as an object in a whole message and as pieces of
    JSON text (spaced as it likes) in a stream: both read as the same compact JSON, so the
    hash of what the client got, and the recount, do not depend on streaming."""
    import json

    from tokometer.usage.stream import StreamTap

    tool_input = {"city": "Paris, FR", "units": ["°C"], "days": 3}
    body = {"content": [{"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "t1", "name": "weather", "input": tool_input},
                        {"type": "tool_use", "id": "t2", "name": "now", "input": {}}]}
    spaced = json.dumps(tool_input, ensure_ascii=True, indent=1)
    events = [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "Let me look."}},
        {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "t1", "name": "weather", "input": {}}},
        *({"type": "content_block_delta", "index": 1,
           "delta": {"type": "input_json_delta", "partial_json": spaced[i:i + 7]}}
          for i in range(0, len(spaced), 7)),
        {"type": "content_block_start", "index": 2, "content_block": {
            "type": "tool_use", "id": "t2", "name": "now", "input": {}}},
        {"type": "content_block_delta", "index": 2,
         "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "message_stop"}]
    tap = StreamTap("messages")
    for event in events:
        tap.feed(b"event: x\ndata: " + json.dumps(event).encode() + b"\n\n")
    whole = body_text("messages", body)
    assert tap.text() == whole == 'Let me look.{"city":"Paris, FR","units":["°C"],"days":3}{}'
