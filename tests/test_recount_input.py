"""Input recounts count everything a provider bills: tool definitions, tool calls and results,
and images by the provider's published rule; what follows no exact rule is an estimate."""

from __future__ import annotations

import base64
import io
import math

import orjson
import pytest
from PIL import Image as PILImage

from tokometer.counting import TokenizerRegistry, count_input
from tokometer.counting.images import Image, anthropic_tokens, image_size, openai_tokens

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city, today.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
USER = {"role": "user", "content": "What is the weather in Paris?"}


@pytest.fixture(scope="module")
def tok(tmp_path_factory, o200k):
    return TokenizerRegistry(tmp_path_factory.mktemp("tokenizers")).get("tiktoken:o200k_base")


def chat_formula(o200k, messages: list[tuple[str, str]]) -> int:
    """OpenAI's published chat accounting, counted with tiktoken itself."""
    return 3 + sum(3 + len(o200k.encode(r)) + len(o200k.encode(c)) for r, c in messages)


def n(o200k, value) -> int:
    return len(o200k.encode(value if isinstance(value, str) else orjson.dumps(value).decode()))


def image_bytes(fmt: str, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", size, (200, 30, 30)).save(out, format=fmt)
    return out.getvalue()


def data_url(fmt: str, size: tuple[int, int]) -> str:
    encoded = base64.b64encode(image_bytes(fmt, size)).decode()
    return f"data:image/{fmt.lower()};base64,{encoded}"


def test_plain_messages_stay_exact(tok, o200k):
    count = count_input(tok, "openai", "chat", {"messages": [USER]})
    assert count.tokens == chat_formula(o200k, [("user", USER["content"])]) and count.exact


@pytest.mark.parametrize("key", ["tools", "functions"])
def test_tool_definitions_are_counted_and_make_it_an_estimate(tok, o200k, key):
    tool = WEATHER if key == "tools" else WEATHER["function"]
    count = count_input(tok, "openai", "chat", {"messages": [USER], key: [tool, tool]})
    assert count.tokens == chat_formula(o200k, [("user", USER["content"])]) + 2 * n(o200k, tool)
    assert not count.exact


def test_tool_calls_and_results_in_chat_history_are_counted(tok, o200k):
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    body = {"messages": [
        USER,
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": call}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]}
    count = count_input(tok, "openai", "chat", body)
    assert count.tokens == (chat_formula(o200k, [("user", USER["content"]), ("assistant", "")])
                            + n(o200k, call) + n(o200k, "Sunny, 21 C"))
    assert not count.exact


def test_responses_function_call_items_are_counted(tok, o200k):
    body = {"instructions": "Be brief.", "tools": [WEATHER], "input": [
        {"role": "user", "content": [{"type": "input_text", "text": USER["content"]}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather",
         "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "Sunny, 21 C"},
    ]}
    count = count_input(tok, "openai", "responses", body)
    call = {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert count.tokens == (chat_formula(o200k, [("system", "Be brief."),
                                                 ("user", USER["content"])])
                            + n(o200k, WEATHER) + n(o200k, call) + n(o200k, "Sunny, 21 C"))
    assert not count.exact


def test_anthropic_tools_tool_use_and_tool_result_blocks_are_counted():
    tool = {"name": "get_weather", "description": "The weather in a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    use = {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Paris"}}
    body = {"system": "Be brief.", "tools": [tool], "messages": [
        USER,
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1",
                                      "content": [{"type": "text", "text": "Sunny, 21 C"}]}]},
    ]}
    without = count_input(None, None, "messages", {"system": "Be brief.", "messages": [USER]})
    count = count_input(None, None, "messages", body)
    estimate = [orjson.dumps(tool).decode(), orjson.dumps({"name": "get_weather",
                                                           "input": {"city": "Paris"}}).decode(),
                "Sunny, 21 C"]
    # Two more (empty) messages at 4 tokens each, and the tool text at 4 characters a token.
    assert count.tokens == without.tokens + 2 * 4 + sum(math.ceil(len(t) / 4) for t in estimate)
    assert not count.exact


# OpenAI's worked examples (vision guide, "Calculating costs").
@pytest.mark.parametrize(("size", "detail", "tokens"), [
    ((1024, 1024), "high", 765),  # scaled to 768 x 768: 4 tiles
    ((2048, 4096), "high", 1105),  # 1024 x 2048, then 768 x 1536: 6 tiles
    ((4096, 8192), "low", 85),
    ((300, 200), "high", 255),  # never scaled up: 1 tile
    ((768, 2048), "high", 1445),  # the most any image can cost: 8 tiles
])
def test_openai_images_follow_the_tile_rule(size, detail, tokens):
    for model in ("gpt-4o", "gpt-4o-2024-11-20", "openai/gpt-4.1", "gpt-4.5-preview"):
        assert openai_tokens(Image(size, detail), model) == (tokens, True)


def test_gpt_4o_mini_bills_its_own_tile_rates_and_other_models_are_estimates():
    assert openai_tokens(Image((1024, 1024), "high"), "gpt-4o-mini") == (2833 + 4 * 5667, True)
    assert openai_tokens(Image((1024, 1024), "low"), "gpt-4o-mini-2024-07-18") == (2833, True)
    for model in ("gpt-4.1-mini", "gpt-4.1-nano", "o4-mini", "o3", "gpt-5", None):
        assert openai_tokens(Image((1024, 1024), "high"), model) == (765, False)
        assert openai_tokens(Image(None, "low"), model) == (85, False)


# Anthropic's table (vision guide): 200x200 ~54, 1000x1000 ~1334, 1092x1092 ~1590 tokens.
@pytest.mark.parametrize(("size", "tokens"), [((200, 200), 54), ((1000, 1000), 1334),
                                              ((1092, 1092), 1590), ((4000, 3000), 1600)])
def test_anthropic_images_follow_its_estimate(size, tokens):
    assert anthropic_tokens(Image(size)) == (tokens, False)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
@pytest.mark.parametrize("size", [(1, 1), (640, 480), (3001, 17)])
def test_image_sizes_are_read_from_the_image_itself(fmt, size):
    assert image_size(image_bytes(fmt, size)) == size


def test_lossless_and_extended_webp_sizes_are_read():
    out = io.BytesIO()
    PILImage.new("RGB", (333, 77)).save(out, format="WEBP", lossless=True)
    assert image_size(out.getvalue()) == (333, 77)
    out = io.BytesIO()
    PILImage.new("RGBA", (123, 45), (0, 0, 0, 0)).save(out, format="WEBP")  # alpha: VP8X
    assert image_size(out.getvalue()) == (123, 45)


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0\x00", b"GIF8",
                                  b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"not an image" * 10])
def test_unreadable_images_have_no_size(data):
    assert image_size(data) is None


def test_images_in_chat_are_counted_exactly_when_their_size_is_known(tok, o200k):
    def body(url: str, detail: str = "high") -> dict:
        return {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": url, "detail": detail}}]}]}

    text = chat_formula(o200k, [("user", "What is this?")])

    def count(body: dict) -> tuple[int, bool]:
        counted = count_input(tok, "openai", "chat", body, "gpt-4o")
        return counted.tokens, counted.exact

    assert count(body(data_url("PNG", (1024, 1024)))) == (text + 765, True)
    assert count(body("https://example.com/a.png", "low")) == (text + 85, True)
    assert count(body("https://example.com/a.png")) == (text + 1445, False)  # the most
    assert count(body("data:image/png;base64,!!!!")) == (text + 1445, False)


def test_images_in_responses_and_anthropic_requests_are_counted(tok, o200k):
    url = data_url("JPEG", (2048, 4096))
    responses = count_input(tok, "openai", "responses", {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": url, "detail": "high"}]}]}, "gpt-4.1")
    assert responses.tokens == chat_formula(o200k, [("user", "")]) + 1105 and responses.exact
    source = {"type": "base64", "media_type": "image/png",
              "data": base64.b64encode(image_bytes("PNG", (1000, 1000))).decode()}
    plain = count_input(None, None, "messages", {"messages": [{"role": "user", "content": []}]})
    anthropic = count_input(None, None, "messages", {"messages": [{"role": "user", "content": [
        {"type": "image", "source": source}]}]})
    assert anthropic.tokens == plain.tokens + 1334 and not anthropic.exact


def test_images_are_estimates_for_models_outside_openais_rule(tok, o200k):
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url("PNG", (1024, 1024)),
                                            "detail": "high"}}]}]}
    assert count_input(tok, "openai", "chat", body, "gpt-4o").exact
    assert not count_input(tok, "openai", "chat", body, "gpt-4.1-mini").exact
    assert not count_input(tok, "gemma", "chat", body, "gemma-3-4b").exact


def test_the_gateway_recount_bills_tools_and_images(gateway, o200k):
    """A provider that reports no usage: the event's input holds the tools and the image."""
    def event_for(**extra) -> dict:
        r = gateway.post("/v1/chat/completions", {"model": "vision-no-usage", **extra})
        assert r.status_code == 200, r.text
        return gateway.event(r.headers["x-tokometer-event-id"])

    text = chat_formula(o200k, [("user", USER["content"])])
    tools = event_for(messages=[USER], tools=[WEATHER])
    assert tools["input_tokens"] == text + n(o200k, WEATHER)
    assert tools["usage_source"] == "estimated" and tools["counted_input_tokens"] is None
    image = {"type": "image_url", "image_url": {"url": data_url("PNG", (2048, 4096)),
                                                "detail": "high"}}
    seen = event_for(messages=[{"role": "user", "content": [
        {"type": "text", "text": USER["content"]}, image]}])
    assert seen["input_tokens"] == seen["counted_input_tokens"] == text + 1105
    assert seen["usage_source"] == "counted"


def test_other_kinds_of_content_make_it_an_estimate(tok, o200k):
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [
        {"type": "summary_text", "text": "Thought about the weather."}]}
    count = count_input(tok, "openai", "responses", {"input": [USER, reasoning]})
    assert count.tokens == chat_formula(o200k, [("user", USER["content"])]) + n(o200k, reasoning)
    assert not count.exact
    audio = {"role": "user", "content": [{"type": "input_audio",
                                          "input_audio": {"data": "AAAA", "format": "wav"}}]}
    assert not count_input(tok, "openai", "chat", {"messages": [audio]}).exact
