"""The README stays true: its config example loads and names every key; every command is in it."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from decimal import Decimal
from pathlib import Path

from tokometer import config

README = (Path(__file__).parent.parent / "README.md").read_text()


def _config_example() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    return next(b for b in blocks if "[server]" in b)


def test_the_readmes_config_example_is_valid(tmp_path):
    raw = tomllib.loads(_config_example(), parse_float=Decimal)
    settings = config.parse(raw, tmp_path / "x.toml", environ={})
    assert "deepseek-chat" in settings.models


def test_the_readme_names_every_config_key():
    example = _config_example()
    keys = {f.name for cls in (config.Server, config.Provider, config.Model, config.Price,
                               config.Budget, config.Limit, config.Rule, config.Route,
                               config.Datacentre, config.Parameters)
            for f in fields(cls)} | {"gguf", "chat_format", "n_ctx", "params", *config.SCOPES}
    # api_key / admin_token / signing_key_pem: read from the variables named by api_key_env /
    # admin_token_env / signing_key_env; ids and scopes are derived, not written.
    keys -= {"api_key", "admin_token", "signing_key_pem", "id", "scope"}
    missing = sorted(k for k in keys if not re.search(rf"\b{k}\b", example))
    assert missing == []


def test_the_readme_shows_every_command():
    for command in ("serve", "keys create", "keys list", "keys revoke", "events", "report",
                    "budgets set", "budgets list", "budgets status", "budgets remove",
                    "ledger pubkey", "ledger head", "ledger audit", "receipt", "verify-receipt",
                    "rankings", "flows", "tasks", "export", "provenance check"):
        assert f"tokometer {command}" in README or f"./scripts/{command}" in README, command
