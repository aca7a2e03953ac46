"""What reading a stream costs the relay, per stream: the SSE splitter and the usage tap fed
event by event (one network chunk per event, as providers send them), then the reading the
meter takes at the end (usage, and the text it recounts). The 21-event stream is the 6-event
chat fixture with its answer sent a word at a time (`overhead.py --sse-events 21` serves it).

    .venv/bin/python bench/stream_tap.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

from overhead import FIXTURES, sse_stream
from tokometer.usage import StreamTap
from tokometer.usage.stream import SSESplitter

STREAMS = {  # name: (operation, fixture)
    "openai chat, 6 events": ("chat", "openai_chat.sse"),
    "anthropic messages, 8 events": ("messages", "anthropic.sse"),
    "openai responses, 5 events": ("responses", "responses.sse"),
}


def events(text: str) -> list[bytes]:
    return [e.encode() + b"\n\n" for e in text.strip().split("\n\n")]


def read(operation: str, chunks: list[bytes]) -> Callable[[], object]:
    def run() -> object:
        tap, splitter = StreamTap(operation), SSESplitter()
        for chunk in chunks:
            for block in splitter.feed(chunk):
                tap.feed(block)
        return tap.usage(), tap.text()
    return run


def feed_only(operation: str, chunks: list[bytes]) -> Callable[[], object]:
    def run() -> object:
        tap, splitter = StreamTap(operation), SSESplitter()
        for chunk in chunks:
            for block in splitter.feed(chunk):
                tap.feed(block)
        return tap.usage()
    return run


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    fn()  # warm caches
    best = float("inf")
    for _ in range(5):  # the best of five: the least disturbed by the rest of the machine
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def main() -> None:
    streams = {name: (op, events((FIXTURES / fixture).read_text()))
               for name, (op, fixture) in STREAMS.items()}
    streams["openai chat, 21 events"] = ("chat", events(sse_stream(21)))
    print(f"{'µs per stream':<32} {'relay (split + tap)':>20} {'+ reading (usage, text)':>24}")
    for name, (op, chunks) in streams.items():
        print(f"{name:<32} {per_call_us(feed_only(op, chunks), 5_000):20.1f} "
              f"{per_call_us(read(op, chunks), 5_000):24.1f}")


if __name__ == "__main__":
    main()
