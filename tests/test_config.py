"""Bad config gets one clear error naming the file, the key and what is wrong."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from conftest import MINIMAL_CONFIG as BASE
from tokometer import ConfigError, load
from tokometer.cli import main

EXAMPLE = Path(__file__).parent.parent / "examples" / "tokometer.toml"



def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


def test_the_example_config_loads_with_every_provider():
    settings = load(EXAMPLE, environ={})
    assert {"local", "openai", "anthropic", "deepseek", "qwen", "moonshotai", "zhipuai",
            "minimax", "doubao", "mistral"} <= set(settings.providers)
    assert settings.providers["local"].launch is not None
    assert settings.models["qwen-plus"].price.cache_read == Decimal("0.08")


def test_provider_keys_come_from_the_environment():
    settings = load(EXAMPLE, environ={"DEEPSEEK_API_KEY": "sk-ds"})
    assert settings.providers["deepseek"].api_key == "sk-ds"
    assert settings.providers["openai"].api_key is None


def test_prices_are_exact_decimals_and_cache_rates_default_to_input(tmp_path):
    s = load(write(tmp_path, BASE + "price = { input = 0.27, output = 1.10 }\n"), environ={})
    price = s.models["m"].price
    assert (price.input, price.output, price.cache_read) == \
        (Decimal("0.27"), Decimal("1.10"), Decimal("0.27"))


@pytest.mark.parametrize(("text", "fragment"), [
    ("[server]\nport = 'x'\n", "server.port: expected an integer"),
    ("[server]\nbogus = 1\n", "server.bogus: unknown key"),
    ("[server]\nstop_timeout = 0\n", "server.stop_timeout: 0 is out of range"),
    ("[server]\ncurrency = 'dollars'\n", "server.currency: expected an ISO 4217"),
    ("[server]\nstore = 'mysql://x'\n", "server.store: expected 'sqlite:///PATH' or 'postgresql://"),
    ("[server]\nstore = 'postgresql://u@h:port/db'\n", "server.store: not a PostgreSQL URL"),
    ("[[providers]]\nname='p'\napi='grpc'\nbase_url='http://x'\n", "providers[0].api"),
    ("[[providers]]\nname='p'\napi='openai'\nbase_url='ftp://x'\n", "providers[0].base_url"),
    ("[[providers]]\nname='p'\napi='openai'\nbase_url='http://x'\nregion='Germany'\n",
     "providers[0].region: expected an ISO 3166-1"),
    ("[[models]]\nname='m'\nroutes=[{provider='nope'}]\n",
     "models[0].routes[0].provider: unknown provider 'nope'"),
    ("[[models]]\nname='m'\nroutes=[]\n", "models[0].routes: a model needs at least one route"),
    (BASE + "price = { input = -1, output = 1 }\n", "models[0].price.input: cannot be negative"),
    (BASE + "price = { input = 1e999999999, output = 1 }\n",
     "models[0].price.input: input must be a non-negative decimal"),
    (BASE + "price = { input = 1, output = 0.00000000000000001 }\n",
     "models[0].price.output: output must be a non-negative decimal"),
    (BASE + "price = { input = 1 }\n", "models[0].price.output: missing"),
    (BASE + "tokenizer = 'o200k'\n", "models[0].tokenizer: expected 'KIND:NAME'"),
    ("[server\n", "not valid TOML"),
    (BASE + BASE.split("[[models]]")[0], "providers[1].name: duplicate provider 'p'"),
    (BASE + "[[models]]" + BASE.split("[[models]]")[1], "models[1].name: duplicate model 'm'"),
])
def test_bad_config_names_the_key_and_the_problem(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(path, environ={})
    assert str(path) in str(e.value)
    assert fragment in str(e.value)


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "nope.toml")


def test_the_cli_turns_config_errors_into_exit_code_2(tmp_path, capsys):
    path = write(tmp_path, "[server]\nport = -5\n")
    assert main(["events", "--config", str(path)]) == 2
    assert "server.port: -5 is out of range" in capsys.readouterr().err


def test_secrets_are_read_from_the_environment_here_and_never_printed(tmp_path):
    """Config is the one place that reads the environment: the signing key's PEM too."""
    path = tmp_path / "t.toml"
    path.write_text('[server]\nadmin_token_env = "ADMIN"\nsigning_key_env = "LOG_KEY"\n'
                    '[[providers]]\nname = "p"\napi = "openai"\nbase_url = "http://x"\n'
                    'api_key_env = "P_KEY"\n')
    environ = {"ADMIN": "admin-secret", "LOG_KEY": "-----BEGIN PRIVATE KEY-----",
               "P_KEY": "sk-secret"}
    s = load(path, environ=environ)
    assert (s.server.admin_token, s.server.signing_key_pem, s.providers["p"].api_key) == \
        ("admin-secret", "-----BEGIN PRIVATE KEY-----", "sk-secret")
    shown = repr(s)
    assert not any(secret in shown for secret in environ.values())
