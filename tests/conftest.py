"""Fixtures: a fake remote provider, and real gateway processes started from a config, with
the one client every test talks to a gateway through (`Gateway.post`, `.chat`, `.burst`...)."""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from fake_upstream import FakeUpstream
from scripted_upstream import ScriptedUpstream
from tokometer.config import PostgresURL
from tokometer.events import Event, new_event_id, rfc3339
from tokometer.ledger import open_store
from tokometer.ledger.derive import ROLLED_UP, meta
from tokometer.ledger.read import count_events, get_event
from tokometer.policy import create_key

# The smallest valid config: one provider, one model. Tests append what they check.
MINIMAL_CONFIG = """
[[providers]]
name = "p"
api = "openai"
base_url = "http://127.0.0.1:1/v1"
[[models]]
name = "m"
routes = [{ provider = "p" }]
"""

TARIFF = {"input": Decimal("2.5"), "cache_read": Decimal("1.25"),
          "cache_write": Decimal("3.75"), "output": Decimal("10")}
TARIFF_TOML = "{ input = 2.5, cache_read = 1.25, cache_write = 3.75, output = 10 }"


def tariff_cost(inp: int, cache_read: int, cache_write: int, out: int) -> Decimal:
    """The expected cost of a reading at TARIFF, worked out independently of tokometer."""
    uncached = inp - cache_read - cache_write
    total = (uncached * TARIFF["input"] + cache_read * TARIFF["cache_read"]
             + cache_write * TARIFF["cache_write"] + out * TARIFF["output"])
    return total / Decimal(1_000_000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Own(enum.Enum):
    """The default of a client call's `key`: the gateway's own key (`key=None` sends none)."""
    KEY = "own"


_OWN = _Own.KEY
_Key = str | None | _Own
_Headers = Mapping[str, str | bytes] | None


@dataclass
class Gateway:
    url: str
    config: Path
    store: Any  # the SQLite file's Path, or a PostgresURL
    key: str
    key_id: str
    process: subprocess.Popen[bytes]

    # --- the client: every test's request to a gateway goes through these --------------------

    def request(self, method: str, path: str, body: Any = None, *, key: _Key = _OWN,
                headers: _Headers = None, timeout: float = 30) -> httpx.Response:
        """One request as a client sends it: `body` is JSON, or bytes as they are (a generator
        of bytes: a body without a length), `key` a Bearer token, `headers` added last."""
        return httpx.request(method, self.url + path, **self._sent(body, key, headers),
                             timeout=timeout)

    def post(self, path: str, body: Any = None, *, key: _Key = _OWN, headers: _Headers = None,
             timeout: float = 30) -> httpx.Response:
        return self.request("POST", path, body, key=key, headers=headers, timeout=timeout)

    def get(self, path: str, *, key: _Key = _OWN, headers: _Headers = None) -> httpx.Response:
        return self.request("GET", path, key=key, headers=headers)

    def chat(self, model: str, content: str = "hi", *, key: _Key = _OWN, headers: _Headers = None,
             timeout: float = 30, **body: Any) -> httpx.Response:
        """A chat completion of one user message; `body` adds fields or replaces them."""
        return self.post("/v1/chat/completions",
                         {"model": model, "messages": [{"role": "user", "content": content}],
                          **body}, key=key, headers=headers, timeout=timeout)

    def stream(self, path: str, body: Any, *, key: _Key = _OWN, headers: _Headers = None
               ) -> AbstractContextManager[httpx.Response]:
        """A POST whose response is read as it arrives: `with gw.stream(...) as r:`."""
        return httpx.stream("POST", self.url + path, **self._sent(body, key, headers), timeout=30)

    def burst(self, body: Any, keys: Sequence[_Key], path: str = "/v1/chat/completions"
              ) -> list[httpx.Response]:
        """The same POST once per key, all at once, each on its own connection."""
        async def run() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=len(keys))
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                return await asyncio.gather(*(client.post(
                    self.url + path, **self._sent(body, key, None)) for key in keys))
        return asyncio.run(run())

    def _sent(self, body: Any, key: _Key, headers: _Headers) -> dict[str, Any]:
        raw = isinstance(body, bytes | Iterator)
        sent = httpx.Headers({"content-type": "application/json"} if raw else {})
        if key is not None:
            sent["authorization"] = f"Bearer {self.key if key is _OWN else key}"
        sent.update(headers or {})
        return {"headers": sent, "content" if raw else "json": body}

    # --- the store, read directly -------------------------------------------------------------

    def event(self, event_id: str) -> dict[str, Any]:
        with open_store(self.store) as store:
            event = get_event(store, event_id)
        assert event is not None, f"event {event_id} is not in the store"
        return event

    def count_events(self) -> int:
        with open_store(self.store) as store:
            return count_events(store)

    def wait_rolled_up(self, timeout: float = 10) -> None:
        """Until the rollups hold every stored event (they trail the events by about 1 s)."""
        deadline = time.monotonic() + timeout
        while True:
            with open_store(self.store) as store:
                events, rolled_up = count_events(store), meta(store, ROLLED_UP)
            if rolled_up is not None and rolled_up >= events:
                return
            assert time.monotonic() < deadline, "the rollups did not catch up"
            time.sleep(0.05)  # readiness poll of another process's writer

    def new_key(self, tenant: str = "acme", app: str = "tests",
                region: str | None = "DE") -> tuple[str, str]:
        with open_store(self.store) as store:
            return create_key(store, tenant, app, region)


def start_gateway(directory: Path, body: str, *, env: dict[str, str] | None = None,
                  wait: float = 60, launch: bool = False, store: Any = None,
                  workers: int = 1) -> Gateway:
    """Write a config and run `tokometer serve` on it in a child process, until it answers.
    `store`: a PostgresURL, or by default tokometer.db in `directory`. One worker unless
    asked: what one request changes (a budget set, a route learnt) the next one sees."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    # The default is relative to the config, so a copied directory is a copied gateway.
    where = store.url if isinstance(store, PostgresURL) else "sqlite:///tokometer.db"
    store = store or directory / "tokometer.db"
    config = directory / "tokometer.toml"
    config.write_text(f'[server]\nport = {port}\nworkers = {workers}\nstore = "{where}"\n'
                      f'{body}')
    log = (directory / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tokometer.cli", "serve", "--config", str(config),
         *([] if launch else ["--no-launch"])],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group: the supervisor and its worker
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("gateway did not start:\n"
                               + (directory / "gateway.log").read_text(errors="replace"))
        time.sleep(0.05)  # readiness poll of a child process
    with open_store(store) as opened:
        key, key_id = create_key(opened, "acme", "tests", "DE")
    return Gateway(url, config, store, key, key_id, process)


def stop_gateway(gw: Gateway) -> None:
    gw.process.send_signal(signal.SIGTERM)
    try:
        gw.process.wait(20)
    except subprocess.TimeoutExpired:
        gw.process.kill()


FAKE_KEYS = {"FAKE_OPENAI_KEY": "sk-upstream-openai", "FAKE_ANTHROPIC_KEY": "sk-ant-upstream"}


def providers_toml(upstream: FakeUpstream) -> str:
    return f"""
[[providers]]
name = "fake-openai"
api = "openai"
base_url = "{upstream.url}/v1"
api_key_env = "FAKE_OPENAI_KEY"
region = "US"

[[providers]]
name = "deepseek"
api = "openai"
base_url = "{upstream.url}/v1"
region = "CN"

[[providers]]
name = "fake-anthropic"
api = "anthropic"
base_url = "{upstream.url}/anthropic"
api_key_env = "FAKE_ANTHROPIC_KEY"
region = "US"

[[providers]]
name = "dead"
api = "openai"
base_url = "http://127.0.0.1:{free_port()}/v1"
region = "US"
"""


def _model(name: str, provider: str = "fake-openai", upstream_model: str | None = None,
           extra: str = f"price = {TARIFF_TOML}") -> str:
    route = f'{{ provider = "{provider}", model = "{upstream_model or name}" }}'
    return f'[[models]]\nname = "{name}"\nroutes = [{route}]\n{extra}\n'


MODELS_TOML = "".join([
    _model("gpt-4o-mini"),
    _model("deepseek-chat", provider="deepseek", extra=""),
    _model("kimi-k2", upstream_model="kimi-k2-0905-preview"),
    _model("gpt-3.5-turbo-instruct"),
    _model("gpt-4.1"),
    _model("text-embedding-3-small"),
    _model("claude-sonnet-5", provider="fake-anthropic"),
    _model("no-usage", extra=f'tokenizer = "tiktoken:o200k_base"\nprice = {TARIFF_TOML}'),
    _model("slow", extra=f'tokenizer = "tiktoken:o200k_base"\nprice = {TARIFF_TOML}'),
    _model("broken", extra=f'tokenizer = "tiktoken:o200k_base"\nprice = {TARIFF_TOML}'),
    _model("mystery-model", extra=""),
    _model("fail-400"), _model("html-502"), _model("garbage"), _model("hang"),
    _model("fail-500"),
    _model("claude-html-502", provider="fake-anthropic", upstream_model="html-502"),
    _model("claude-broken", provider="fake-anthropic"),
    _model("claude-overloaded", provider="fake-anthropic"),
    _model("vision-no-usage", upstream_model="gpt-4o-2024-11-20",
           extra=f'tokenizer = "tiktoken:o200k_base"\nprice = {TARIFF_TOML}'),
    *(_model(name, extra=f'tokenizer = "tiktoken:o200k_base"\nprice = {TARIFF_TOML}')
      for name in ("bad-usage-json", "bad-usage-types", "zero-usage", "reasoning-dup",
                   "error-mid-stream")),
    """[[models]]
name = "fallback"
routes = [{ provider = "dead", model = "gpt-4o-mini" },
          { provider = "fake-openai", model = "fail-500" },
          { provider = "fake-openai", model = "fail-429" },
          { provider = "fake-openai", model = "gpt-4o-mini" }]
price = """ + TARIFF_TOML + "\n",
])


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    body = f"""max_body_bytes = 100000
upstream_timeout = 3
{providers_toml(upstream)}
{MODELS_TOML}"""
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), body, env=FAKE_KEYS)
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="session")
def o200k(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """tiktoken's o200k encoding from the bpe-openai package's copy, set up independently of
    tokometer's own loader (tiktoken finds it by the sha1 of its download URL)."""
    import gzip
    import hashlib
    import importlib.util

    import tiktoken

    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or tmp_path_factory.mktemp("tiktoken"))
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    target = cache / hashlib.sha1(url.encode()).hexdigest()
    if not target.exists():
        spec = importlib.util.find_spec("bpe_openai")  # importing it would load its tokenizers
        packaged = Path(spec.submodule_search_locations[0]) / "data" / "o200k_base.tiktoken.gz"
        target.write_bytes(gzip.decompress(packaged.read_bytes()))
    return tiktoken.get_encoding("o200k_base")


def wait_for_event(gateway: Gateway, event_id: str, timeout: float = 10) -> dict[str, Any]:
    """The event, once stored: a stream's is recorded after its client saw the last byte."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return gateway.event(event_id)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # readiness poll of the gateway's writer


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    """A provider each test scripts (tests/scripted_upstream.py), one per test module."""
    fake = ScriptedUpstream().start()
    yield fake
    fake.stop()


def inline_table(values: dict[str, Any]) -> str:
    """A TOML inline table, such as a tariff: { input = 0.15, output = 0.6 }."""
    return "{ " + ", ".join(f"{k} = {v}" for k, v in values.items()) + " }"


def chat_event(gw: Gateway, key: str | None = None) -> dict[str, Any]:
    """One chat through the openai SDK (gpt-4o-mini on the fake provider): its event."""
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key or gw.key, max_retries=0,
                           timeout=20)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content
    return gw.event(raw.headers["x-tokometer-event-id"])


def make_event(**fields: Any) -> Event:
    """An Event as the meter would write it, with `fields` changed (for stores built by hand)."""
    base = dict(
        id=new_event_id(), time=rfc3339(datetime.now(UTC)), duration_ms=5.0, ttft_ms=None,
        key_id="k", tenant="t", app="a", agent=None, task=None, end_user=None,
        consumer_region="DE", api="openai", operation="chat", stream=False, provider="p",
        provider_region="US", model_requested="m", model="m", model_origin="US",
        input_tokens=12, cache_read_tokens=0, cache_write_tokens=0, output_tokens=30,
        reasoning_tokens=0, usage_source="reported", counted_input_tokens=None,
        counted_output_tokens=None, cost=Decimal("0.01"), currency="USD", price_ref=None,
        status=200, error_type=None, finish_reason="stop")
    return Event(**{**base, **fields})


# A client string that would drive a terminal: colour, window title, bell, RTL override.
TERMINAL = "\x1b[31mred\x1b]0;pwned\x07\u202eevil"


def old_rollup_table(name: str, dims: tuple[str, ...]) -> str:
    """A rollup table as stores kept them before currency was one of its keys."""
    old = [d for d in dims if d != "currency"]
    return (f"CREATE TABLE {name} (period TEXT NOT NULL, start TEXT NOT NULL, "
            + "".join(f"{d} TEXT NOT NULL, " for d in old)
            + "requests INTEGER NOT NULL, errors INTEGER NOT NULL, "
            + "".join(f"{t} INTEGER NOT NULL, " for t in ("input_tokens", "cache_read_tokens",
                                                          "cache_write_tokens", "output_tokens",
                                                          "reasoning_tokens"))
            + f"cost TEXT NOT NULL, PRIMARY KEY (period, start, {', '.join(old)})) "
            "WITHOUT ROWID")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster for the whole run (tests/postgres.py)."""
    from postgres import remove, start_cluster

    cluster = start_cluster()
    yield cluster
    remove(cluster)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Where a new, empty store goes, on each kind of store: a feature is done when it works
    on both."""
    if request.param == "sqlite":
        return tmp_path / "tokometer.db"

    return PostgresURL(request.getfixturevalue("postgres").new_database())


@pytest.fixture(scope="module")
def overhead() -> Iterator[Any]:
    """bench/overhead.py as a module, for the tests of its helpers."""
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("bench_overhead", root / "bench" / "overhead.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
