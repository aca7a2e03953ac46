"""Where each wire format keeps its token counts, as data: one table per dialect.

Quirks live here and nowhere else: Anthropic's input excludes cache reads and writes, and
splits its cache writes into 5-minute and 1-hour ones under `cache_creation`; DeepSeek reports
cache hits as `prompt_cache_hit_tokens`; Moonshot (Kimi) as a top-level `cached_tokens`;
OpenAI nests them in `prompt_tokens_details`. Web searches are counted in the usage object
by Anthropic, and as `web_search_call` output items by OpenAI's Responses API (body.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..events import Usage

Path = tuple[str, ...]
# A count above this is not a reading (2^40, over a trillion tokens: more than any answer,
# and far enough from the stores' 64-bit integers that no sum of them overflows).
MAX_TOKENS = 1 << 40


@dataclass(frozen=True, slots=True)
class Dialect:
    input: tuple[Path, ...]
    cache_read: tuple[Path, ...] = ()
    cache_write: tuple[Path, ...] = ()
    output: tuple[Path, ...] = ()
    reasoning: tuple[Path, ...] = ()
    cache_write_1h: tuple[Path, ...] = ()
    web_searches: tuple[Path, ...] = ()
    input_excludes_cache: bool = False


OPENAI_CHAT = Dialect(
    input=(("prompt_tokens",),),
    cache_read=(
        ("prompt_tokens_details", "cached_tokens"),
        ("prompt_cache_hit_tokens",),  # DeepSeek
        ("cached_tokens",),  # Moonshot (Kimi)
    ),
    cache_write=(("prompt_tokens_details", "cache_write_tokens"),
                 ("prompt_tokens_details", "cache_creation_tokens")),
    output=(("completion_tokens",),),
    reasoning=(("completion_tokens_details", "reasoning_tokens"),),
)

OPENAI_RESPONSES = Dialect(
    input=(("input_tokens",),),
    cache_read=(("input_tokens_details", "cached_tokens"),),
    cache_write=(("input_tokens_details", "cache_write_tokens"),),
    output=(("output_tokens",),),
    reasoning=(("output_tokens_details", "reasoning_tokens"),),
)

ANTHROPIC = Dialect(
    input=(("input_tokens",),),
    cache_read=(("cache_read_input_tokens",),),
    cache_write=(("cache_creation_input_tokens",),),
    output=(("output_tokens",),),
    reasoning=(("output_tokens_details", "thinking_tokens"),),
    cache_write_1h=(("cache_creation", "ephemeral_1h_input_tokens"),),
    web_searches=(("server_tool_use", "web_search_requests"),),
    input_excludes_cache=True,
)

_BY_OPERATION = {
    "chat": OPENAI_CHAT,
    "text_completion": OPENAI_CHAT,
    "embeddings": OPENAI_CHAT,
    "responses": OPENAI_RESPONSES,
    "messages": ANTHROPIC,
}


def dialect_for(operation: str) -> Dialect:
    return _BY_OPERATION[operation]


def usage_from(dialect: Dialect, raw: dict[str, Any], web_searches: int = 0) -> Usage:
    """Normalise a provider usage object: input total includes cache, output includes reasoning.

    Counts are read as sent (a negative, non-integer or absurd one as absent); a part larger
    than its whole is the meter's to distrust (gateway/meter.py recounts it). `web_searches` counted
    outside the usage object (OpenAI Responses output items) add to those counted in it.
    """
    inp = _first(raw, dialect.input)
    cache_read = _first(raw, dialect.cache_read)
    cache_write = _first(raw, dialect.cache_write)
    if dialect.input_excludes_cache:
        inp += cache_read + cache_write
    return Usage(
        input_tokens=inp,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=_first(raw, dialect.output),
        reasoning_tokens=_first(raw, dialect.reasoning),
        cache_write_1h_tokens=_first(raw, dialect.cache_write_1h),
        web_search_requests=_first(raw, dialect.web_searches) + web_searches,
    )


def _first(raw: dict[str, Any], paths: tuple[Path, ...]) -> int:
    for path in paths:
        value: Any = raw
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
            return value
    return 0
