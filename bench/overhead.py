"""Gateway overhead: the same requests sent directly to a fast fake provider, through
tokometer, and through LiteLLM's proxy, measured in one run.

The fake provider is nginx returning a fixed chat completion (JSON) and a fixed SSE stream;
the load is wrk. "bare" is the least a Python proxy can do (bench/bare_passthrough.py), so
the gap between it and tokometer is what metering costs; "bare+commit" is that pass-through
plus the least a durable meter must do (one SQLite row committed by a writer thread before
the last byte), the floor under any gateway that keeps that rule. Reported per target, mode
and concurrency: p50/p99 latency (and what the gateway adds over direct), requests/s, CPU
milliseconds per request, RSS after load.

    python bench/overhead.py                 # tokometer vs direct (and LiteLLM if installed)
    python bench/overhead.py --litellm PATH  # PATH: a venv with `pip install 'litellm[proxy]'`
    python bench/overhead.py --targets direct,bare,tokometer,tokometer+policy --workers 1,2 \
        --stores sqlite,postgresql --concurrency 64 --sse-events 21 --rounds 3

With --workers, bare and tokometer run once per worker count (`[server] workers`, granian's
--workers); with --stores, tokometer once per store, PostgreSQL on a throwaway cluster
(tests/postgres.py) with a fresh database per start, whose processes' CPU is reported beside
the gateway's. --rounds measures every target that many times in turn, so the spread and the
ratios (taken within a round) show how much a busy machine moved them.

Needs nginx and wrk (Debian: apt-get install nginx-light wrk). Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
CONCURRENCY = (1, 4, 16, 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120, proc: subprocess.Popen | None = None,
              status_ok: bool = True) -> None:
    """Until the server answers (with 2xx, or with anything when status_ok is False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            if not status_ok:
                return
            time.sleep(0.1)
        except OSError:  # not up yet (URLError and connection errors are OSErrors)
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


def sse_stream(events: int | None = None) -> str:
    """The streamed chat fixture (6 events), or the same stream with its answer re-sent a
    word per event, `events` events in all: the shape of a longer answer."""
    fixture = (FIXTURES / "openai_chat.sse").read_text()
    if events is None:
        return fixture
    blocks = fixture.strip().split("\n\n")
    chunk = json.loads(blocks[1].removeprefix("data: "))
    words = []
    for i in range(events - 4):  # the role, finish, usage and [DONE] events stay
        chunk["choices"][0]["delta"] = {"content": f" word{i}"}
        words.append("data: " + json.dumps(chunk, separators=(",", ":")))
    return "\n\n".join([blocks[0], *words, *blocks[3:]]) + "\n\n"


def nginx(work: Path, sse_events: int | None = None) -> tuple[subprocess.Popen, int]:
    """nginx answering every POST with a fixed body: JSON at /v1, SSE at /stream/v1."""
    port = free_port()
    body = (FIXTURES / "openai_chat.json").read_text().strip()
    quote = lambda s: "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"  # noqa: E731
    www = work / "www"
    if sse_events is None:  # the fixture, as the figures in the README were measured
        stream = f"default_type text/event-stream; return 200 {quote(sse_stream())};"
    else:  # too long for a `return`: a file, which nginx's workers (nobody) must reach
        www.mkdir(mode=0o755)
        (www / "stream.sse").write_text(sse_stream(sse_events))
        (www / "stream.sse").chmod(0o644)
        work.chmod(0o711)
        stream = "error_page 405 =200 /stream.sse; return 405;"
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location = /health {{ return 200 'ok'; }}
    location /stream/v1/ {{ {stream} }}
    location = /stream.sse {{ internal; root {www}; default_type text/event-stream; }}
    location /v1/ {{ default_type application/json; return 200 {quote(body)}; }}
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(work)])
    wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
    return proc, port


# Policy switched on for the bench key's tenant and app: budgets, a prepaid wallet (an
# allowance, charged at a plan's markup), rate limits and a residency rule, none of which
# ever refuses here, so every request pays for the checks.
POLICY = """
[[plans]]
tenant = "bench"
markup = 0.2

[[allowances]]
tenant = "bench"
amount = 1000000
period = "month"

[[budgets]]
tenant = "bench"
limit = 1000000
unit = "USD"
period = "month"

[[budgets]]
app = "load"
limit = 100000000000
unit = "tokens"
period = "day"

[[limits]]
app = "load"
rpm = 100000000
tpm = 100000000000

[[rules]]
tenant = "bench"
deny_regions = ["CN"]
allow_origins = ["US", "EU"]
"""


def routes_toml(upstream: int) -> str:
    """The bench's providers (nginx's JSON and SSE answers) and the models routed to them."""
    return f"""[[providers]]
name = "nginx-json"
api = "openai"
base_url = "http://127.0.0.1:{upstream}/v1"
region = "US"

[[providers]]
name = "nginx-sse"
api = "openai"
base_url = "http://127.0.0.1:{upstream}/stream/v1"
region = "US"

[[models]]
name = "bench-json"
routes = [{{ provider = "nginx-json", model = "gpt-4o-mini" }}]

[[models]]
name = "bench-sse"
routes = [{{ provider = "nginx-sse", model = "gpt-4o-mini" }}]
"""


def tokometer(work: Path, upstream: int, policy: bool = False, workers: int = 1,
              store: str = "sqlite:///tokometer.db") -> tuple[subprocess.Popen, int, str]:
    """`tokometer serve` with `workers` processes on `store` (a fresh folder per start)."""
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="policy-" if policy else "plain-", dir=work))
    cfg = work / "tokometer.toml"
    cfg.write_text(f"""
[server]
port = {port}
workers = {workers}
store = "{store}"
data_dir = "data"

{routes_toml(upstream)}
{POLICY if policy else ""}""")
    with (work / "tokometer.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tokometer.cli", "serve", "--no-launch",
                                 "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    out = subprocess.run([sys.executable, "-m", "tokometer.cli", "keys", "create", "--config",
                          str(cfg), "--tenant", "bench", "--app", "load", "--json"],
                         check=True, capture_output=True, text=True).stdout
    return proc, port, json.loads(out)["key"]


def bare(upstream: int, ledger: Path | None = None, workers: int = 1
         ) -> tuple[subprocess.Popen, int]:
    """The bare pass-through on `workers` granian workers; with `ledger`, also one durable
    SQLite row per request."""
    port = free_port()
    env = {**os.environ, "UPSTREAM": f"http://127.0.0.1:{upstream}", "PYTHONPATH": str(ROOT)}
    if ledger is not None:
        env["LEDGER"] = str(ledger)
    proc = subprocess.Popen([sys.executable, "-m", "granian", "--interface", "asgi", "--loop",
                             "uvloop", "--no-ws", "--workers", str(workers), "--port", str(port),
                             "--log-level", "warning",
                             "bench.bare_passthrough:app"], env=env)
    wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
    return proc, port


LITELLM_KEY = "sk-bench-0123456789abcdef0123456789abcdef"

# LiteLLM runs in its plain configuration: the model list and a master key in the YAML, no
# database, no callbacks, everything else at its defaults. Its environment is built here, not
# inherited: `litellm` reads its CLI options from the environment too (DEBUG, DETAILED_DEBUG,
# NUM_WORKERS, PORT...) and loads a .env found above its package, i.e. in this checkout. An
# inherited DETAILED_DEBUG=1 turns on debug logging that LITELLM_LOG=ERROR hides from the log but
# not from the CPU: 3-6x the CPU per request, 16-20 (JSON) and 7 (SSE) req/s at c=64 where the
# plain proxy serves ~95 and ~45 on the same machine (README, benchmark section).
LITELLM_ENV = {
    # its cost map as shipped in the package: otherwise it fetches one from GitHub at start
    # and again in the background (three attempts), traffic that must not leave this machine
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    # this release's telemetry switch (LITELLM_TELEMETRY_*; it records nothing until a
    # destination is chosen, and this makes sure it never is)
    "LITELLM_TELEMETRY_DISABLED": "true",
    # errors only: no access-log line per request (tokometer's granian has log_access=False)
    "LITELLM_LOG": "ERROR",
    # reads no .env file (its default DEV mode loads one: the caller's settings would leak in)
    "LITELLM_MODE": "PRODUCTION",
}


def litellm(work: Path, venv: Path, upstream: int) -> tuple[subprocess.Popen, int]:
    """LiteLLM's proxy in its plain configuration (LITELLM_ENV), one worker like tokometer's."""
    port = free_port()
    work = work / "litellm"
    work.mkdir(exist_ok=True)
    cfg = work / "litellm.yaml"
    cfg.write_text(f"""
model_list:
  - model_name: bench-json
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "http://127.0.0.1:{upstream}/v1",
                      api_key: sk-bench}}
  - model_name: bench-sse
    litellm_params: {{model: openai/gpt-4o-mini,
                      api_base: "http://127.0.0.1:{upstream}/stream/v1", api_key: sk-bench}}
general_settings: {{master_key: {LITELLM_KEY}}}
""")
    # PATH for the tools its platform probes run; HOME and the working directory (which it puts
    # on sys.path) in this run's own folder, so nothing of the caller's is picked up
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), **LITELLM_ENV}
    with (work / "litellm.log").open("wb") as log:
        # one worker process (its default, said out loud): tokometer serves with one worker too
        proc = subprocess.Popen([str(venv / "bin" / "litellm"), "--config", str(cfg), "--port",
                                 str(port), "--host", "127.0.0.1", "--num_workers", "1"],
                                env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=300, proc=proc)
    return proc, port


KINDS = ("direct", "bare", "bare+commit", "tokometer", "tokometer+policy", "litellm")
SCALED = ("bare", "tokometer", "tokometer+policy")  # the targets --workers applies to
STORED = ("tokometer", "tokometer+policy")  # the targets --stores applies to
STORES = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Target:
    """A setup to measure: a kind as --targets names it, on `workers` processes and a store."""

    kind: str
    workers: int = 1
    store: str = ""  # "sqlite" or "postgresql" for tokometer, "" for the others

    @property
    def name(self) -> str:
        scaled = f"w{self.workers}" if self.kind in SCALED else ""
        return " ".join(part for part in (self.kind, scaled, self.store) if part)


def plan(kinds: list[str], workers: tuple[int, ...], stores: list[str]) -> list[Target]:
    """Every target to measure, in order: each kind once, or once per worker count (bare and
    tokometer) and store (tokometer), the worker counts side by side."""
    targets = []
    for kind in kinds:
        if kind in STORED:
            targets += [Target(kind, w, store) for store in stores for w in workers]
        elif kind in SCALED:
            targets += [Target(kind, w) for w in workers]
        else:
            targets.append(Target(kind))
    return targets


@dataclass
class Result:
    target: str
    mode: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_req: float | None
    requests: int
    errors: int  # -1: not measured (the target had exited, or wrk failed)
    store_cpu_ms_per_req: float | None = None  # PostgreSQL's processes, for its targets
    round: int = 1
    others_cores: float | None = None  # CPU taken meanwhile by processes not in the bench


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def process_tree(pid: int) -> list[int]:
    return [pid] + [q for c in children(pid) for q in process_tree(c)]


def cpu_seconds(pid: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (FileNotFoundError, IndexError):
            continue
    return total


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since it started (/proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(x) for x in Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def bench_seconds(watched: list[int]) -> float:
    """CPU seconds of the bench's own processes: the watched trees (target, store, nginx),
    this script and the wrk runs it has waited for."""
    return sum(cpu_seconds(p) for p in watched) + sum(os.times()[:4])


def memory_mb(pid: int) -> dict[str, float | list[float]]:
    """RSS and PSS summed over the process tree (PSS counts pages shared after fork once), the
    supervisor's RSS and each worker's (the supervisor's children: granian forks them)."""
    def rollup(p: int) -> tuple[float, float]:
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except FileNotFoundError:
            return 0.0, 0.0
        return tuple(int(re.search(rf"^{field}:\s+(\d+)", text, re.M).group(1)) / 1024
                     for field in ("Rss", "Pss"))

    tree = {p: rollup(p) for p in process_tree(pid)}
    return {"rss": sum(r for r, _ in tree.values()), "pss": sum(q for _, q in tree.values()),
            "supervisor_rss": tree[pid][0],
            "worker_rss": [tree[c][0] for c in children(pid) if c in tree]}


def wrk(url: str, body: dict, key: str | None, concurrency: int, seconds: int,
        work: Path) -> tuple[float, float, float, int, int] | None:
    """(successful responses/s, p50 ms, p99 ms, requests, errors); None if wrk itself failed."""
    script = work / "post.lua"
    headers = 'wrk.headers["Content-Type"] = "application/json"\n'
    if key:
        headers += f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
                      f'{headers}')
    done = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency",
                           "--timeout", "10s", "-s", str(script), url],
                          capture_output=True, text=True)
    out = done.stdout
    if done.returncode != 0 or "Requests/sec" not in out:
        return None
    elapsed = _seconds(re.search(r"requests in ([\d.]+\w+),", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+([\d.]+\w+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+([\d.]+\w+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors += sum(int(g) for g in m.groups()) if m else 0
    return max(requests - errors, 0) / elapsed, p50, p99, requests, errors


def _seconds(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=5, help="duration of each wrk run")
    ap.add_argument("--litellm", type=Path, default=ROOT / "bench" / ".venv-litellm",
                    help="venv with litellm[proxy] installed (skipped if absent)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overhead.json")
    ap.add_argument("--sse-events", type=int, default=None,
                    help="stream N events (N >= 5, the answer a word per event) instead of "
                         "the 6-event fixture")
    ap.add_argument("--concurrency", type=_levels, default=CONCURRENCY,
                    help="comma-separated concurrency levels (default: 1,4,16,64)")
    ap.add_argument("--targets", type=partial(_names, KINDS), default=list(KINDS),
                    help=f"comma-separated subset of {','.join(KINDS)}")
    ap.add_argument("--workers", type=_levels, default=(1,),
                    help="comma-separated worker counts for bare and tokometer (default: 1)")
    ap.add_argument("--stores", type=partial(_names, STORES), default=["sqlite"],
                    help="comma-separated stores for tokometer: sqlite,postgresql (a throwaway "
                         "cluster started as the tests start one, removed at the end)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every target this many times, in turn (the spread)")
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: apt-get install nginx-light wrk")
    if args.sse_events is not None and args.sse_events < 5:
        sys.exit("--sse-events: a stream has at least 5 events (role, text, finish, usage, end)")
    targets = plan(args.targets, args.workers, args.stores)
    if not (args.litellm / "bin" / "litellm").exists():
        targets = [t for t in targets if t.kind != "litellm"]
    work = Path(tempfile.mkdtemp(prefix="tokometer-bench-"))
    results: list[Result] = []
    memory: list[dict] = []
    cluster = None
    ng, up = nginx(work, args.sse_events)
    print("successful responses per second (ok/s) per target, mode and concurrency", flush=True)
    # Each proxy runs alone while it is measured (one sharing 2 cores with an idle LiteLLM
    # and its background jobs measures LiteLLM too); all of them within this one run.
    try:
        if any(t.store == "postgresql" for t in targets):
            sys.path.insert(0, str(ROOT / "tests"))
            from postgres import start_cluster

            cluster = start_cluster()
        for n in range(1, args.rounds + 1):
            for target in targets:
                proc, port, auth = start(target, work, up, cluster, args.litellm)
                store_pid = postmaster(cluster) if target.store == "postgresql" else None
                try:
                    results += measure(target.name, f"http://127.0.0.1:{port}", auth, proc,
                                       args.seconds, work, args.concurrency, store_pid, n,
                                       ng.pid)
                    if proc is not None and proc.poll() is None:
                        memory.append({"target": target.name, "round": n, **memory_mb(proc.pid)})
                finally:
                    if proc is not None:
                        stop(proc)
    finally:
        stop(ng)
        if cluster is not None:
            from postgres import remove

            remove(cluster)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"memory_mb": memory,
                                    "results": [r.__dict__ for r in results]}, indent=2))
    print(table(results, memory))
    print(summary(targets, results, memory))
    return 0


def start(target: Target, work: Path, upstream: int, cluster: Any, venv: Path
          ) -> tuple[subprocess.Popen | None, int, str | None]:
    """Start the target (a fresh store for each tokometer); (process, port, API key)."""
    if target.kind == "direct":
        return None, upstream, None
    if target.kind == "bare":
        return (*bare(upstream, workers=target.workers), None)
    if target.kind == "bare+commit":
        return (*bare(upstream, Path(tempfile.mkdtemp(dir=work)) / "bare.db"), None)
    if target.kind == "litellm":
        return (*litellm(work, venv, upstream), LITELLM_KEY)
    store = cluster.new_database() if target.store == "postgresql" else "sqlite:///tokometer.db"
    return tokometer(work, upstream, policy=target.kind == "tokometer+policy",
                     workers=target.workers, store=store)


def postmaster(cluster: Any) -> int:
    """The PostgreSQL server's process: its backends and helpers are its children."""
    return int((cluster.directory / "data" / "postmaster.pid").read_text().split()[0])


def measure(name: str, base: str, auth: str | None, proc: subprocess.Popen | None,
            seconds: int, work: Path, levels: tuple[int, ...], store_pid: int | None = None,
            round_: int = 1, upstream_pid: int | None = None) -> list[Result]:
    """wrk against the target per mode and level; beside each figure, the CPU the rest of the
    machine took meanwhile (another engineer's load shows there, not as a slow target)."""
    results = []
    watched = [p for p in (proc.pid if proc else None, store_pid, upstream_pid) if p]
    raw = name.startswith(("direct", "bare"))  # no model routing: the path picks JSON or SSE
    for mode in ("json", "sse"):
        path = "/stream/v1/chat/completions" if raw and mode == "sse" else "/v1/chat/completions"
        body = {"model": "gpt-4o-mini" if raw else f"bench-{mode}",
                "messages": [{"role": "user", "content": "Say hello."}], "stream": mode == "sse"}
        for c in levels:
            if proc is not None and proc.poll() is not None:
                print(f"{name} exited ({proc.returncode}): {mode} c={c} not measured", flush=True)
                results.append(Result(name, mode, c, 0.0, 0.0, 0.0, None, 0, -1, None, round_))
                continue
            wrk(base + path, body, auth, c, 1, work)  # warm-up
            cpu0 = cpu_seconds(proc.pid) if proc else 0.0
            store0 = cpu_seconds(store_pid) if store_pid else 0.0
            busy0, bench0, t0 = busy_seconds(), bench_seconds(watched), time.monotonic()
            measured = wrk(base + path, body, auth, c, seconds, work)
            others = ((busy_seconds() - busy0) - (bench_seconds(watched) - bench0)) / (
                time.monotonic() - t0)
            if measured is None:
                results.append(Result(name, mode, c, 0.0, 0.0, 0.0, None, 0, -1, None, round_))
                continue
            rps, p50, p99, n, errors = measured
            cpu = (cpu_seconds(proc.pid) - cpu0) * 1000 / n if proc and n else None
            store = (cpu_seconds(store_pid) - store0) * 1000 / n if store_pid and n else None
            results.append(Result(name, mode, c, rps, p50, p99, cpu, n, errors, store, round_,
                                  others))
            print(f"{name:10} {mode:4} c={c:<3} {rps:9.0f} ok/s  p50 {p50:7.3f} ms  "
                  f"p99 {p99:7.3f} ms  cpu/req {cpu or 0:6.3f} ms"
                  + (f"  store cpu/req {store:6.3f} ms" if store is not None else "")
                  + f"  errors {errors}  others {others:4.2f} cores", flush=True)
    return results


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,64, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("expected numbers of at least 1")
    return levels


def _names(known: tuple[str, ...], text: str) -> list[str]:
    names = text.split(",")
    if unknown := [name for name in names if name not in known]:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}: expected some of "
                                         f"{','.join(known)}")
    return names


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def table(results: list[Result], memory: list[dict]) -> str:
    """Every measurement, with what it adds to direct's p50 in the same round."""
    direct = {(r.mode, r.concurrency, r.round): r for r in results if r.target == "direct"}
    rounds = max((r.round for r in results), default=1) > 1
    lines = ["| target | mode | conc. | ok req/s | p50 ms | added p50 ms | p99 ms | CPU ms/req "
             "| store CPU ms/req | errors | others (cores) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {t: i for i, t in enumerate(dict.fromkeys(r.target for r in results))}
    for r in sorted(results, key=lambda r: (r.mode, r.concurrency, r.round, order[r.target])):
        name = f"{r.target} #{r.round}" if rounds else r.target
        if r.errors < 0:
            lines.append(f"| {name} | {r.mode} | {r.concurrency} | crashed | | | | | | | |")
            continue
        d = direct.get((r.mode, r.concurrency, r.round))
        added = "" if d is None or r.target == "direct" else f"{r.p50_ms - d.p50_ms:.3f}"
        cpu = "" if r.cpu_ms_per_req is None else f"{r.cpu_ms_per_req:.3f}"
        store = "" if r.store_cpu_ms_per_req is None else f"{r.store_cpu_ms_per_req:.3f}"
        others = "" if r.others_cores is None else f"{r.others_cores:.2f}"
        lines.append(f"| {name} | {r.mode} | {r.concurrency} | {r.rps:,.0f} | "
                     f"{r.p50_ms:.3f} | {added} | {r.p99_ms:.3f} | {cpu} | {store} | "
                     f"{r.errors} | {others} |")
    top = max((r.concurrency for r in results), default=0)
    ll = {r.mode: r for r in results if r.target == "litellm" and r.concurrency == top}
    for target in dict.fromkeys(r.target for r in results if r.target.startswith("tokometer")):
        ours = {r.mode: r for r in results if r.target == target and r.concurrency == top}
        for mode in ("json", "sse"):
            if mode not in ll or mode not in ours:
                continue
            ratio = (f"{ours[mode].rps / ll[mode].rps:.1f}x" if ll[mode].rps
                     else "LiteLLM served none")
            lines.append(f"\n{target} / LiteLLM successful req/s at c={top}, {mode}: {ratio}")
    lines.append("\nMemory after load, RSS / PSS summed over each process tree (MB): "
                 + ", ".join(f"{m['target']} {m['rss']:.0f} / {m['pss']:.0f}" for m in memory))
    return "\n".join(lines)


def summary(targets: list[Target], results: list[Result], memory: list[dict]) -> str:
    """At the highest concurrency: each target's req/s as median (range) over the rounds, and
    the ratios the issue sets targets for, each taken within a round: w2 / w1, PostgreSQL /
    SQLite at the same workers, tokometer / bare at the same workers."""
    top = max((r.concurrency for r in results), default=0)
    rps = {(r.target, r.mode, r.round): r.rps for r in results
           if r.concurrency == top and r.errors >= 0}
    rounds = sorted({r.round for r in results})

    def spread(values: list[float], fmt: str) -> str:
        if not values:
            return "-"
        low, mid, high = min(values), statistics.median(values), max(values)
        return format(mid, fmt) + (f" ({low:{fmt}}-{high:{fmt}})" if len(values) > 1 else "")

    def cpu(target: str, mode: str, field: str) -> str:
        values = [getattr(r, field) for r in results if r.target == target and r.mode == mode
                  and r.concurrency == top and getattr(r, field) is not None]
        return f"{statistics.median(values):.3f}" if values else ""

    lines = [f"\nAt c={top}, median (range) over {len(rounds)} round(s):\n",
             "| target | JSON req/s | SSE req/s | CPU ms/req JSON / SSE | store CPU ms/req "
             "JSON / SSE | RSS per worker MB | supervisor RSS MB | others (cores) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in targets:
        per_mode = [spread([rps[t.name, m, n] for n in rounds if (t.name, m, n) in rps], ",.0f")
                    for m in ("json", "sse")]
        mem = [m for m in memory if m["target"] == t.name]
        workers = spread([w for m in mem for w in m["worker_rss"]], ".0f") if mem else ""
        supervisor = spread([m["supervisor_rss"] for m in mem], ".0f") if mem else ""
        store = " / ".join(cpu(t.name, m, "store_cpu_ms_per_req") for m in ("json", "sse"))
        others = spread([r.others_cores for r in results if r.target == t.name
                         and r.concurrency == top and r.others_cores is not None], ".2f")
        lines.append(f"| {t.name} | {per_mode[0]} | {per_mode[1]} | "
                     f"{cpu(t.name, 'json', 'cpu_ms_per_req')} / "
                     f"{cpu(t.name, 'sse', 'cpu_ms_per_req')} | "
                     f"{store if store != ' / ' else ''} | {workers} | {supervisor} | "
                     f"{others} |")
    lines += ["", "| req/s ratio, within a round | JSON | SSE |", "|---|---:|---:|"]
    for a, b in comparisons(targets):
        ratios = [spread([rps[a.name, m, n] / rps[b.name, m, n] for n in rounds
                          if rps.get((b.name, m, n)) and (a.name, m, n) in rps], ".2f")
                  for m in ("json", "sse")]
        lines.append(f"| {a.name} / {b.name} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def comparisons(targets: list[Target]) -> list[tuple[Target, Target]]:
    """The pairs whose req/s ratio the issue sets a target for, and their ceilings: more
    workers against the fewest (bare's is what the machine allows), PostgreSQL against SQLite
    at the same workers, tokometer against bare at the same workers."""
    fewest = min((t.workers for t in targets), default=1)
    more_workers = [(a, b) for a in targets for b in targets if a.kind == b.kind
                    and a.kind in SCALED and a.store == b.store and a.workers > b.workers == fewest]
    other_store = [(a, b) for a in targets for b in targets if a.kind == b.kind
                   and a.workers == b.workers and (a.store, b.store) == ("postgresql", "sqlite")]
    over_bare = [(a, b) for a in targets for b in targets
                 if a.kind in STORED and b.kind == "bare" and a.workers == b.workers]
    return more_workers + other_store + over_bare

if __name__ == "__main__":
    sys.exit(main())
