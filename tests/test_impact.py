"""Energy and CO2e per request: the figures EcoLogits' own `llm_impacts` and
`compute_llm_impacts` give for the same inputs, plus the prefill estimate; a model nobody
knows gets none; the figures reach the ledger on every store and stay in its leaves."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import openai
import pytest
from ecologits.impacts.llm import compute_llm_impacts, compute_llm_impacts_dag
from ecologits.tracers.utils import llm_impacts
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import (
    FAKE_KEYS,
    MODELS_TOML,
    make_event,
    providers_toml,
    start_gateway,
    stop_gateway,
)
from processes import cli
from test_stores import append
from tokometer.analytics import flows, report
from tokometer.analytics.report import rollup_grain
from tokometer.config import Datacentre, Model, Parameters, Provider, Route, load
from tokometer.errors import ConfigError
from tokometer.events import Usage, decimal_str, rfc3339
from tokometer.impact import ESTIMATED, MEASURED, REF, Impacts, Span
from tokometer.impact.measured import CpuShares, listening_pid
from tokometer.impact.method import PREFILL_SHARE
from tokometer.ledger import open_store
from tokometer.ledger.rollups import ROLLUPS
from tokometer.ledger.signer import load_signer

OPENAI = Provider("openai", "openai", "http://127.0.0.1:1/v1", None, None, None, None, None)


def impact_of(model: str, usage: Usage, latency_s: float, provider: Provider = OPENAI,
              config_model: Model | None = None) -> Any:
    route = Route(provider, model)
    return Impacts().of(config_model or Model(model, (route,), None, None, None, None), route,
                        None, usage, latency_s)


def ends(value: Any) -> tuple[float, float]:
    """An EcoLogits value's (low, high): a RangeValue's ends, or a number twice."""
    return (value.min, value.max) if hasattr(value, "min") else (value, value)


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-12 * max(abs(a), abs(b))


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o"])
@settings(max_examples=60, deadline=None)
@given(output=st.integers(0, 100_000), latency=st.floats(0.001, 3600))
def test_the_output_figures_are_ecologits_own(model, output, latency):
    ours = impact_of(model, Usage(input_tokens=0, output_tokens=output), latency)
    theirs = llm_impacts("openai", model, output, latency)
    energy, gwp = ends(theirs.energy.value), ends(theirs.gwp.value)
    assert close(ours.energy_wh.low, energy[0] * 1000) and close(ours.energy_wh.high,
                                                                 energy[1] * 1000)
    assert close(ours.co2e_g.low, gwp[0] * 1000) and close(ours.co2e_g.high, gwp[1] * 1000)
    assert ours.energy_wh.mid == (ours.energy_wh.low + ours.energy_wh.high) / 2
    assert (ours.ref, ours.source) == (REF, ESTIMATED)


@settings(max_examples=40, deadline=None)
@given(prompt=st.integers(1, 200_000), output=st.integers(0, 4000))
def test_the_prompt_adds_its_share_of_a_generated_token_on_the_same_gpus(prompt, output):
    """The prefill term: each prompt token costs 2%-10% of a generated token's GPU energy,
    on the GPUs EcoLogits says the model needs, times the PUE, at the grid's intensity."""
    without = impact_of("gpt-4o", Usage(input_tokens=0, output_tokens=output), 5.0)
    with_prompt = impact_of("gpt-4o", Usage(input_tokens=prompt, output_tokens=output), 5.0)
    for end, share, active in ((0, PREFILL_SHARE[0], 44), (1, PREFILL_SHARE[1], 132)):
        # gpt-4o in EcoLogits: 44-132 of 440 billion parameters active, PUE 1.2, the US grid
        dag = compute_llm_impacts_dag(
            model_active_parameter_count=active, model_total_parameter_count=440,
            output_token_count=prompt * share, request_latency=5.0, if_electricity_mix_adpe=0,
            if_electricity_mix_pe=0, if_electricity_mix_gwp=0.3844, if_electricity_mix_wue=0,
            datacenter_pue=1.2, datacenter_wue=0)
        prefill_kwh = 1.2 * dag["gpu_required_count"] * dag["gpu_energy"]
        added_wh = (with_prompt.energy_wh.low, with_prompt.energy_wh.high)[end] \
            - (without.energy_wh.low, without.energy_wh.high)[end]
        added_g = (with_prompt.co2e_g.low, with_prompt.co2e_g.high)[end] \
            - (without.co2e_g.low, without.co2e_g.high)[end]
        assert added_wh == pytest.approx(prefill_kwh * 1000, rel=1e-9)
        assert added_g == pytest.approx(prefill_kwh * 0.3844 * 1000, rel=1e-9)


def test_a_local_model_sized_in_the_config_is_priced_by_compute_llm_impacts():
    """Gemma 3 270M served in Sweden at PUE 1.3: EcoLogits' compute_llm_impacts with those
    inputs and the Swedish grid."""
    local = Provider("local", "openai", "http://127.0.0.1:1/v1", None, None, None, None, None,
                     impact=Datacentre(zone="SWE", pue=(1.3, 1.3)))
    route = Route(local, "gemma-3-270m")
    gemma = Model("gemma", (route,), None, None, None, None,
                  impact=Parameters(active_params=(0.27, 0.27), total_params=(0.27, 0.27)))
    ours = impact_of("gemma-3-270m", Usage(input_tokens=0, output_tokens=120), 0.8, local, gemma)
    theirs = compute_llm_impacts(
        model_active_parameter_count=0.27, model_total_parameter_count=0.27,
        output_token_count=120, request_latency=0.8, if_electricity_mix_adpe=7.771e-08,
        if_electricity_mix_pe=4.73, if_electricity_mix_gwp=0.03526,
        if_electricity_mix_wue=6.0315, datacenter_pue=1.3, datacenter_wue=0.5)
    assert close(ours.energy_wh.mid, theirs.energy.value * 1000)
    assert close(ours.co2e_g.mid, theirs.gwp.value * 1000)


def test_the_provider_region_picks_the_grid():
    """The same request served in France and in Poland: the same energy, CO2e in the ratio
    of the two grids' intensity (EcoLogits: 0.04144 and 0.5886 kgCO2e/kWh)."""
    def served_in(region: str) -> Any:
        provider = Provider(f"p-{region}", "openai", "http://127.0.0.1:1/v1", None, None,
                            region, None, None)
        return impact_of("gpt-4o-mini", Usage(input_tokens=500, output_tokens=200), 3.0,
                         provider)

    france, poland = served_in("FR"), served_in("PL")
    assert france.energy_wh == poland.energy_wh
    # the hardware's embodied emissions do not depend on the grid: the ratio is of the rest
    theirs = llm_impacts("openai", "gpt-4o-mini", 200, 3.0, "FRA")
    embodied = ends(theirs.embodied.gwp.value)[0] * 1000
    assert (poland.co2e_g.low - embodied) / (france.co2e_g.low - embodied) == pytest.approx(
        0.5886 / 0.04144)


def test_a_model_nobody_knows_gets_no_figures_and_one_warning(caplog):
    impacts = Impacts()
    route = Route(OPENAI, "gpt-4o-house-finetune-x")  # a vendor EcoLogits lists, not the model
    model = Model("house", (route,), None, None, None, None)
    with caplog.at_level(logging.WARNING, "tokometer.impact"):
        for _ in range(3):
            assert impacts.of(model, route, None, Usage(10, 0, 0, 20, 0), 1.0) is None
    assert [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()] == [
        "EcoLogits does not know model 'gpt-4o-house-finetune-x' (config model 'house'): its "
        "requests get no energy or CO2e figures; set [models.impact] params to give them"]


def test_a_region_without_a_grid_mix_gets_no_figures_and_one_warning(caplog):
    """Monaco (MC) is a country EcoLogits has no electricity mix for: unknown, not zero."""
    impacts = Impacts()
    monaco = Provider("monaco", "openai", "http://127.0.0.1:1/v1", None, None, "MC", None, None)
    route = Route(monaco, "gpt-4o-mini")
    model = Model("m", (route,), None, None, None, None)
    with caplog.at_level(logging.WARNING, "tokometer.impact"):
        for served in (None, "gpt-4o-mini-2024-07-18"):
            assert impacts.of(model, route, served, Usage(10, 0, 0, 20, 0), 1.0) is None
    assert [r.getMessage() for r in caplog.records] == [
        "EcoLogits has no electricity mix for MCO (provider monaco): its requests get no "
        "energy or CO2e figures"]


def test_googles_median_gemini_prompt_falls_in_the_range_of_a_short_flash_answer():
    """Google's 0.24 Wh for the median Gemini Apps text prompt (2025): a 400-token prompt and
    a 150-token answer from gemini-2.5-flash, in EcoLogits' range for it (see README)."""
    google = Provider("google", "openai", "http://127.0.0.1:1/v1", None, None, None, None,
                      None)
    figures = impact_of("gemini-2.5-flash", Usage(input_tokens=400, output_tokens=150), 30.0,
                        google)
    assert figures.energy_wh.low < 0.24 < figures.energy_wh.high


@pytest.mark.parametrize(("table", "message"), [
    ('[[providers]]\nname="p"\napi="openai"\nbase_url="http://x"\nimpact={zone="Mars"}',
     r"providers\[0\]\.impact\.zone: expected a country's ISO 3166-1 code"),
    ('[[providers]]\nname="p"\napi="openai"\nbase_url="http://x"\nimpact={pue=[1.5, 1.2]}',
     r"providers\[0\]\.impact\.pue: expected 1 <= low <= high <= 5"),
    ('[[providers]]\nname="p"\napi="openai"\nbase_url="http://x"\nimpact={pue=0.5}',
     r"providers\[0\]\.impact\.pue: expected 1 <= low"),
    ('[[providers]]\nname="p"\napi="openai"\nbase_url="http://x"\nimpact={pue="high"}',
     r"expected a number or a \[low, high\] range"),
    ('[[providers]]\nname="p"\napi="openai"\nbase_url="http://x"\n[[models]]\nname="m"\n'
     'routes=[{provider="p"}]\nimpact={params=8, active_params=2}',
     r"models\[0\]\.impact: set 'params'"),
    ('[[providers]]\nname="p"\napi="openai"\nbase_url="http://x"\n[[models]]\nname="m"\n'
     'routes=[{provider="p"}]\nimpact={active_params=20, total_params=8}',
     r"active parameters cannot exceed its total"),
    ('[[providers]]\nname="p"\napi="openai"\nbase_url="http://x"\n[[models]]\nname="m"\n'
     'routes=[{provider="p"}]\nimpact={size=8}', r"models\[0\]\.impact\.size: unknown key"),
])
def test_bad_impact_settings_are_config_errors(tmp_path, table, message):
    path = tmp_path / "tokometer.toml"
    path.write_text(table + "\n")
    with pytest.raises(ConfigError, match=message):
        load(path)


def test_a_zone_may_be_alpha_2_or_alpha_3(tmp_path):
    path = tmp_path / "tokometer.toml"
    path.write_text('[[providers]]\nname="a"\napi="openai"\nbase_url="http://x"\n'
                    'impact={zone="SE", pue=1.1}\n[[providers]]\nname="b"\napi="openai"\n'
                    'base_url="http://x"\nimpact={zone="SWE"}\n')
    a, b = load(path).providers.values()
    assert (a.impact, b.impact) == (Datacentre("SWE", (1.1, 1.1)), Datacentre("SWE", None))


@pytest.mark.parametrize("stream", [False, True])
def test_every_event_carries_its_figures_into_the_ledger_on_every_store(
        upstream, tmp_path, store_location, stream):
    """Through the gateway with the openai SDK, on SQLite and on PostgreSQL: the stored event's
    figures are the method's for its own tokens and duration, its leaf commits to them (the
    audit recomputes every leaf), and a model nobody knows is stored without figures."""
    store = None if isinstance(store_location, type(tmp_path)) else store_location
    gw = start_gateway(tmp_path / "gw", f"{providers_toml(upstream)}\n{MODELS_TOML}",
                       env=FAKE_KEYS, store=store)
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0)
        ids = []
        for model in ("gpt-4o-mini", "mystery-model"):
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "hi"}], stream=stream)
            for _ in raw.parse() if stream else ():
                pass
            ids.append(raw.headers["x-tokometer-event-id"])
        known, unknown = gw.event(ids[0]), gw.event(ids[1])
        audit = cli(gw.config, "ledger", "audit")
    finally:
        stop_gateway(gw)
    assert audit.returncode == 0 and "audits clean" in audit.stdout, audit.stdout + audit.stderr
    figures = impact_of(known["model"], Usage(input_tokens=known["input_tokens"],
                                              output_tokens=known["output_tokens"]),
                        known["duration_ms"] / 1000,
                        Provider("fake", "openai", "http://x", None, None, "US", None, None))
    for field, value in (("energy_wh", figures.energy_wh.mid),
                         ("energy_wh_low", figures.energy_wh.low),
                         ("energy_wh_high", figures.energy_wh.high),
                         ("co2e_g", figures.co2e_g.mid), ("co2e_g_low", figures.co2e_g.low),
                         ("co2e_g_high", figures.co2e_g.high)):
        assert Decimal(known[field]) == Decimal(f"{value:.6g}"), field
    assert Decimal(known["energy_wh_low"]) <= Decimal(known["energy_wh"]) \
        <= Decimal(known["energy_wh_high"])
    assert (known["energy_ref"], known["energy_source"]) == (REF, ESTIMATED)
    assert all(unknown[f] is None for f in ("energy_wh", "energy_wh_low", "energy_wh_high",
                                            "co2e_g", "co2e_g_low", "co2e_g_high",
                                            "energy_ref", "energy_source"))


def busy_child(seconds: float) -> subprocess.Popen[bytes]:
    """A started process that burns `seconds` of CPU after it reads a line, then waits."""
    code = ("import sys,time\nprint('ready',flush=True)\nsys.stdin.readline()\n"
            f"t=time.process_time()\nwhile time.process_time()-t<{seconds}: pass\n"
            "print('done',flush=True)\nsys.stdin.readline()")
    child = subprocess.Popen([sys.executable, "-S", "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"  # started
    return child


def burn(child: subprocess.Popen[bytes]) -> None:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(b"go\n")
    child.stdin.flush()
    assert child.stdout.readline() == b"done\n"  # the child's own word that it has burnt


def test_a_server_alone_gives_its_request_all_its_cpu_and_overlapping_ones_share_it():
    child = busy_child(0.3)
    try:
        shares = CpuShares(0, child.pid)  # port 0: nothing to look up again
        alone = shares.begin()
        burn(child)
        first = shares.begin()  # two requests in flight from here on: they share
        spent_alone = shares.end(alone)
        assert spent_alone == pytest.approx(0.3, abs=0.05)
        second = shares.begin()
        child.stdin.write(b"x\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        child.wait(10)
        assert shares.end(first) is None and shares.end(second) is None  # the clock is gone
    finally:
        child.kill()
        child.wait()


def test_concurrent_requests_split_the_cpu_evenly():
    child = busy_child(0.4)
    try:
        shares = CpuShares(0, child.pid)  # port 0: nothing to look up again
        a, b = shares.begin(), shares.begin()
        burn(child)
        spent_a, spent_b = shares.end(a), shares.end(b)
        assert spent_a is not None and spent_b is not None
        assert spent_a + spent_b == pytest.approx(0.4, abs=0.05)
        assert abs(spent_a - spent_b) < 0.001  # the second's end added almost nothing
    finally:
        child.kill()
        child.wait()


def test_the_process_listening_on_a_port_is_found():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert listening_pid(server.getsockname()[1]) == os.getpid()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert listening_pid(port) is None


def test_measured_energy_is_cpu_time_at_the_power_of_a_core_on_the_grid():
    local = Provider("local", "openai", "http://127.0.0.1:1/v1", None, None, "FR", None, None,
                     impact=Datacentre(zone=None, pue=None, watts_per_core=20.0))
    figures = Impacts().measured(local, 1.8)
    assert figures is not None
    assert figures.energy_wh == Span(0.01, 0.01)  # 1.8 s x 20 W = 36 J = 0.01 Wh
    assert figures.co2e_g.low == pytest.approx(0.01 * 0.04144)  # France's grid, g per Wh
    assert (figures.source, figures.ref) == (MEASURED, "measured: CPU time x 20 W per core")
    assert Impacts().measured(OPENAI, 1.0) is None  # a remote provider is not measured


@pytest.mark.parametrize("table", [
    '[[providers]]\nname="p"\napi="openai"\nbase_url="https://api.example.com"\n'
    'impact={watts_per_core=10}',
    '[[providers]]\nname="p"\napi="openai"\nbase_url="http://127.0.0.1:9/v1"\n'
    'impact={watts_per_core=5000}',
])
def test_only_a_local_server_is_measured(tmp_path, table):
    path = tmp_path / "tokometer.toml"
    path.write_text(table + "\n")
    with pytest.raises(ConfigError, match="watts_per_core: measures a model server on this"):
        load(path)


def energy_events() -> list[Any]:
    """Events of two models in one day, some with figures and one model with none."""
    day = datetime.now(UTC).replace(hour=3, minute=0, second=0, microsecond=0) \
        - timedelta(days=1)
    out = []
    for i in range(30):
        known = i % 3 != 0
        out.append(make_event(
            time=rfc3339(day + timedelta(minutes=i)), model="gpt-4o-mini" if i % 2 else "m2",
            input_tokens=100 + i, output_tokens=20 + i,
            energy_wh=Decimal(f"0.0{i + 1}") if known else None,
            co2e_g=Decimal(f"0.00{i + 1}") if known else None))
    out.append(make_event(time=rfc3339(day), model="dark", energy_wh=None, co2e_g=None))
    return out


def expected_energy(events: list[Any]) -> dict[str, tuple[Any, Any, Any]]:
    """Per model: energy, CO2e (decimal strings) and tokens per kWh, by hand."""
    out = {}
    for model in {e.model for e in events}:
        lit = [e for e in events if e.model == model and e.energy_wh is not None]
        if not lit:
            out[model] = (None, None, None)
            continue
        energy = sum(e.energy_wh for e in lit)
        tokens = sum(e.input_tokens + e.output_tokens for e in lit)
        out[model] = (decimal_str(energy), decimal_str(sum(e.co2e_g for e in lit)),
                      int(tokens * 1000 / energy))
    return out


def test_reports_sum_energy_from_rollups_and_raw_events_alike(store_location, tmp_path):
    """On both stores: per model, from the rollups (whole days) and from the raw events (a
    range off the hour) alike, the sums by hand; a model without figures has none (not 0)."""
    events = energy_events()
    with open_store(store_location, create=True) as store:
        append(store, events, load_signer(tmp_path / "key.pem"))
        first = min(e.time for e in events)
        by_rollup = {r["model"]: (r["energy_wh"], r["co2e_g"], r["tokens_per_kwh"])
                     for r in report(store, ["model"])}
        by_events = {r["model"]: (r["energy_wh"], r["co2e_g"], r["tokens_per_kwh"])
                     for r in report(store, ["model"], since=first[:14] + "00:01Z")}
        assert rollup_grain(["model"], None, None, None) == "day"
        flows_rows = flows(store)
    assert by_rollup == expected_energy(events)
    assert by_events == expected_energy([e for e in events if e.time >= first[:14] + "00:01Z"])
    assert sum(Decimal(r["energy_wh"] or 0) for r in flows_rows) == sum(
        e.energy_wh for e in events if e.energy_wh is not None)


def test_rollups_made_before_energy_are_folded_again(store_location, tmp_path):
    """A store whose rollups have no energy columns (as this version's predecessor made
    them) gets them folded again from the events when opened, on both stores."""
    events = energy_events()
    with open_store(store_location, create=True) as store:
        append(store, events, load_signer(tmp_path / "key.pem"))
        with store.transaction():
            for name, dims in ROLLUPS.items():
                store.execute(f"DROP TABLE {name}")
                store.execute(f"CREATE TABLE {name} (period TEXT, start TEXT, "
                              + "".join(f"{d} TEXT, " for d in dims)
                              + "requests INTEGER, errors INTEGER, input_tokens INTEGER, "
                              "cache_read_tokens INTEGER, cache_write_tokens INTEGER, "
                              "output_tokens INTEGER, reasoning_tokens INTEGER, cost TEXT)")
    with open_store(store_location) as store:
        rows = {r["model"]: (r["energy_wh"], r["co2e_g"], r["tokens_per_kwh"])
                for r in report(store, ["model"])}
        requests = sum(r["requests"] for r in report(store, []))
    assert rows == expected_energy(events)
    assert requests == len(events)


@pytest.mark.parametrize(("unit", "field"), [("Wh", "energy_wh"), ("gCO2e", "co2e_g")])
def test_an_energy_budget_is_reserved_and_settled_like_money(
        upstream, tmp_path, store_location, unit, field):
    """On both stores: a budget in Wh (or g of CO2e) set at five times one request's figure
    admits requests while their worst case fits, refuses the next with 402, and never lets
    the figures spent pass its limit; the ledger's sum is what it reports spent. A model
    with no figures cannot be kept under it."""
    store = None if isinstance(store_location, type(tmp_path)) else store_location
    gw = start_gateway(tmp_path / "gw", f'admin_token_env = "TKM_ADMIN"\n'
                       f"{providers_toml(upstream)}\n{MODELS_TOML}",
                       env={**FAKE_KEYS, "TKM_ADMIN": "admin"}, store=store)
    try:
        def chat(model: str = "gpt-4o-mini") -> Any:
            return gw.request("POST", "/v1/chat/completions", {
                "model": model, "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}]})

        first = chat()
        one = Decimal(gw.event(first.headers["x-tokometer-event-id"])[field])
        limit = one * 5
        put = gw.request("PUT", "/admin/budgets", {"tenant": "acme", "limit": str(limit),
                                                   "unit": unit, "period": "day"}, key="admin")
        assert put.status_code in (200, 201), put.text
        answers = [chat() for _ in range(12)]
        refused = [a for a in answers if a.status_code == 402]
        served = [first, *(a for a in answers if a.status_code == 200)]
        unknown = chat("mystery-model")
    finally:
        stop_gateway(gw)
    assert refused and len(served) >= 2, [a.status_code for a in answers]
    assert f"{unit}" in refused[0].json()["error"]["message"]
    spent = sum(Decimal(gw.event(a.headers["x-tokometer-event-id"])[field]) for a in served)
    assert spent <= limit
    assert unknown.status_code == 402
    assert "has no energy figure" in unknown.json()["error"]["message"]


@pytest.mark.parametrize("unit", ["kWh", "co2", ""])
def test_an_unknown_budget_unit_is_a_clear_error(tmp_path, unit):
    path = tmp_path / "tokometer.toml"
    path.write_text(f'[[budgets]]\ntenant = "a"\nlimit = 1\nunit = "{unit}"\nperiod = "day"\n')
    with pytest.raises(ConfigError, match="'tokens', 'Wh' or 'gCO2e'"):
        load(path)


def test_a_correction_carries_the_change_in_energy(upstream, tmp_path, store_location):
    """On both stores: a correction of a modelled event's tokens carries the difference in
    its energy and CO2e (the method at the corrected tokens and the original's duration), so
    the report's sums are the corrected reading's; a model without figures corrects none."""
    store = None if isinstance(store_location, type(tmp_path)) else store_location
    gw = start_gateway(tmp_path / "gw", f'admin_token_env = "TKM_ADMIN"\n'
                       f"{providers_toml(upstream)}\n{MODELS_TOML}",
                       env={**FAKE_KEYS, "TKM_ADMIN": "admin"}, store=store)
    try:
        def corrected(model: str) -> tuple[dict, dict]:
            first = gw.chat(model)
            original = gw.event(first.headers["x-tokometer-event-id"])
            fix = gw.request("POST", "/admin/corrections", {
                "event_id": original["id"], "reason": "late usage", "output_tokens": 900},
                key="admin")
            assert fix.status_code == 201, fix.text
            return original, gw.event(fix.json()["id"])

        original, correction = corrected("gpt-4o-mini")
        _, unknown = corrected("mystery-model")
    finally:
        stop_gateway(gw)
    fake = Provider("fake-openai", "openai", "http://x", None, None, "US", None, None)
    before, after = (impact_of("gpt-4o-mini", Usage(input_tokens=original["input_tokens"],
                                                    output_tokens=original["output_tokens"] + n),
                               original["duration_ms"] / 1000, fake) for n in (0, 900))
    assert Decimal(correction["energy_wh"]) == Decimal(
        f"{after.energy_wh.mid - before.energy_wh.mid:.6g}")
    assert Decimal(correction["co2e_g_high"]) == Decimal(
        f"{after.co2e_g.high - before.co2e_g.high:.6g}")
    total = Decimal(original["energy_wh"]) + Decimal(correction["energy_wh"])
    assert float(total) == pytest.approx(after.energy_wh.mid, rel=1e-5)
    assert unknown["energy_wh"] is None and unknown["output_tokens"] == 900
