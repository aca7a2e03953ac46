"""Provider responses and SSE streams → Usage, for every wire format and its quirks."""

from .body import Reading, read_body
from .dialects import dialect_for, usage_from
from .stream import StreamTap

__all__ = ["Reading", "StreamTap", "dialect_for", "read_body", "usage_from"]
