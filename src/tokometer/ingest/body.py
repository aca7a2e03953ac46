"""An ingest request's body as sent: its content type, and gzip undone within a bound (a
few kilobytes of gzip can hold gigabytes of zeros)."""

from __future__ import annotations

import zlib

from ..errors import RequestError

MAX_BATCH = 4096  # readings (spans, CloudEvents) in one request


def media_type(headers: dict[bytes, bytes]) -> str:
    """The request's media type, lower case, its parameters (charset) left out."""
    value = headers.get(b"content-type", b"").decode("latin-1")
    return value.split(";", 1)[0].strip().lower()


def decoded(raw: bytes, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The body with its content encoding (gzip, or none) undone; RequestError 413 when it
    would be longer than `limit`, 415 for another encoding, 400 for broken gzip."""
    encoding = headers.get(b"content-encoding", b"identity").strip().lower()
    if encoding == b"identity":
        return raw
    if encoding != b"gzip":
        raise RequestError(f"content-encoding {encoding.decode('latin-1')[:40]!r} is not "
                           "supported: send gzip, or none", status=415,
                           type="unsupported_media_type")
    inflate = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        body = inflate.decompress(raw, limit + 1)
    except zlib.error as e:
        raise RequestError(f"the body is not valid gzip: {e}") from None
    if len(body) > limit:
        raise RequestError(f"the body, once decompressed, is larger than the limit of {limit} "
                           "bytes (server.max_body_bytes)", status=413, type="request_too_large")
    if not inflate.eof or inflate.unused_data:
        raise RequestError("the body is not one whole gzip stream (cut short, or more after)")
    return body


def too_many(count: int, what: str) -> RequestError:
    return RequestError(f"the request holds {count} {what}, more than the {MAX_BATCH} one "
                        "request may: send them in smaller batches", status=413,
                        type="request_too_large")
