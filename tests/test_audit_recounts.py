"""Audit of issue 11's input recounts against oracles that share no code with tokometer:
image token rules worked out by hand (exact fractions) from the providers' published text,
image sizes read back by Pillow, and tool text counted with tiktoken itself."""

from __future__ import annotations

import io
import math
import struct
from fractions import Fraction

import orjson
import pytest
from PIL import Image as PILImage

from tokometer.counting import TokenizerRegistry, count_input
from tokometer.counting.images import Image, anthropic_tokens, image_size, openai_tokens


def openai_oracle(w: int, h: int, base: int, tile: int) -> int:
    """OpenAI's vision guide, in exact arithmetic: fit in 2048 x 2048, shortest side to 768
    (only ever down), 512 px tiles at `tile` tokens each, plus `base`."""
    fw, fh = Fraction(w), Fraction(h)
    s = min(Fraction(1), Fraction(2048) / max(fw, fh))
    fw, fh = fw * s, fh * s
    s = min(Fraction(1), Fraction(768) / min(fw, fh))
    fw, fh = fw * s, fh * s
    return base + tile * math.ceil(fw / 512) * math.ceil(fh / 512)


def anthropic_oracle(w: int, h: int) -> int:
    """Anthropic's vision guide: long edge at most 1568 px, at most ~1,600 tokens, then
    tokens = width * height / 750."""
    fw, fh = Fraction(w), Fraction(h)
    s = min(Fraction(1), Fraction(1568) / max(fw, fh))
    return min(1600, math.ceil(fw * s * fh * s / 750))


# Worked by hand (tiles across x down after both scalings):
SIZES = {
    (1, 1): (255, 1),  # 1 tile; 1/750 -> 1
    (10, 10): (255, 1),
    (512, 512): (255, 350),  # exactly one tile; 262144/750 = 349.5 -> 350
    (513, 513): (765, 351),  # 2 x 2 tiles
    (512, 513): (425, 351),  # 1 x 2 tiles
    (768, 768): (765, 787),  # 2 x 2; 589824/750 = 786.4
    (1024, 1024): (765, 1399),  # -> 768 x 768: 2 x 2; 1048576/750 = 1398.1
    (2048, 4096): (1105, 1600),  # -> 1024 x 2048 -> 768 x 1536: 2 x 3; over 1,600: capped
    (4096, 8192): (1105, 1600),
    (10000, 100): (765, 33),  # -> 2048 x 20.48: 4 x 1; -> 1568 x 15.68 = 32.8
    (100, 10000): (765, 33),
    (3000, 1000): (1445, 1093),  # -> 2048 x 682.7: 4 x 2; -> 1568 x 522.7 = 1092.7
}


@pytest.mark.parametrize("size", list(SIZES))
def test_openai_and_anthropic_image_rules_match_the_hand_computation(size):
    w, h = size
    gpt4o, anthropic = SIZES[size]
    assert openai_oracle(w, h, 85, 170) == gpt4o and anthropic_oracle(w, h) == anthropic
    assert openai_tokens(Image(size, "high"), "gpt-4o")[0] == gpt4o
    assert openai_tokens(Image(size, "high"), "gpt-4o-mini")[0] == openai_oracle(w, h, 2833, 5667)
    assert openai_tokens(Image(size, "low"), "gpt-4o") == (85, True)
    assert openai_tokens(Image(size, "low"), "gpt-4o-mini") == (2833, True)
    assert anthropic_tokens(Image(size)) == (anthropic, False)


def test_image_rules_hold_for_thousands_of_sizes():
    """Floating-point scaling must never tip a tile count (e.g. 2048.0000001 / 512)."""
    sizes = [(w, h) for w in range(1, 9000, 97) for h in range(1, 9000, 89)]
    sizes += [(2048 * k // d, 4096 * k // d) for k in range(1, 7) for d in (1, 3, 7)]
    for w, h in sizes:
        assert openai_tokens(Image((w, h), "high"), "gpt-4o")[0] == openai_oracle(w, h, 85, 170)
        assert anthropic_tokens(Image((w, h)))[0] == anthropic_oracle(w, h)


def test_detail_auto_is_an_estimate():
    """OpenAI: 'auto' lets the model pick low or high from the image's size, by no published
    rule; so an image sent without `detail` cannot be an exact count (a 300 x 200 image is
    85 tokens if the model picks low, 255 if high). The high count is the safe one."""
    assert openai_tokens(Image((300, 200), "auto"), "gpt-4o") == (255, False)
    assert openai_tokens(Image((300, 200), "high"), "gpt-4o") == (255, True)


def _saved(fmt: str, size: tuple[int, int], mode: str = "RGB", **options) -> bytes:
    out = io.BytesIO()
    PILImage.new(mode, size).save(out, format=fmt, **options)
    return out.getvalue()


def _exif() -> bytes:
    exif = PILImage.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "x" * 3000  # a long APP1 segment before the frame
    return exif.tobytes()


@pytest.mark.parametrize(("name", "data"), [
    ("png", _saved("PNG", (513, 77))),
    ("jpeg baseline", _saved("JPEG", (1024, 768))),
    ("jpeg progressive", _saved("JPEG", (801, 333), progressive=True)),
    ("jpeg optimized", _saved("JPEG", (333, 801), optimize=True)),
    ("jpeg exif before SOF", _saved("JPEG", (640, 480), exif=_exif())),
    ("jpeg 70 kB ICC profile", _saved("JPEG", (300, 200), icc_profile=b"\0" * 70_000)),
    ("jpeg cmyk", _saved("JPEG", (50, 60), mode="CMYK")),
    ("jpeg grey", _saved("JPEG", (51, 61), mode="L")),
    ("gif", _saved("GIF", (70, 9))),
    ("webp VP8", _saved("WEBP", (1000, 500), quality=80)),
    ("webp VP8 widest", _saved("WEBP", (16383, 2), quality=50)),
    ("webp VP8L", _saved("WEBP", (4000, 3), lossless=True)),
    ("webp VP8X alpha", _saved("WEBP", (123, 45), mode="RGBA")),
    ("webp VP8X exif", _saved("WEBP", (321, 999), exif=_exif())),
])
def test_image_sizes_match_pillow(name, data):
    assert image_size(data) == PILImage.open(io.BytesIO(data)).size


@pytest.mark.parametrize(("fmt", "options"), [
    ("PNG", {}), ("JPEG", {}), ("GIF", {}), ("WEBP", {"quality": 80}),
    ("WEBP", {"lossless": True}), ("WEBP", {"exif": _exif()}),
])
def test_a_truncated_header_gives_no_size_never_a_wrong_one(fmt, options):
    """A header cut short anywhere: the true size or None (then the rule's most is reserved);
    a size read from missing bytes (e.g. 1 x 1) would under-reserve and under-bill."""
    data = _saved(fmt, (700, 300), **options)
    for cut in range(len(data[:64])):
        assert image_size(data[:cut]) in (None, (700, 300)), (fmt, options, cut)


def test_hostile_sizes():
    png = bytearray(_saved("PNG", (5, 5)))
    png[16:24] = struct.pack(">II", 2**31 - 1, 2**31 - 1)
    huge = image_size(bytes(png))
    assert huge == (2**31 - 1, 2**31 - 1)
    assert openai_tokens(Image(huge, "high"), "gpt-4o") == (765, True)  # -> 2048 x 2048 -> 768
    assert anthropic_tokens(Image(huge)) == (1600, False)
    png[16:24] = struct.pack(">II", 0, 5)
    assert image_size(bytes(png)) is None
    assert image_size(b"GIF89a\x00\x00\x05\x00") is None
    assert image_size(b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x00\x10") is None  # zero height
    assert image_size(b"\xff\xd8" + b"\xff" * 100_000) is None  # fill bytes only: bounded
    assert image_size(b"\xff\xd8" + b"\xff\xd0" * 5000 + b"\xff\xc0\x00\x11\x08\x00\x10\x00\x20"
                      ) is None  # a frame after more markers than any real file: not searched


@pytest.fixture(scope="module")
def tok(tmp_path_factory, o200k):
    return TokenizerRegistry(tmp_path_factory.mktemp("tokenizers")).get("tiktoken:o200k_base")


def _chat(o200k, messages: list[tuple[str, str]]) -> int:
    return 3 + sum(3 + len(o200k.encode(r)) + len(o200k.encode(c)) for r, c in messages)


def test_tools_calls_and_results_are_counted_with_tiktoken_and_never_exact(tok, o200k):
    tool = {"type": "function", "function": {"name": "f", "description": "Ünïcode ✓ " * 50,
                                             "parameters": {"type": "object"}}}
    call = {"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": '{"q": "日本語"}'}}
    body = {"tools": [tool], "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "result ✓"}]}
    count = count_input(tok, "openai", "chat", body, "gpt-4o")
    tooling = [orjson.dumps(tool).decode(), orjson.dumps(call["function"]).decode(), "result ✓"]
    expected = _chat(o200k, [("user", "hi"), ("assistant", "")])
    expected += sum(len(o200k.encode(t)) for t in tooling)
    assert (count.tokens, count.exact) == (expected, False)
    items = {"input": [{"role": "user", "content": "hi"},
                       {"type": "function_call", "call_id": "c1", "name": "f",
                        "arguments": '{"q": 1}'},
                       {"type": "function_call_output", "call_id": "c1", "output": "ok"}]}
    count = count_input(tok, "openai", "responses", items, "gpt-4.1")
    expected = _chat(o200k, [("user", "hi")]) + len(o200k.encode('{"name":"f","arguments":'
                                                                 '"{\\"q\\": 1}"}')) + 1
    assert (count.tokens, count.exact) == (expected, False)


SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": {
    "type": "object", "properties": {"name": {"type": "string", "description": "Full name"},
                                     "age": {"type": "integer"}},
    "required": ["name", "age"], "additionalProperties": False}}}


def test_a_structured_output_schema_is_billed_input_and_an_estimate(tok, o200k):
    """OpenAI adds a `response_format` / `text.format` JSON schema to the input it bills, by no
    published rule (openai-cookbook issue 2140): the recount must hold it and be an estimate,
    else a request with a large schema is `counted` exact and reserved as almost nothing."""
    plain = count_input(tok, "openai", "chat", {"messages": [{"role": "user", "content": "hi"}]},
                        "gpt-4o")
    chat = count_input(tok, "openai", "chat", {"messages": [{"role": "user", "content": "hi"}],
                                               "response_format": SCHEMA}, "gpt-4o")
    assert (chat.tokens, chat.exact) == (plain.tokens + len(o200k.encode(orjson.dumps(
        SCHEMA).decode())), False)
    fmt = {"type": "json_schema", **SCHEMA["json_schema"]}
    responses = count_input(tok, "openai", "responses", {"input": "hi", "text": {"format": fmt}},
                            "gpt-4.1")
    assert (responses.tokens, responses.exact) == (plain.tokens + len(o200k.encode(orjson.dumps(
        fmt).decode())), False)
    text = count_input(tok, "openai", "chat", {"messages": [{"role": "user", "content": "hi"}],
                                               "response_format": {"type": "text"}}, "gpt-4o")
    assert (text.tokens, text.exact) == (plain.tokens, True)


def test_openai_chat_accounting_is_not_exact_for_the_anthropic_api(tmp_path, o200k):
    """OpenAI's published per-message framing is OpenAI's chat format: a model served over the
    Anthropic Messages API with an o200k tokenizer is counted by it only as an estimate."""
    from tokometer.counting import Recounter

    recounter = Recounter(TokenizerRegistry(tmp_path))
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    assert recounter.input("tiktoken:o200k_base", None, "chat", body).exact
    assert not recounter.input("tiktoken:o200k_base", None, "messages", body).exact
