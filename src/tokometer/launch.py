"""Starting the local model servers a config asks for, and waiting until they answer."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .config import Provider
from .counting.registry import resolve_gguf
from .errors import ConfigError
from .lifeline import die_with_parent

READY_TIMEOUT = 600.0


def is_up(provider: Provider) -> bool:
    try:
        with urllib.request.urlopen(provider.base_url + "/models", timeout=2) as r:
            status: int = r.status
        return status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_model_server(provider: Provider, data_dir: Path) -> subprocess.Popen[bytes] | None:
    """Start llama-cpp-python's OpenAI server for `provider.launch`; None if already up."""
    launch = provider.launch
    assert launch is not None
    if is_up(provider):
        return None
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        raise ConfigError(f"provider {provider.name!r} has a [providers.launch] section but "
                          "llama-cpp-python's server is not installed: pip install "
                          "'llama-cpp-python[server]' (or install tokometer[local])") from None
    model_path = resolve_gguf(launch.gguf, data_dir)
    log_path = data_dir / "logs" / f"{provider.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
           "--chat_format", launch.chat_format, "--n_ctx", str(launch.n_ctx),
           "--host", launch.host, "--port", str(launch.port)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=functools.partial(die_with_parent, os.getpid()))
    deadline = time.monotonic() + READY_TIMEOUT
    while not is_up(provider):
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise ConfigError(f"the model server for {provider.name!r} exited with code "
                              f"{process.returncode}; its log ({log_path}) ends:\n{tail}")
        if time.monotonic() > deadline:
            process.terminate()
            raise ConfigError(f"the model server for {provider.name!r} did not answer at "
                              f"{provider.base_url} within {READY_TIMEOUT:.0f} s")
        time.sleep(0.2)  # polling a child process for readiness; nothing to await here
    return process
