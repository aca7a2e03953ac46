"""The overhead bench starts LiteLLM in its plain configuration, whatever the caller's
environment holds (issue 13, "the LiteLLM comparison must be fair"): an inherited
DETAILED_DEBUG costs LiteLLM 3-6x the CPU per request, silently behind LITELLM_LOG=ERROR.

A stand-in `litellm` executable records its arguments, environment and working directory and
answers the health probe, so the real `bench/overhead.py` start-up path runs without LiteLLM."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

STAND_IN = textwrap.dedent("""\
    import http.server, json, os, sys
    port = int(sys.argv[sys.argv.index("--port") + 1])
    record = {"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}
    config = sys.argv[sys.argv.index("--config") + 1]
    with open(os.path.join(os.path.dirname(config), "record.json"), "w") as f:
        json.dump(record, f)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health/liveliness" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
""")




@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A venv-shaped folder whose bin/litellm is the stand-in."""
    exe = tmp_path / "venv" / "bin" / "litellm"
    exe.parent.mkdir(parents=True)
    exe.write_text(f"#!{sys.executable}\n{STAND_IN}")
    exe.chmod(0o755)
    return tmp_path / "venv"


def _start(overhead, venv: Path, work: Path) -> dict:
    proc, port = overhead.litellm(work, venv, upstream=9)
    try:
        records = list(work.rglob("record.json"))  # written beside the config it was given
    finally:
        overhead.stop(proc)
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["argv"][record["argv"].index("--port") + 1] == str(port)
    return record


def test_the_callers_environment_does_not_reach_litellm(overhead, venv: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # what LiteLLM's CLI and library read from the environment, set the way that slows it
    hostile = {"DETAILED_DEBUG": "1", "DEBUG": "true", "NUM_WORKERS": "2", "LITELLM_LOG": "DEBUG",
               "LITELLM_MODE": "DEV", "HOST": "0.0.0.0", "OPENAI_API_KEY": "sk-caller"}
    for name, value in hostile.items():
        monkeypatch.setenv(name, value)
    work = tmp_path / "run"
    work.mkdir()
    record = _start(overhead, venv, work)
    env = record["env"]
    for name in ("DETAILED_DEBUG", "DEBUG", "NUM_WORKERS", "HOST", "OPENAI_API_KEY"):
        assert name not in env, name
    assert env["LITELLM_LOG"] == "ERROR"
    assert env["LITELLM_MODE"] == "PRODUCTION"  # no .env file is loaded
    assert env["LITELLM_TELEMETRY_DISABLED"] == "true"
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"  # no fetch from GitHub
    assert set(env) - {"PWD", "LC_CTYPE"} == {"PATH", "HOME", *overhead.LITELLM_ENV}
    assert Path(env["HOME"]) == Path(record["cwd"]) == work / "litellm"


def test_litellm_runs_one_worker_on_loopback_with_the_plain_config(overhead, venv: Path,
                                                                   tmp_path: Path) -> None:
    record = _start(overhead, venv, tmp_path)
    argv = record["argv"]
    assert argv[argv.index("--num_workers") + 1] == "1"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--detailed_debug" not in argv and "--debug" not in argv
    config = Path(argv[argv.index("--config") + 1]).read_text()
    # the model list and the master key, nothing else: no litellm_settings, no database
    top_level = {line.split(":")[0] for line in config.splitlines()
                 if line and not line.startswith(" ")}
    assert top_level == {"model_list", "general_settings"}
    assert f"master_key: {overhead.LITELLM_KEY}" in config
    assert "database_url" not in config and "callbacks" not in config
