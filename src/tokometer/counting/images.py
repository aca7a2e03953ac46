"""What an image in a prompt costs in input tokens, by each provider's published rule.

The size comes from the image itself when the request carries its bytes (a `data:` URL or
Anthropic's base64 source): PNG, JPEG, GIF and WebP headers are read here. An image known
only by URL or file id has no size, and is counted at the rule's largest possible cost (an
estimate that a budget can safely reserve).
"""

from __future__ import annotations

import binascii
import math
import struct
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

# OpenAI (vision guide, "Calculating costs"): "low will receive a 512px x 512px version of the
# image ... 85 tokens"; for high (and auto) "the image is scaled to fit within a 2048 x 2048
# square, maintaining aspect ratio. Then, it's scaled such that the shortest side of the image
# is 768px long. Finally, we count how many 512px squares the image consists of. Each of those
# squares costs 170 tokens. Another 85 tokens are always added to the final total."
# Images are only ever scaled down, as in the guide's worked examples.
_OPENAI_TILE_PX, _OPENAI_FIT, _OPENAI_SHORT = 512, 2048, 768
_OPENAI_MOST_TILES = 2 * 4  # 768 x 2048 after scaling
# The base and per-tile tokens of the models billed by that rule (gpt-4o-mini bills the same
# image as many more, cheaper tokens). Others (gpt-4.1-mini and -nano, o4-mini: 32-pixel
# patches; o-series, gpt-5: rates of their own) are estimated by the gpt-4o rates. The first
# matching prefix applies.
_TILE_RATES: tuple[tuple[str, tuple[int, int] | None], ...] = (
    ("gpt-4o-mini", (2833, 5667)), ("gpt-4o", (85, 170)), ("gpt-4.1-mini", None),
    ("gpt-4.1-nano", None), ("gpt-4.1", (85, 170)), ("gpt-4.5", (85, 170)),
    ("gpt-4-turbo", (85, 170)),
)
_ESTIMATE_RATES = (85, 170)

# Anthropic (vision guide, "Evaluate image size"): "If your image's long edge is more than
# 1568 pixels, or your image is more than ~1,600 tokens, it will first be scaled down,
# preserving aspect ratio, until it's within the size limits", and "you can estimate the
# number of tokens used through this algorithm: tokens = (width px * height px)/750".
# Anthropic calls it an estimate, so these counts are never exact.
_ANTHROPIC_EDGE, _ANTHROPIC_MOST, _ANTHROPIC_PX_PER_TOKEN = 1568, 1600, 750


@dataclass(frozen=True, slots=True)
class Image:
    """An image in a prompt: its pixel size when known, and OpenAI's `detail` setting."""

    size: tuple[int, int] | None
    detail: str = "auto"


def openai_tokens(image: Image, model: str | None) -> tuple[int, bool]:
    """(tokens, exact) by OpenAI's tile rule, exact for the models known to follow it.

    `auto` (the default) lets the model choose low or high by the image's size, under no
    published rule: it is counted as high, the larger, and is an estimate.
    """
    rates = _tile_rates(model)
    base, tile = rates or _ESTIMATE_RATES
    if image.detail == "low":
        return base, rates is not None
    if image.size is None:
        return base + tile * _OPENAI_MOST_TILES, False
    w, h = map(float, image.size)
    scale = min(1.0, _OPENAI_FIT / max(w, h))
    w, h = w * scale, h * scale
    scale = min(1.0, _OPENAI_SHORT / min(w, h))
    w, h = w * scale, h * scale
    tiles = math.ceil(w / _OPENAI_TILE_PX) * math.ceil(h / _OPENAI_TILE_PX)
    return base + tile * tiles, rates is not None and image.detail == "high"


def _tile_rates(model: str | None) -> tuple[int, int] | None:
    name = (model or "").rsplit("/", 1)[-1].lower()  # "openai/gpt-4o" as routers name it
    return next((rates for prefix, rates in _TILE_RATES if name.startswith(prefix)), None)


def anthropic_tokens(image: Image) -> tuple[int, bool]:
    """(tokens, exact=False) by Anthropic's estimate after its resize."""
    if image.size is None:
        return _ANTHROPIC_MOST, False
    w, h = image.size
    scale = min(1.0, _ANTHROPIC_EDGE / max(w, h),
                math.sqrt(_ANTHROPIC_MOST * _ANTHROPIC_PX_PER_TOKEN / (w * h)))
    tokens = math.ceil(w * scale * h * scale / _ANTHROPIC_PX_PER_TOKEN)
    return min(tokens, _ANTHROPIC_MOST), False


def data_url_bytes(url: str) -> bytes | None:
    """The bytes of a `data:` URL, or None for any other URL or a malformed one."""
    if not url.startswith("data:") or "," not in url:
        return None
    header, _, payload = url.partition(",")
    try:
        if header.endswith(";base64"):
            return binascii.a2b_base64(payload)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        return None


def base64_bytes(data: str) -> bytes | None:
    try:
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        return None


def image_size(data: bytes | None) -> tuple[int, int] | None:
    """Width and height from a PNG, JPEG, GIF or WebP header; None if unreadable or empty."""
    if not data:
        return None
    try:
        size = _size(data)
    except (struct.error, IndexError):
        return None
    return size if size and size[0] > 0 and size[1] > 0 else None


def _size(data: bytes) -> tuple[int, int] | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return struct.unpack("<HH", data[6:10])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: after the frame tag
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit sizes minus one
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
        w_low, w_high, h_low, h_high = struct.unpack("<HBHB", data[24:30])
        return w_low + (w_high << 16) + 1, h_low + (h_high << 16) + 1
    return None


# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_MAX_MARKERS = 4096


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    for _ in range(_JPEG_MAX_MARKERS):  # real files have a few dozen before their frame
        if i + 4 > len(data) or data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_FRAMES:
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            i += 2
            continue
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None
