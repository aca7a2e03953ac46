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
