"""The TOML config, validated once at start-up into frozen Settings.

Every mistake is one ConfigError naming the file, the key and what is wrong. Environment
variables (the config's own path, provider API keys, the admin token, the signing key) are
read here and nowhere else.
"""

from __future__ import annotations

import builtins
import hashlib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pycountry

from .amounts import amount
from .errors import ConfigError, RequestError
from .events import decimal_str as decimal_text

APIS = ("openai", "anthropic")
STRATEGIES = ("order", "price", "latency")
PERIODS = ("day", "week", "month", "total")
SCOPES = ("tenant", "app", "key_id")
TOKENS = "tokens"  # the budget unit that counts tokens instead of money
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # hosts whose model servers can be measured here
DEFAULT_NOTICE = "[AI-generated] "  # an explicit label's text when the config gives none
# Budget units that count a request's energy (`energy_wh`) or emissions (`co2e_g`).
ENERGY_UNITS = {"Wh": "energy_wh", "gCO2e": "co2e_g"}


def unit_error(unit: str, currency: str) -> str | None:
    """What is wrong with a budget's unit, or None: the server currency, tokens, Wh or gCO2e."""
    if unit in (currency, TOKENS) or unit in ENERGY_UNITS:
        return None
    return (f"expected the server currency {currency!r}, 'tokens', 'Wh' or 'gCO2e', "
            f"got {unit!r}")
# "EU" in a rule stands for the member states (ISO 3166-1 alpha-2).
EU = frozenset({"AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "IE",
                "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"})
_Named = TypeVar("_Named", "Provider", "Model")
_Keyed = TypeVar("_Keyed", "Budget", "Limit", "Allowance")
_V = TypeVar("_V")  # a value read from the TOML
_D = TypeVar("_D")  # a default for it
_NUMBER: tuple[type[int | float | Decimal], ...] = (int, float, Decimal)
_AMOUNT: tuple[type[int | Decimal], ...] = (int, Decimal)
_COUNTRY = re.compile(r"^[A-Z]{2}$")
CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True, slots=True)
class Price:
    """A tariff per million tokens (web searches: per thousand), in its own currency."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal | None = None  # None: 1-hour cache writes cost cache_write
    web_search: Decimal = Decimal(0)  # per 1,000 web search requests
    currency: str | None = None  # None: the server currency


@dataclass(frozen=True, slots=True)
class ExchangeRate:
    """1 `source` = `rate` `target` from `since` (a UTC day) until a later rate of the pair."""

    source: str
    target: str
    rate: Decimal
    since: date


@dataclass(frozen=True, slots=True)
class Launch:
    """A local llama.cpp model server that `tokometer serve` starts before the gateway."""

    gguf: str  # a path to a .gguf file, or a PyPI package whose assemble() writes one
    chat_format: str
    n_ctx: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Datacentre:
    """Where a provider serves, for its energy and CO2e (overriding EcoLogits' figures)."""

    zone: str | None  # the grid: ISO 3166-1 alpha-3, or WOR for the world's mix
    pue: tuple[float, float] | None  # power usage effectiveness, as a range
    watts_per_core: float | None = None  # a local server's energy is measured at this power


@dataclass(frozen=True, slots=True)
class Parameters:
    """A model's size in billions of parameters, as ranges (overriding EcoLogits' table)."""

    active_params: tuple[float, float]
    total_params: tuple[float, float]


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    api: str
    base_url: str
    api_key_env: str | None
    api_key: str | None = field(repr=False)
    region: str | None
    price_provider: str | None  # genai-prices provider id, when it differs from `name`
    launch: Launch | None
    timeout: float | None = None  # seconds it may stay silent; None: server.upstream_timeout
    impact: Datacentre | None = None

    @property
    def usable(self) -> bool:
        """False when the provider needs a key whose environment variable is not set."""
        return self.api_key_env is None or self.api_key is not None


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    model: str
    price: Price | None = None  # this provider's tariff for the model, before the model's


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    routes: tuple[Route, ...]
    origin: str | None
    tokenizer: str | None
    chat_template: str | None
    price: Price | None
    strategy: str = "order"  # how routes are ranked: STRATEGIES
    max_attempts: int | None = None  # None: server.max_attempts
    max_output_tokens: int | None = None  # the reservation when a request sets no max
    impact: Parameters | None = None


@dataclass(frozen=True, slots=True)
class Scope:
    """Whom a budget, limit or rule applies to: every key of a tenant, of an app, or one key."""

    kind: str  # SCOPES
    value: str

    def covers(self, who: object) -> bool:
        value: object = getattr(who, self.kind)
        return value == self.value

    def __str__(self) -> str:
        return f"{self.kind} {self.value!r}"


@dataclass(frozen=True, slots=True)
class Budget:
    id: str
    scope: Scope
    limit: Decimal
    unit: str  # the server currency, or TOKENS
    period: str  # PERIODS
    # A tenant's prepaid wallet (policy/wallets.py): it counts what a request is charged
    # (its cost where no plan charges), its limit what the ledger spent plus what is left.
    wallet: bool = False

    def __str__(self) -> str:
        if self.wallet:
            return f"the wallet of {self.scope}"
        per = "in total" if self.period == "total" else f"per {self.period}"
        return f"budget {self.id} ({self.scope}: {decimal_text(self.limit)} {self.unit} {per})"


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    scope: Scope
    rpm: int | None
    tpm: int | None

    @property
    def key(self) -> str:
        """What a store counts the limit's requests under: its scope (one limit per scope),
        so a limit edited in the file never inherits another scope's counts."""
        return f"{self.scope.kind}:{self.scope.value}"


@dataclass(frozen=True, slots=True)
class Rule:
    """Where a scope's tokens may be served (regions) and whose models it may use (origins).

    None for an allow-list means no restriction; regions and origins are ISO country codes.
    """

    name: str
    scope: Scope
    allow_regions: frozenset[str] | None
    deny_regions: frozenset[str]
    allow_origins: frozenset[str] | None
    deny_origins: frozenset[str]


@dataclass(frozen=True, slots=True)
class PostgresURL:
    """A PostgreSQL store, as a libpq URL. Its password (better kept in $PGPASSWORD or
    ~/.pgpass, which libpq reads) never shows in a log line or a repr."""

    url: str = field(repr=False)

    def __str__(self) -> str:
        parts = urlsplit(self.url)
        host = parts.netloc.rsplit("@", 1)[-1]
        user = parts.username
        return urlunsplit((parts.scheme, f"{user}@{host}" if user else host, parts.path, "", ""))


MAX_WORKERS = 256  # server.workers at most


@dataclass(frozen=True, slots=True)
class Server:
    host: str = "127.0.0.1"
    port: int = 4000
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # gateway processes
    store: Path | PostgresURL = Path("tokometer.db")  # SQLite's file, or a PostgreSQL URL
    currency: str = "USD"
    data_dir: Path = Path("data")
    max_body_bytes: int = 10_000_000
    body_timeout: float = 30.0  # seconds a client may take to send a request's body
    stop_timeout: int = 30  # seconds a stopping worker may finish its requests, then killed
    upstream_timeout: float = 600.0  # seconds a provider may stay silent
    connect_timeout: float = 10.0
    durability: str = "process"  # "process": survives kill -9; "power": fsync every commit
    max_attempts: int | None = None  # routes tried per request, at most; None: all of them
    default_max_output_tokens: int = 4096  # the reservation when nothing else bounds output
    admin_token_env: str | None = None
    admin_token: str | None = field(default=None, repr=False)  # /admin/... is off until set
    signing_key: Path = Path("data/ledger-ed25519.pem")  # the log's key; created if missing
    signing_key_env: str | None = None  # a variable holding the key's PEM, used first
    signing_key_pem: str | None = field(default=None, repr=False)  # that variable's value
    producer: str = ""  # who serves the generated text (GB 45438's ContentProducer): a name
    provenance: bool = True  # register every answer's fingerprints (provenance/registry.py)


@dataclass(frozen=True, slots=True)
class Notice:
    """A visible label added to the generated text of a scope's answers (an explicit label,
    GB 45438), at its start or its end."""

    scope: Scope
    text: str  # "" for none (a C2PA manifest alone)
    position: str  # "start" or "end"
    c2pa: bool = False  # a signed C2PA text manifest appended to the text as well


@dataclass(frozen=True, slots=True)
class Plan:
    """What a scope is charged for its tokens: a sell tariff per model (by the config's name
    or the provider's), else the cost with a markup; no charge when neither applies."""

    scope: Scope
    markup: Decimal | None  # 0.25: the cost plus a quarter
    tariffs: Mapping[str, Price]  # in the server currency


@dataclass(frozen=True, slots=True)
class Allowance:
    """What a tenant's wallet may spend each period before it draws on purchased credit;
    it starts afresh every period (in the server currency)."""

    scope: Scope  # a tenant
    amount: Decimal
    period: str  # day, week or month
    currency: str  # the server's

    @property
    def tenant(self) -> str:
        return self.scope.value


@dataclass(frozen=True, slots=True)
class Settings:
    path: Path
    server: Server
    providers: Mapping[str, Provider]
    models: Mapping[str, Model] = field(default_factory=dict)
    budgets: tuple[Budget, ...] = ()
    limits: tuple[Limit, ...] = ()
    rules: tuple[Rule, ...] = ()
    exchange_rates: tuple[ExchangeRate, ...] = ()
    labels: tuple[Notice, ...] = ()  # the first that covers a key applies
    plans: tuple[Plan, ...] = ()  # the first that covers a key applies
    allowances: tuple[Allowance, ...] = ()  # one per tenant


def default_path() -> str:
    """The config file when none is named: $TOKOMETER_CONFIG, else ./tokometer.toml."""
    return os.environ.get("TOKOMETER_CONFIG", "tokometer.toml")


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a config file; raise ConfigError naming the bad key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:  # a directory, unreadable: the config's to fix, like a missing one
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    return parse(raw, path, os.environ if environ is None else environ)


def parse(raw: dict[str, Any], path: Path, environ: Mapping[str, str]) -> Settings:
    cfg = _Reader(raw, str(path))
    cfg.only("server", "providers", "models", "budgets", "limits", "rules", "exchange_rates",
             "labels", "plans", "allowances")
    base = path.resolve().parent
    server = _server(cfg.table("server"), base, environ)
    providers = _by_name(cfg.tables("providers"), lambda p: _provider(p, environ), "provider")
    models = _by_name(cfg.tables("models"), lambda m: _model(m, providers), "model")
    return Settings(
        path=path, server=server, providers=providers, models=models,
        budgets=_unique(cfg.tables("budgets"), lambda b: _budget(b, server.currency),
                        lambda b: b.id, "scope, unit and period"),
        limits=_unique(cfg.tables("limits"), _limit, lambda x: x.key,
                       "scope: give it rpm and tpm together"),
        rules=tuple(_rule(r) for r in cfg.tables("rules")),
        exchange_rates=_exchange_rates(cfg.tables("exchange_rates"), server.currency),
        labels=tuple(_notice(n) for n in cfg.tables("labels")),
        plans=tuple(_plan(p, server.currency) for p in cfg.tables("plans")),
        allowances=_unique(cfg.tables("allowances"), lambda a: _allowance(a, server.currency),
                           lambda a: a.tenant, "tenant"),
    )


def _by_name(tables: list[_Reader], build: Callable[[_Reader], _Named],
             kind: str) -> dict[str, _Named]:
    out: dict[str, _Named] = {}
    for table in tables:
        item = build(table)
        if item.name in out:
            raise table.error("name", f"duplicate {kind} {item.name!r}")
        out[item.name] = item
    return out


def _store(s: _Reader, base: Path) -> Path | PostgresURL:
    try:
        return store_location(s.str("store", "sqlite:///tokometer.db"), base)
    except ValueError as e:
        raise s.error("store", str(e)) from None


def store_location(text: str, base: Path) -> Path | PostgresURL:
    """A store as the config (or `tokometer migrate`) names it; relative SQLite paths are
    taken from `base`. ValueError says what is wrong."""
    if text.startswith("sqlite:///"):
        return base / text.removeprefix("sqlite:///")
    if text.startswith(("postgresql://", "postgres://")):
        try:
            urlsplit(text).port  # noqa: B018 - parsing it is the check
        except ValueError as e:
            raise ValueError(f"not a PostgreSQL URL: {e}") from None
        return PostgresURL(text)
    raise ValueError("expected 'sqlite:///PATH' or 'postgresql://USER@HOST:PORT/DATABASE', "
                     f"got {text!r}")


def _server(s: _Reader, base: Path, environ: Mapping[str, str]) -> Server:
    s.only("host", "port", "workers", "store", "currency", "data_dir", "max_body_bytes",
           "body_timeout", "stop_timeout", "upstream_timeout", "connect_timeout", "durability",
           "max_attempts", "default_max_output_tokens", "admin_token_env", "signing_key",
           "signing_key_env", "producer", "provenance")
    d = Server()
    store = _store(s, base)
    currency = _currency(s, "currency") if "currency" in s.raw else d.currency
    durability = s.str("durability", d.durability)
    if durability not in ("process", "power"):
        raise s.error("durability", f"expected 'process' or 'power', got {durability!r}")
    data_dir = base / s.str("data_dir", str(d.data_dir))
    return Server(
        host=s.str("host", d.host),
        port=s.int("port", d.port, lo=0, hi=65535),
        workers=s.int("workers", d.workers, lo=1, hi=MAX_WORKERS),
        store=store,
        currency=currency,
        data_dir=data_dir,
        max_body_bytes=s.int("max_body_bytes", d.max_body_bytes, lo=1),
        body_timeout=s.number("body_timeout", d.body_timeout),
        stop_timeout=s.int("stop_timeout", d.stop_timeout, lo=1, hi=86_400),
        upstream_timeout=s.number("upstream_timeout", d.upstream_timeout),
        connect_timeout=s.number("connect_timeout", d.connect_timeout),
        durability=durability,
        max_attempts=s.opt_int("max_attempts", lo=1),
        default_max_output_tokens=s.int("default_max_output_tokens",
                                        d.default_max_output_tokens, lo=1),
        admin_token_env=(admin_env := s.opt_str("admin_token_env")),
        admin_token=environ.get(admin_env) or None if admin_env else None,
        signing_key=(base / s.str("signing_key") if "signing_key" in s.raw
                     else data_dir / "ledger-ed25519.pem"),
        signing_key_env=(key_env := s.opt_str("signing_key_env")),
        signing_key_pem=environ.get(key_env) or None if key_env else None,
        producer=_producer(s),
        provenance=s.flag("provenance", d.provenance),
    )


def _producer(s: _Reader) -> str:
    producer = s.str("producer", "") if "producer" in s.raw else ""
    if len(producer) > 256 or not producer.isprintable():
        raise s.error("producer", "expected a name or code of at most 256 printable "
                      "characters")
    return producer


def _provider(p: _Reader, environ: Mapping[str, str]) -> Provider:
    p.only("name", "api", "base_url", "api_key_env", "region", "price_provider", "launch",
           "timeout", "impact")
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
        timeout=p.number("timeout", None),
        impact=_datacentre(p),
    )


def _datacentre(p: _Reader) -> Datacentre | None:
    if "impact" not in p.raw:
        return None
    d = p.table("impact")
    d.only("zone", "pue", "watts_per_core")
    zone = d.opt_str("zone")
    if zone is not None:
        zone = _zone(d, zone)
    watts = d.number("watts_per_core", None)
    if watts is not None and (watts > 1000 or urlsplit(p.str("base_url")).hostname
                              not in LOOPBACK):
        raise d.error("watts_per_core", "measures a model server on this machine: at most "
                      "1000 W, for a provider whose base_url is on 127.0.0.1 or localhost")
    return Datacentre(zone=zone, pue=d.span("pue", lo=1.0, hi=5.0), watts_per_core=watts)


def _zone(r: _Reader, code: str) -> str:
    """A grid zone as EcoLogits names it: a country's alpha-3 code (from its alpha-2 or
    alpha-3), or WOR."""
    if code == "WOR":
        return code
    country = None
    if re.fullmatch(r"[A-Z]{2}", code):
        country = pycountry.countries.get(alpha_2=code)
    elif re.fullmatch(r"[A-Z]{3}", code):
        country = pycountry.countries.get(alpha_3=code)
    if country is None:
        raise r.error("zone", f"expected a country's ISO 3166-1 code like 'SE' or 'SWE', or "
                      f"'WOR' for the world's mix, got {code!r}")
    return str(country.alpha_3)


def _parameters(m: _Reader) -> Parameters | None:
    if "impact" not in m.raw:
        return None
    i = m.table("impact")
    i.only("params", "active_params", "total_params")
    params = i.span("params", lo=1e-4, hi=1e5)
    active = i.span("active_params", lo=1e-4, hi=1e5)
    total = i.span("total_params", lo=1e-4, hi=1e5)
    if params is not None and active is None and total is None:
        active = total = params
    elif params is not None or active is None or total is None:
        raise m.error("impact", "set 'params' (in billions), or both 'active_params' and "
                      "'total_params' for a mixture of experts")
    if active[1] > total[1]:
        raise m.error("impact", "a model's active parameters cannot exceed its total")
    return Parameters(active_params=active, total_params=total)


def _model(m: _Reader, providers: Mapping[str, Provider]) -> Model:
    m.only("name", "routes", "origin", "tokenizer", "chat_template", "price", "strategy",
           "max_attempts", "max_output_tokens", "impact")
    name = m.str("name")
    routes = []
    for r in m.tables("routes"):
        r.only("provider", "model", "price")
        provider_name = r.str("provider")
        if provider_name not in providers:
            known = ", ".join(providers) or "none"
            raise r.error("provider", f"unknown provider {provider_name!r} (configured: {known})")
        routes.append(Route(providers[provider_name], r.str("model", name), _price(r)))
    if not routes:
        raise m.error("routes", "a model needs at least one route")
    price = _price(m)
    tokenizer = m.opt_str("tokenizer")
    if tokenizer is not None and ":" not in tokenizer:
        raise m.error("tokenizer", f"expected 'KIND:NAME' (tiktoken:, hf:, gguf:, splintr:, "
                      f"deepseek:), got {tokenizer!r}")
    return Model(name=name, routes=tuple(routes), origin=_country(m, "origin"),
                 tokenizer=tokenizer, chat_template=m.opt_str("chat_template"), price=price,
                 strategy=m.choice("strategy", STRATEGIES, "order"),
                 max_attempts=m.opt_int("max_attempts", lo=1),
                 max_output_tokens=m.opt_int("max_output_tokens", lo=1),
                 impact=_parameters(m))


def _price(r: _Reader) -> Price | None:
    return _tariff(r.table("price")) if "price" in r.raw else None


def _tariff(pr: _Reader) -> Price:
    pr.only("input", "output", "cache_read", "cache_write", "cache_write_1h", "web_search",
            "currency")
    inp = pr.money("input")
    return Price(input=inp, output=pr.money("output"), cache_read=pr.money("cache_read", inp),
                 cache_write=pr.money("cache_write", inp),
                 cache_write_1h=pr.money("cache_write_1h") if "cache_write_1h" in pr.raw else None,
                 web_search=pr.money("web_search", Decimal(0)),
                 currency=_currency(pr, "currency") if "currency" in pr.raw else None)


def _exchange_rates(tables: list[_Reader], currency: str) -> tuple[ExchangeRate, ...]:
    """Dated rates converting genai-prices' USD into the server currency (tariffs keep theirs,
    so a rate for any other pair would never be used: it is refused)."""
    rates: dict[tuple[str, str, date], ExchangeRate] = {}
    for x in tables:
        x.only("from", "to", "rate", "since")
        source, target = _currency(x, "from"), _currency(x, "to")
        if source != "USD":
            raise x.error("from", f"only rates from 'USD' (genai-prices' currency) are used, "
                          f"got {source!r}")
        if target != currency:
            raise x.error("to", f"only rates to the server currency {currency!r} are used, "
                          f"got {target!r}")
        since = x.raw.get("since")
        if type(since) is not date:
            raise x.error("since", f"expected a date like 2026-01-01 (unquoted), got {since!r}")
        rate = x.money("rate", what="a number (units of `to` for one unit of `from`)")
        if rate == 0:
            raise x.error("rate", "must be positive")
        if (source, target, since) in rates:
            raise x.error("since", f"a second {source}->{target} rate from {since}")
        rates[source, target, since] = ExchangeRate(source, target, rate, since)
    return tuple(sorted(rates.values(), key=lambda r: (r.source, r.target, r.since)))


def _currency(r: _Reader, key: str) -> str:
    value = r.str(key)
    if not CURRENCY_CODE.match(value):
        raise r.error(key, f"expected an ISO 4217 code like 'USD', got {value!r}")
    return value


def _scope(r: _Reader) -> Scope:
    present = [kind for kind in SCOPES if kind in r.raw]
    if len(present) != 1:
        raise r.error(present[1] if len(present) > 1 else "tenant",
                      "exactly one of tenant, app, key_id is needed")
    return Scope(present[0], r.str(present[0]))


def _budget(b: _Reader, currency: str) -> Budget:
    b.only(*SCOPES, "limit", "unit", "period")
    scope = _scope(b)
    unit = b.str("unit")
    if (wrong := unit_error(unit, currency)) is not None:
        raise b.error("unit", wrong)
    limit = b.money("limit", what="a number (money, tokens, Wh or g of CO2e)")
    period = b.choice("period", PERIODS)
    return Budget(config_budget_id(scope, unit, period), scope, limit, unit, period)


def config_budget_id(scope: Scope, unit: str, period: str) -> str:
    """A config budget's id, from what it counts (not from its place in the file): the
    spend a store keeps under it stays that budget's when the file is edited."""
    digest = hashlib.sha256(f"{scope.kind}\0{scope.value}\0{unit}\0{period}".encode())
    return f"config-{digest.hexdigest()[:12]}"



def _unique(tables: list[_Reader], build: Callable[[_Reader], _Keyed],
            key: Callable[[_Keyed], str], what: str) -> tuple[_Keyed, ...]:
    """Budgets (and limits) keyed by what they count, as _by_name keys providers by name:
    two with one key would share a count."""
    seen: dict[str, str] = {}
    items = []
    for table in tables:
        item = build(table)
        if (k := key(item)) in seen:
            raise table.error(item.scope.kind, f"the same {what} as {seen[k]}")
        seen[k] = table.key_path
        items.append(item)
    return tuple(items)


def _limit(x: _Reader) -> Limit:
    x.only(*SCOPES, "rpm", "tpm")
    scope = _scope(x)
    rpm, tpm = x.opt_int("rpm", lo=1), x.opt_int("tpm", lo=1)
    if rpm is None and tpm is None:
        raise x.error("rpm", "a limit needs rpm, tpm or both")
    return Limit(x.key_path, scope, rpm, tpm)


def _rule(r: _Reader) -> Rule:
    r.only(*SCOPES, "allow_regions", "deny_regions", "allow_origins", "deny_origins")
    scope = _scope(r)
    sets = {key: _countries(r, key) for key in
            ("allow_regions", "deny_regions", "allow_origins", "deny_origins")}
    if not any(v is not None for v in sets.values()):
        raise r.error("allow_regions", "a rule needs allow_regions, deny_regions, "
                      "allow_origins or deny_origins")
    return Rule(r.key_path, scope, sets["allow_regions"], sets["deny_regions"] or frozenset(),
                sets["allow_origins"], sets["deny_origins"] or frozenset())


def _notice(n: _Reader) -> Notice:
    n.only(*SCOPES, "text", "position", "c2pa")
    text, c2pa = n.str("text", DEFAULT_NOTICE), n.flag("c2pa", False)
    shortest = 0 if c2pa else 1  # a manifest may go alone
    if not shortest <= len(text) <= 200 or "\x00" in text:
        raise n.error("text", "expected a notice of 1 to 200 characters (\"\" for none "
                      "with c2pa = true)")
    return Notice(_scope(n), text, n.choice("position", ("start", "end"), "start"), c2pa)


def _plan(p: _Reader, currency: str) -> Plan:
    p.only(*SCOPES, "markup", "tariffs")
    markup = p.money("markup", what="a number: 0.25 charges the cost plus a quarter") \
        if "markup" in p.raw else None
    listed = p.table("tariffs")
    tariffs = {name: _tariff(listed.table(name)) for name in listed.raw}
    if markup is None and not tariffs:
        raise p.error("markup", "a plan needs a markup, tariffs, or both")
    for name, tariff in tariffs.items():
        if tariff.currency not in (None, currency):
            raise listed.error(name, f"a sell tariff is in the server currency {currency!r}")
    return Plan(_scope(p), markup, tariffs)


def _allowance(a: _Reader, currency: str) -> Allowance:
    a.only("tenant", "amount", "period")
    amount = a.money("amount", what="a number: what the tenant's wallet may spend each "
                     "period, in the server currency")
    return Allowance(Scope("tenant", a.str("tenant")), amount,
                     a.choice("period", PERIODS[:-1]), currency)


def _countries(r: _Reader, key: str) -> frozenset[str] | None:
    if key not in r.raw:
        return None
    value = r.raw[key]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise r.error(key, f"expected a list of country codes like [\"DE\", \"EU\"], got {value!r}")
    out: set[str] = set()
    for code in value:
        if code == "EU":
            out |= EU
        elif _COUNTRY.match(code):
            out.add(code)
        else:
            raise r.error(key, f"expected ISO 3166-1 alpha-2 codes or 'EU', got {code!r}")
    return frozenset(out)


def _country(r: _Reader, key: str) -> str | None:
    value = r.opt_str(key)
    if value is not None and not (_COUNTRY.match(value)
                                  and pycountry.countries.get(alpha_2=value)):
        hint = {"UK": " (the United Kingdom is 'GB')", "EL": " (Greece is 'GR')"}.get(
            value or "", "")
        raise r.error(key, f"expected an ISO 3166-1 alpha-2 code like 'US', got "
                      f"{value!r}{hint}")
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

    def _opt(self, key: str, types: tuple[type[_V], ...], what: str) -> _V | None:
        """The value at `key`, checked to be one of `types` (a bool is no number); None if
        absent (TOML has no null)."""
        if key not in self.raw:
            return None
        value = self.raw[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise self.error(key, f"expected {what}, got {value!r}")
        return value

    def _get(self, key: str, types: tuple[type[_V], ...], what: str,
             default: _V | None = None) -> _V:
        """The value at `key`, else `default`; with neither, `key` is missing."""
        value = self._opt(key, types, what)
        if value is not None:
            return value
        if default is None:
            raise self.error(key, "missing")
        return default

    # The methods `str` and `int` shadow the builtins in this class body: annotations after
    # them name the builtins as `builtins.str` and `builtins.int`.
    def str(self, key: builtins.str, default: builtins.str | None = None) -> builtins.str:
        return self._get(key, (str,), "a string", default)

    def opt_str(self, key: builtins.str) -> builtins.str | None:
        return self._opt(key, (str,), "a string")

    def int(self, key: builtins.str, default: builtins.int, lo: builtins.int,
            hi: builtins.int | None = None) -> builtins.int:
        value = self._get(key, (int,), "an integer", default)
        if value < lo or (hi is not None and value > hi):
            raise self.error(key, f"{value} is out of range")
        return value

    def flag(self, key: builtins.str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def opt_int(self, key: builtins.str, lo: builtins.int) -> builtins.int | None:
        return None if key not in self.raw else self.int(key, 0, lo)

    def choice(self, key: builtins.str, choices: tuple[builtins.str, ...],
               default: builtins.str | None = None) -> builtins.str:
        value = self.str(key, default)
        if value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def number(self, key: builtins.str, default: _D) -> float | _D:
        value = self._opt(key, _NUMBER, "a number")
        if value is None:
            return default
        if not math.isfinite(value) or value <= 0:
            raise self.error(key, "must be a positive number")
        return float(value)

    def span(self, key: builtins.str, lo: float, hi: float) -> tuple[float, float] | None:
        """A number, or a [low, high] range of numbers, within [lo, hi]; None if absent."""
        value = self._opt(key, (*_NUMBER, list), "a number or a [low, high] range")
        if value is None:
            return None
        pair = value if isinstance(value, list) else [value, value]
        numbers = [float(v) for v in pair if isinstance(v, _NUMBER) and not isinstance(v, bool)]
        if len(numbers) != 2 or len(pair) != 2:
            raise self.error(key, f"expected a number or a [low, high] range, got {value!r}")
        low, high = numbers
        if not lo <= low <= high <= hi:
            raise self.error(key, f"expected {lo:g} <= low <= high <= {hi:g}, got {value!r}")
        return low, high

    def money(self, key: builtins.str, default: Decimal | None = None,
              what: builtins.str = "a number (price per 1M tokens)") -> Decimal:
        value = self._get(key, _AMOUNT, what, default)
        if value < 0:
            raise self.error(key, "cannot be negative")
        try:
            return amount(value, key)  # the one rule for amounts, clients' and the config's
        except RequestError as e:
            raise self.error(key, e.message) from None

    def table(self, key: builtins.str) -> _Reader:
        value = self._get(key, (dict,), "a table", {})
        return _Reader(value, self.where, f"{self.key_path}.{key}" if self.key_path else key)

    def tables(self, key: builtins.str) -> list[_Reader]:
        value = self._get(key, (list,), "an array of tables", [])
        out = []
        for i, item in enumerate(value):
            path = f"{self.key_path}.{key}" if self.key_path else key
            if not isinstance(item, dict):
                raise ConfigError(f"{self.where}: {path}[{i}]: expected a table, got {item!r}")
            out.append(_Reader(item, self.where, f"{path}[{i}]"))
        return out


