"""Built-in knowledge of model families, as data: name prefix → vendor, country, tokenizer.

A config's `origin` / `tokenizer` on a model always wins over this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..config import Model


@dataclass(frozen=True, slots=True)
class VendorInfo:
    vendor: str
    origin: str  # ISO 3166-1 alpha-2 of the vendor
    tokenizer: str | None  # exact offline tokenizer spec, when a package ships one


# splintr compiles the OpenAI vocabularies in: exact, fast, and a quarter of tiktoken's memory.
_O200K, _CL100K = "splintr:o200k_base", "splintr:cl100k_base"

# Longest matching prefix wins; names are matched lower-cased.
_FAMILIES: dict[str, VendorInfo] = {
    "gpt-4o": VendorInfo("openai", "US", _O200K),
    "gpt-4.1": VendorInfo("openai", "US", _O200K),
    "gpt-4.5": VendorInfo("openai", "US", _O200K),
    "gpt-5": VendorInfo("openai", "US", _O200K),
    "gpt-oss": VendorInfo("openai", "US", _O200K),
    "o1": VendorInfo("openai", "US", _O200K),
    "o3": VendorInfo("openai", "US", _O200K),
    "o4": VendorInfo("openai", "US", _O200K),
    "chatgpt": VendorInfo("openai", "US", _O200K),
    "gpt-4": VendorInfo("openai", "US", _CL100K),
    "gpt-3.5": VendorInfo("openai", "US", _CL100K),
    "text-embedding": VendorInfo("openai", "US", _CL100K),
    "claude": VendorInfo("anthropic", "US", None),
    "deepseek": VendorInfo("deepseek", "CN", "deepseek:v3"),
    "qwen": VendorInfo("alibaba", "CN", "qwen:qwen"),
    "qwq": VendorInfo("alibaba", "CN", "qwen:qwen"),
    "kimi": VendorInfo("moonshot", "CN", "splintr:kimi_k2"),
    "moonshot": VendorInfo("moonshot", "CN", None),
    "glm": VendorInfo("zhipu", "CN", None),
    "minimax": VendorInfo("minimax", "CN", None),
    "abab": VendorInfo("minimax", "CN", None),
    "doubao": VendorInfo("bytedance", "CN", None),
    "mistral": VendorInfo("mistral", "FR", None),
    "magistral": VendorInfo("mistral", "FR", None),
    "ministral": VendorInfo("mistral", "FR", None),
    "codestral": VendorInfo("mistral", "FR", None),
    "pixtral": VendorInfo("mistral", "FR", None),
    "open-mistral": VendorInfo("mistral", "FR", None),
    "gemini": VendorInfo("google", "US", None),
    "gemma": VendorInfo("google", "US", None),
    "llama-3": VendorInfo("meta", "US", "splintr:llama3"),
    "llama3": VendorInfo("meta", "US", "splintr:llama3"),
    "llama": VendorInfo("meta", "US", None),
}
_PREFIXES = sorted(_FAMILIES, key=len, reverse=True)


@lru_cache(maxsize=4096)
def vendor_of(model: str) -> VendorInfo | None:
    name = model.lower().rsplit("/", 1)[-1]
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return _FAMILIES[prefix]
    return None


def origin_of(model: Model, route_model: str) -> str | None:
    """The vendor's country for a configured model served as `route_model`: config first."""
    if model.origin:
        return model.origin
    info = vendor_of(route_model)
    return info.origin if info else None
