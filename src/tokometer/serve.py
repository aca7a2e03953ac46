"""`tokometer serve`: local model servers first, then the gateway on granian + uvloop."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from . import config
from .launch import start_model_server

log = logging.getLogger("tokometer")


def serve(config_path: Path, *, launch: bool = True) -> None:
    settings = config.load(config_path)  # fail fast, before starting anything
    children: list[subprocess.Popen[bytes]] = []
    try:
        for provider in settings.providers.values():
            if launch and provider.launch is not None:
                log.info("starting the local model server %r at %s (first start assembles the "
                         "model; this can take a minute)", provider.name, provider.base_url)
                if (child := start_model_server(provider, settings.server.data_dir)) is not None:
                    children.append(child)
        _run_gateway(settings, config_path)
    finally:
        for child in children:
            child.terminate()
            child.wait(timeout=30)


def _run_gateway(settings: config.Settings, config_path: Path) -> None:
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    os.environ["TOKOMETER_CONFIG"] = str(config_path.resolve())  # read by the worker's factory
    log.info("gateway listening on http://%s:%d", settings.server.host, settings.server.port)
    Server(
        "tokometer.gateway:create_app",
        address=settings.server.host,
        port=settings.server.port,
        interface=Interfaces.ASGI,
        loop=Loops.uvloop,
        factory=True,
        workers=1,
        log_access=False,
    ).serve()
