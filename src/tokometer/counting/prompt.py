"""A chat-like request body → everything in it the provider bills as input.

Three parts: the conversation as plain {role, content[, name]} messages (what a chat template
renders), the tool definitions, calls and results and any structured-output format as text
(billed, under no published rule), and the images (billed by the provider's image rule, see
images.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .images import Image, base64_bytes, data_url_bytes, image_size

# Content blocks whose text a chat template renders as it is.
_TEXT_BLOCKS = frozenset({None, "text", "input_text", "output_text"})


@dataclass(slots=True)
class Prompt:
    messages: list[dict[str, str]] = field(default_factory=list)
    tooling: list[str] = field(default_factory=list)  # definitions, calls, results, other items
    images: list[Image] = field(default_factory=list)
    unknown_blocks: bool = False  # blocks of other kinds (audio, files, ...): text read only


def prompt_of(operation: str, body: dict[str, Any]) -> Prompt:
    """What a chat, responses or messages request sends the model."""
    prompt = Prompt()
    if operation == "messages" and body.get("system"):
        prompt.messages.append({"role": "system", "content": _content(prompt, body["system"])})
    if operation == "responses":
        if body.get("instructions"):
            prompt.messages.append({"role": "system",
                                    "content": _content(prompt, body["instructions"])})
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
    else:
        items = body.get("messages")
    for key in ("tools", "functions"):  # `functions`: OpenAI's older name for tools
        if isinstance(body.get(key), list):
            prompt.tooling.extend(_json(tool) for tool in body[key])
    # A structured-output format (chat `response_format`, Responses `text.format`) is billed
    # as input too, like a tool definition.
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        prompt.tooling.append(_json(fmt))
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict):
            _add_item(prompt, item)
    return prompt


def _add_item(prompt: Prompt, item: dict[str, Any]) -> None:
    kind = item.get("type")
    if kind == "function_call":  # Responses: a call the model made
        prompt.tooling.append(_json({"name": item.get("name"),
                                     "arguments": item.get("arguments")}))
        return
    if kind == "function_call_output":  # Responses: its result
        prompt.tooling.append(_content(prompt, item.get("output")))
        return
    if kind not in (None, "message"):  # Responses: reasoning, built-in tool calls, ...
        prompt.tooling.append(_json(item))
        return
    role = str(item.get("role", "user"))
    content = _content(prompt, item.get("content"))
    if role in ("tool", "function"):  # OpenAI chat: a tool's result
        prompt.tooling.append(content)
        return
    message = {"role": role, "content": content}
    if item.get("name"):
        message["name"] = str(item["name"])
    prompt.messages.append(message)
    if isinstance(item.get("tool_calls"), list):  # OpenAI chat: calls the assistant made
        prompt.tooling.extend(_json(call.get("function") if isinstance(call, dict) else call)
                              for call in item["tool_calls"])
    if isinstance(item.get("function_call"), dict):  # the older single call
        prompt.tooling.append(_json(item["function_call"]))


def _content(prompt: Prompt, content: Any) -> str:
    """The text of a message's content; its images and tool blocks go to `prompt`."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_block(prompt, b) for b in content)
    return str(content)


def _block(prompt: Prompt, block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind in ("image_url", "input_image", "image"):
        prompt.images.append(_image(block))
        return ""
    if kind == "tool_use":  # Anthropic: a call the model made
        prompt.tooling.append(_json({"name": block.get("name"), "input": block.get("input")}))
        return ""
    if kind == "tool_result":  # Anthropic: its result, text and images
        prompt.tooling.append(_content(prompt, block.get("content")))
        return ""
    if kind not in _TEXT_BLOCKS:
        prompt.unknown_blocks = True
    for key in ("text", "content", "input_text"):
        value = block.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return _content(prompt, value)
    return ""


def _image(block: dict[str, Any]) -> Image:
    """An image block of any of the three APIs, with its size if its bytes are here."""
    image_url = block.get("image_url")
    if isinstance(image_url, dict):  # chat: {"image_url": {"url": ..., "detail": ...}}
        url, detail = image_url.get("url"), image_url.get("detail")
    else:
        url, detail = image_url, block.get("detail")
    source = block.get("source")
    data = None
    if isinstance(url, str):
        data = data_url_bytes(url)
    elif isinstance(source, dict) and isinstance(source.get("data"), str):  # Anthropic base64
        data = base64_bytes(source["data"])
    return Image(image_size(data), detail if isinstance(detail, str) else "auto")


def _json(value: Any) -> str:
    # Raises for values nested deeper than orjson writes: callers then estimate by size.
    return orjson.dumps(value).decode()
