"""The TOML config, validated once at start-up into frozen Settings.

Every mistake is one ConfigError naming the file, the key and what is wrong. Environment
variables (provider API keys) are read here and nowhere else.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

APIS = ("openai", "anthropic")
_Named = TypeVar("_Named", "Provider", "Model")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True, slots=True)
class Price:
    """A tariff in the server currency per million tokens."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal


@dataclass(frozen=True, slots=True)
class Launch:
    """A local llama.cpp model server that `tokometer serve` starts before the gateway."""

    gguf: str  # a path to a .gguf file, or a PyPI package whose assemble() writes one
    chat_format: str
    n_ctx: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    api: str
    base_url: str
    api_key_env: str | None
    api_key: str | None
    region: str | None
    price_provider: str | None  # genai-prices provider id, when it differs from `name`
    launch: Launch | None

    @property
    def usable(self) -> bool:
        """False when the provider needs a key whose environment variable is not set."""
        return self.api_key_env is None or self.api_key is not None


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    model: str


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    routes: tuple[Route, ...]
    origin: str | None
    tokenizer: str | None
    chat_template: str | None
    price: Price | None


@dataclass(frozen=True, slots=True)
class Server:
    host: str = "127.0.0.1"
    port: int = 4000
    store: Path = Path("tokometer.db")
    currency: str = "USD"
    data_dir: Path = Path("data")
    max_body_bytes: int = 10_000_000
    upstream_timeout: float = 600.0  # seconds a provider may stay silent
    connect_timeout: float = 10.0
    durability: str = "process"  # "process": survives kill -9; "power": fsync every commit


@dataclass(frozen=True, slots=True)
class Settings:
    path: Path
    server: Server
    providers: Mapping[str, Provider]
    models: Mapping[str, Model] = field(default_factory=dict)


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a config file; raise ConfigError naming the bad key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(raw, path, os.environ if environ is None else environ)


def parse(raw: dict[str, Any], path: Path, environ: Mapping[str, str]) -> Settings:
    cfg = _Reader(raw, str(path))
    cfg.only("server", "providers", "models")
    base = path.resolve().parent
    server = _server(cfg.table("server"), base)
    providers = _by_name(cfg.tables("providers"), lambda p: _provider(p, environ), "provider")
    models = _by_name(cfg.tables("models"), lambda m: _model(m, providers), "model")
    return Settings(path=path, server=server, providers=providers, models=models)


def _by_name(tables: list[_Reader], build: Callable[[_Reader], _Named],
             kind: str) -> dict[str, _Named]:
    out: dict[str, _Named] = {}
    for table in tables:
        item = build(table)
        if item.name in out:
            raise table.error("name", f"duplicate {kind} {item.name!r}")
        out[item.name] = item
    return out


def _server(s: _Reader, base: Path) -> Server:
    s.only("host", "port", "store", "currency", "data_dir", "max_body_bytes",
           "upstream_timeout", "connect_timeout", "durability")
    d = Server()
    store = s.str("store", "sqlite:///tokometer.db")
    if not store.startswith("sqlite:///"):
        raise s.error("store", f"expected 'sqlite:///PATH', got {store!r}")
    currency = s.str("currency", d.currency)
    if not _CURRENCY.match(currency):
        raise s.error("currency", f"expected an ISO 4217 code like 'USD', got {currency!r}")
    durability = s.str("durability", d.durability)
    if durability not in ("process", "power"):
        raise s.error("durability", f"expected 'process' or 'power', got {durability!r}")
    return Server(
        host=s.str("host", d.host),
        port=s.int("port", d.port, lo=0, hi=65535),
        store=base / store.removeprefix("sqlite:///"),
        currency=currency,
        data_dir=base / s.str("data_dir", str(d.data_dir)),
        max_body_bytes=s.int("max_body_bytes", d.max_body_bytes, lo=1),
        upstream_timeout=s.number("upstream_timeout", d.upstream_timeout),
        connect_timeout=s.number("connect_timeout", d.connect_timeout),
        durability=durability,
    )


def _provider(p: _Reader, environ: Mapping[str, str]) -> Provider:
    p.only("name", "api", "base_url", "api_key_env", "region", "price_provider", "launch")
    api = p.str("api")
    if api not in APIS:
        raise p.error("api", f"expected one of {', '.join(APIS)}, got {api!r}")
    base_url = p.str("base_url")
    if not base_url.startswith(("http://", "https://")):
        raise p.error("base_url", f"expected an http(s) URL, got {base_url!r}")
    key_env = p.opt_str("api_key_env")
    launch = None
    if "launch" in p.raw:
        launch_cfg = p.table("launch")
        launch_cfg.only("gguf", "chat_format", "n_ctx")
        host, _, port = base_url.split("://", 1)[1].split("/", 1)[0].partition(":")
        launch = Launch(
            gguf=launch_cfg.str("gguf"),
            chat_format=launch_cfg.str("chat_format"),
            n_ctx=launch_cfg.int("n_ctx", 2048, lo=16),
            host=host,
            port=int(port or 80),
        )
    return Provider(
        name=p.str("name"),
        api=api,
        base_url=base_url.rstrip("/"),
        api_key_env=key_env,
        api_key=environ.get(key_env) if key_env else None,
        region=_country(p, "region"),
        price_provider=p.opt_str("price_provider"),
        launch=launch,
    )


def _model(m: _Reader, providers: Mapping[str, Provider]) -> Model:
    m.only("name", "routes", "origin", "tokenizer", "chat_template", "price")
    name = m.str("name")
    routes = []
    for r in m.tables("routes"):
        r.only("provider", "model")
        provider_name = r.str("provider")
        if provider_name not in providers:
            known = ", ".join(providers) or "none"
            raise r.error("provider", f"unknown provider {provider_name!r} (configured: {known})")
        routes.append(Route(providers[provider_name], r.str("model", name)))
    if not routes:
        raise m.error("routes", "a model needs at least one route")
    price = None
    if "price" in m.raw:
        pr = m.table("price")
        pr.only("input", "output", "cache_read", "cache_write")
        inp = pr.money("input")
        price = Price(input=inp, output=pr.money("output"), cache_read=pr.money("cache_read", inp),
                      cache_write=pr.money("cache_write", inp))
    tokenizer = m.opt_str("tokenizer")
    if tokenizer is not None and ":" not in tokenizer:
        raise m.error("tokenizer", f"expected 'KIND:NAME' (tiktoken:, hf:, gguf:, splintr:, "
                      f"deepseek:), got {tokenizer!r}")
    return Model(name=name, routes=tuple(routes), origin=_country(m, "origin"),
                 tokenizer=tokenizer, chat_template=m.opt_str("chat_template"), price=price)


def _country(r: _Reader, key: str) -> str | None:
    value = r.opt_str(key)
    if value is not None and not _COUNTRY.match(value):
        raise r.error(key, f"expected an ISO 3166-1 alpha-2 code like 'US', got {value!r}")
    return value


class _Reader:
    """Typed access to one TOML table that knows its own dotted path for error messages."""

    def __init__(self, raw: Any, where: str, key_path: str = ""):
        self.raw = raw
        self.where = where
        self.key_path = key_path

    def error(self, key: str, what: str) -> ConfigError:
        full = f"{self.key_path}.{key}" if self.key_path else key
        return ConfigError(f"{self.where}: {full}: {what}")

    def only(self, *allowed: str) -> None:
        for key in self.raw:
            if key not in allowed:
                raise self.error(key, f"unknown key (expected one of: {', '.join(allowed)})")

    def _get(self, key: str, default: Any, types: tuple[type, ...], what: str) -> Any:
        if key not in self.raw:
            if default is _REQUIRED:
                raise self.error(key, "missing")
            return default
        value = self.raw[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise self.error(key, f"expected {what}, got {value!r}")
        return value

    def str(self, key: str, default: Any = None) -> str:
        return self._get(key, _REQUIRED if default is None else default, (str,), "a string")

    def opt_str(self, key: str) -> str | None:
        return self._get(key, None, (str,), "a string")

    def int(self, key: str, default: int, lo: int, hi: int | None = None) -> int:
        value = self._get(key, default, (int,), "an integer")
        if value < lo or (hi is not None and value > hi):
            raise self.error(key, f"{value} is out of range")
        return value

    def number(self, key: str, default: float) -> float:
        value = self._get(key, default, (int, float, Decimal), "a number")
        if value <= 0:
            raise self.error(key, "must be positive")
        return float(value)

    def money(self, key: str, default: Decimal | None = None) -> Decimal:
        value = self._get(key, _REQUIRED if default is None else default,
                          (int, Decimal), "a number (price per 1M tokens)")
        if value < 0:
            raise self.error(key, "a price cannot be negative")
        return Decimal(value)

    def table(self, key: str) -> _Reader:
        value = self._get(key, {}, (dict,), "a table")
        return _Reader(value, self.where, f"{self.key_path}.{key}" if self.key_path else key)

    def tables(self, key: str) -> list[_Reader]:
        value = self._get(key, [], (list,), "an array of tables")
        out = []
        for i, item in enumerate(value):
            path = f"{self.key_path}.{key}" if self.key_path else key
            if not isinstance(item, dict):
                raise ConfigError(f"{self.where}: {path}[{i}]: expected a table, got {item!r}")
            out.append(_Reader(item, self.where, f"{path}[{i}]"))
        return out


_REQUIRED = object()
