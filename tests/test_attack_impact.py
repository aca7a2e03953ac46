"""Attacks on energy/CO2e, energy budgets, implicit labels and the provenance registry.

Each test pins an attack: those marked "Mended" demonstrated a bug when they were written
(the attack of round 14) and hold since its fix; the others held from the start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from typing import Any

import pytest

from conftest import start_gateway, stop_gateway, wait_for_event
from processes import cli
from scripted_upstream import Script
from test_attack_batch import chat_toml
from test_provenance import paragraphs
from tokometer.config import Datacentre, Provider, load
from tokometer.errors import ConfigError
from tokometer.gateway.labels import Labels
from tokometer.impact import Impacts
from tokometer.impact import measured as measured_module
from tokometer.impact.measured import CpuShares, listening_pid
from tokometer.ledger import open_store
from tokometer.usage.body import parse_json

LOCAL = Provider("local", "openai", "http://127.0.0.1:1/v1", None, None, None, None, None,
                 impact=Datacentre(zone=None, pue=None, watts_per_core=20.0))


def answer(text: str) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 80, "total_tokens": 89}}


def burn_cpu(seconds: float) -> None:
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass


# --- measured energy (impact/measured.py) ------------------------------------------------------

def test_a_cpu_clock_that_goes_backwards_never_gives_negative_energy(monkeypatch):
    """(Mended.) The server's pid is reused by another process between two
    readings (the server died and a younger process got its pid, whose CPU clock is lower):
    CpuShares._settle shares `now - last`, negative, among the requests in flight; the
    request is charged negative CPU seconds, and Impacts.measured turns them into negative
    Wh and gCO2e (which would also refund an energy budget)."""
    readings = iter([50_000_000_000, 2_000_000_000])  # 50 s of CPU, then a new process's 2 s
    monkeypatch.setattr(measured_module.time, "clock_gettime_ns",
                        lambda clock: next(readings))
    monkeypatch.setattr(measured_module, "descendants", lambda pid: [])  # one process
    shares = CpuShares(0, os.getpid())
    ticket = shares.begin()
    assert ticket is not None
    seconds = shares.end(ticket)
    assert seconds is None or seconds >= 0, f"a request charged {seconds} s of CPU"
    if seconds is not None:
        figures = Impacts().measured(LOCAL, seconds)
        assert figures is None or figures.energy_wh.low >= 0


def test_watts_per_core_nan_is_a_config_error(tmp_path):
    """(Mended.) `watts_per_core = nan` (TOML allows nan) reaches
    `_Reader.number`'s `value <= 0` as Decimal('NaN'): decimal.InvalidOperation escapes from
    load() (a traceback from `tokometer serve`), not a ConfigError naming the key."""
    path = tmp_path / "tokometer.toml"
    path.write_text('[[providers]]\nname="p"\napi="openai"\nbase_url="http://127.0.0.1:9/v1"\n'
                    "impact={watts_per_core=nan}\n")
    with pytest.raises(ConfigError, match="watts_per_core"):
        load(path)


@pytest.mark.parametrize("base_url", ["http://0.0.0.0:9/v1", "http://127.0.0.2:9/v1",
                                      "http://localhost.evil.example:9/v1"])
def test_watts_per_core_only_on_loopback_names(tmp_path, base_url):
    """HOLDS: only 127.0.0.1, localhost and ::1 may be measured."""
    path = tmp_path / "tokometer.toml"
    path.write_text(f'[[providers]]\nname="p"\napi="openai"\nbase_url="{base_url}"\n'
                    "impact={watts_per_core=10}\n")
    with pytest.raises(ConfigError, match="watts_per_core"):
        load(path)


def test_a_measured_request_cannot_overspend_an_energy_budget(scripted, tmp_path):
    """(Mended: refused.) A budget in Wh reserves Meter.need's *modelled* ceiling (the
    model's parameters at infinite latency), but a local server's event carries its
    *measured* CPU energy (meter._impact), which nothing bounds: one request to a busy local
    server spends many times the whole budget. Here the model is sized 1 M parameters
    (ceiling ~0.002 Wh), the budget is 0.01 Wh, and the server's process (this test's,
    which hosts the scripted provider) burns 1 s of CPU while the request is in flight:
    ~0.28 Wh at 1000 W per core recorded against a 0.01 Wh budget."""
    body = f"""{scripted.providers_toml().replace(
        'base_url = "' + scripted.url + '/v1"',
        'base_url = "' + scripted.url + '/v1"' + chr(10) + "impact = { watts_per_core = 1000 }")}
[[models]]
name = "local"
tokenizer = "tiktoken:o200k_base"
routes = [{{ provider = "oa", model = "my-local-model" }}]
impact = {{ params = 0.001 }}

[[budgets]]
tenant = "acme"
limit = 0.01
unit = "Wh"
period = "day"
"""
    assert "watts_per_core" in body
    gw = start_gateway(tmp_path / "gw", body)
    try:
        refused = gw.chat("local", user="measured-budget", max_tokens=16)
    finally:
        stop_gateway(gw)
    # Mended: a measured server's energy has no bound before it runs, so an energy budget
    # cannot be kept over it: refused up front (402), never overspent.
    assert refused.status_code == 402, refused.text
    assert "measured" in refused.json()["error"]["message"]
    assert not any(a.get("user") == "measured-budget" for a in scripted.arrived)


# --- labels (gateway/labels.py) ------------------------------------------------------------------

def test_a_utf16_answer_is_not_corrupted_by_the_label():
    """(Mended.) parse_json falls back to json.loads, which reads UTF-16 and
    UTF-32 JSON (RFC 7159 allowed them), so such an answer is billed and relayed; then
    Labels.into_body finds the last b"}" byte and splices UTF-8 bytes into UTF-16 (dropping
    the last NUL): the client gets bytes no JSON reader accepts. Before labels, the
    provider's bytes went through unchanged."""
    raw = json.dumps(answer("hello")).encode("utf-16-le")
    body = parse_json(raw)
    assert isinstance(body, dict)  # the gateway accepts it, reads its usage and relays it
    labels = Labels("tokometer")
    out = labels.into_body(raw, body, labels.label("ev_1", "ab" * 32))
    try:
        relayed = json.loads(out)
    except ValueError as e:
        pytest.fail(f"the labelled answer is no longer JSON: {e}: {out[-80:]!r}")
    assert relayed["choices"][0]["message"]["content"] == "hello"


@pytest.mark.parametrize("raw", [
    b'\xef\xbb\xbf{"id":"x","choices":[]}',  # a BOM
    b'{"id":"x","choices":[]} \r\n\t ',  # trailing whitespace
    b'{"id":"x","id":"y","choices":[]}',  # duplicate keys
    b'{}',
])
def test_odd_but_valid_json_answers_stay_json_when_labelled(raw):
    """HOLDS: the spliced answer is still JSON, with every member of the provider's."""
    body = parse_json(raw)
    labels = Labels("tokometer")
    out = labels.into_body(raw, body, labels.label("ev_1"))
    relayed = json.loads(out)
    for key, value in body.items():
        assert relayed[key] == value
    assert "AIGC" in relayed


@pytest.mark.parametrize("member", [b"null", b"5", b'"none"', b'{"Label":"0"}'])
def test_a_provider_member_that_is_no_label_does_not_remove_the_label(member):
    """(Mended.) Labels.into_body leaves a body alone whenever it has any top-level
    `AIGC` member ("the provider labelled it already"): a provider (hostile, or an echo of
    user content) sending `"AIGC": null`, a number, a string, or a label that says the
    content is not AI-generated ships the answer with no valid implicit label in its body,
    and one that contradicts the header. Only a well-formed label saying Label "1" should
    stand; anything else should be replaced by the gateway's."""
    raw = b'{"id":"x","choices":[],"AIGC":' + member + b"}"
    labels = Labels("tokometer")
    label = labels.label("ev_1")
    relayed = json.loads(labels.into_body(raw, parse_json(raw), label))
    assert isinstance(relayed["AIGC"], dict) and relayed["AIGC"].get("Label") == "1", relayed


# --- provenance registry (provenance/registry.py) ---------------------------------------------

@pytest.fixture(scope="module")
def prov_gw(scripted, tmp_path_factory):
    dead = ('[[providers]]\nname = "dead"\napi = "openai"\nbase_url = "http://127.0.0.1:1/v1"\n'
            'region = "US"\n[[models]]\nname = "dead-4o"\n'
            'routes = [{ provider = "dead", model = "gpt-4o" }]\n')
    gw = start_gateway(tmp_path_factory.mktemp("prov"),
                       chat_toml(scripted, 'admin_token_env = "TKM_A"\n') + dead,
                       env={"TKM_A": "admin"})
    yield gw
    stop_gateway(gw)


def _check(gw: Any, text: str, key: str) -> dict[str, Any]:
    r = gw.request("POST", "/v1/provenance/check", {"text": text}, key=key)
    assert r.status_code == 200, r.text
    return r.json()


def _answered(gw: Any, scripted: Any, tag: str, text: str, key: str) -> str:
    scripted.scripts[tag] = Script(body=answer(text))
    r = gw.chat("chat", user=tag, key=key)
    assert r.status_code == 200, r.text
    return r.headers["x-tokometer-event-id"]


def test_another_tenants_answers_do_not_change_a_tenants_check(prov_gw, scripted):
    """(Mended.) A key's check looks only at its own tenant's answers, but the
    boilerplate discount (Registry.check's `frequency`, over `seen_sets`) counts every
    tenant's: once another tenant has had a few answers holding a passage, the passage is
    "boilerplate" and the asking tenant's own strong match drops to "none". So a tenant can
    learn whether other tenants were given a text (register it once, check, watch the tier
    or share change), and another tenant can wipe out its evidence."""
    gw = prov_gw
    passage = paragraphs(30)[25]
    mine = _answered(gw, scripted, "leak-mine", passage + " Signed, the assistant of acme.",
                     gw.key)
    wait_for_event(gw, mine)
    before = _check(gw, passage, gw.key)
    other_key, _ = gw.new_key(tenant="rival")
    footers = paragraphs(40)[32:38]  # long and distinct: six distinct fingerprint sets
    for i, footer in enumerate(footers):
        theirs = _answered(gw, scripted, f"leak-theirs-{i}", f"{passage} {footer}", other_key)
    wait_for_event(gw, theirs)
    after = _check(gw, passage, gw.key)
    assert before["tier"] == "strong", before
    assert (after["tier"], [m["share"] for m in after["matches"]]) == \
        (before["tier"], [m["share"] for m in before["matches"]]), (before, after)


def test_a_key_never_sees_another_tenants_answer(prov_gw, scripted):
    """HOLDS: exact, edited and excerpted copies of another tenant's answer give 'none', no
    match and no receipt; the receipt endpoint answers 404 for its event."""
    gw = prov_gw
    text = paragraphs(30)[27]
    theirs_key, _ = gw.new_key(tenant="secretive")
    event_id = _answered(gw, scripted, "hidden-1", text, theirs_key)
    wait_for_event(gw, event_id)
    words = text.split()
    for probe in (text, text.upper(), " ".join(words[3:30])):
        assert _check(gw, probe, gw.key) == {"tier": "none", "matches": [], "receipt": None}
    assert gw.get(f"/v1/receipts/{event_id}").status_code == 404
    assert _check(gw, text, theirs_key)["tier"] == "exact"


@pytest.mark.parametrize("text", ["\x00" * 1000, "\ud800 lone", "a" * 2_000_000,
                                  "\u200b\u200b\u200b", "word " * 200_000])
def test_hostile_check_texts_are_answered(prov_gw, text):
    """HOLDS: NUL, lone surrogates, a 2 MB word, zero-width spaces and 200k words get an
    answer (200 or a 4xx), never a 500, and the gateway still serves afterwards."""
    r = prov_gw.request("POST", "/v1/provenance/check",
                        json.dumps({"text": text}).encode(), timeout=60)
    assert r.status_code < 500, r.text
    assert prov_gw.get("/healthz").status_code == 200


def test_a_non_utf8_check_body_is_a_client_error(prov_gw):
    """HOLDS: a body that is not UTF-8 is a 400."""
    r = prov_gw.request("POST", "/v1/provenance/check", b'{"text": "\xff\xfe caf\xe9"}')
    assert 400 <= r.status_code < 500, r.text



def test_a_text_with_no_words_is_not_an_exact_match_of_every_wordless_answer(prov_gw,
                                                                              scripted):
    """(Mended.) words() keeps letters and digits only, so an answer of emoji or
    punctuation (a "👍", "✅✅", "...") is registered with no fingerprints under
    text_sha256 of the empty string, and so is every query without words: Registry.check
    answers any such text ("!!!", "🙂", "-") with tier "exact", a match and a signed
    receipt for an unrelated answer. (Registry.mark should not register, and check should
    answer "none" to, a text with no words.)"""
    gw = prov_gw
    event_id = _answered(gw, scripted, "emoji-only", "\U0001f44d\U0001f44d", gw.key)
    wait_for_event(gw, event_id)
    found = _check(gw, "!!! ???", gw.key)
    assert found["tier"] == "none", (found["tier"], found["matches"])


def test_an_https_local_server_is_found_on_port_443(tmp_path, monkeypatch):
    """(Mended.) services._local_servers takes `urlsplit(base_url).port or 80`:
    a provider at https://localhost/v1 (a local TLS front) is measured by the CPU clock of
    whatever process listens on port 80, another server's, not the one it calls (443)."""
    from tokometer.gateway import services

    path = tmp_path / "tokometer.toml"
    path.write_text('[[providers]]\nname="p"\napi="openai"\nbase_url="https://localhost/v1"\n'
                    "impact={watts_per_core=10}\n")
    asked: list[int] = []
    monkeypatch.setattr(services, "listening_pid", lambda port: asked.append(port))
    services._local_servers(load(path))
    assert asked == [443]


def test_measured_events_audit_clean(scripted, tmp_path):
    """HOLDS: events of a measured local server (energy_source "measured", its ref) and
    their provenance marks keep `tokometer ledger audit` clean, and each answer is
    labelled with its own hash."""
    body = scripted.providers_toml().replace(
        f'base_url = "{scripted.url}/v1"',
        f'base_url = "{scripted.url}/v1"\nimpact = {{ watts_per_core = 50 }}')
    body += ('\n[[models]]\nname = "local"\ntokenizer = "tiktoken:o200k_base"\n'
             'routes = [{ provider = "oa", model = "my-local-model" }]\n'
             "impact = { params = 7 }\n")
    gw = start_gateway(tmp_path / "gw", body)
    try:
        ids = []
        for i in range(3):
            scripted.scripts[f"audit-{i}"] = Script(body=answer(f"answer number {i}"))
            r = gw.chat("local", user=f"audit-{i}")
            assert r.status_code == 200, r.text
            label = json.loads(r.headers["aigc"])
            assert json.loads(r.content)["AIGC"] == label
            ids.append(r.headers["x-tokometer-event-id"])
        events = [wait_for_event(gw, i) for i in ids]
        audit = cli(gw.config, "ledger", "audit")
    finally:
        stop_gateway(gw)
    assert all(e["energy_source"] == "measured" for e in events), events
    assert all(Decimal(e["energy_wh"]) >= 0 for e in events)
    assert audit.returncode == 0 and "audits clean" in audit.stdout, audit.stdout + audit.stderr


def test_the_cli_check_signing_beside_a_running_gateway_keeps_the_log_clean(prov_gw,
                                                                            scripted, tmp_path):
    """HOLDS: `tokometer provenance check` signs a head itself when its best match is newer
    than the latest one, while the gateway keeps writing: the receipt it prints verifies,
    and the ledger audits clean afterwards."""
    gw = prov_gw
    texts = paragraphs(60)[50:56]
    for i, text in enumerate(texts[:3]):
        last = _answered(gw, scripted, f"cli-sign-{i}", text, gw.key)
    wait_for_event(gw, last)
    text_file = tmp_path / "t.txt"
    text_file.write_text(texts[2])
    checked = cli(gw.config, "provenance", "check", str(text_file), "--format", "json")
    assert checked.returncode == 0, checked.stderr
    for i, text in enumerate(texts[3:]):
        _answered(gw, scripted, f"cli-sign-after-{i}", text, gw.key)
    receipt_file = tmp_path / "receipt.json"
    receipt_file.write_text(json.dumps(json.loads(checked.stdout)["receipt"]))
    pubkey = cli(gw.config, "ledger", "pubkey").stdout.strip()
    verified = cli(gw.config, "verify-receipt", str(receipt_file), "--pubkey", pubkey)
    audit = cli(gw.config, "ledger", "audit")
    assert json.loads(checked.stdout)["tier"] == "exact"
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert audit.returncode == 0 and "audits clean" in audit.stdout, audit.stdout + audit.stderr


def _listener(port: int = 0) -> tuple[subprocess.Popen[bytes], int]:
    """A process listening on 127.0.0.1:`port` (0: any), burning 0.3 s of CPU per line read."""
    code = ("import socket,sys,time\n"
            "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            f"s.bind(('127.0.0.1',{port}));s.listen()\n"
            "print(s.getsockname()[1],flush=True)\n"
            "for line in sys.stdin:\n"
            "    t=time.process_time()\n"
            "    while time.process_time()-t<0.3: pass\n"
            "    print('done',flush=True)\n")
    child = subprocess.Popen([sys.executable, "-S", "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    assert child.stdout is not None
    return child, int(child.stdout.readline())


def _work(child: subprocess.Popen[bytes]) -> None:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(b"go\n")
    child.stdin.flush()
    assert child.stdout.readline() == b"done\n"


def test_a_server_that_works_in_a_process_of_its_own_is_measured():
    """(Mended.) Ollama's runners and vLLM's engine do the work in a process the listening
    one starts (here at the first request, as Ollama starts a model's runner): its CPU is
    the server's."""
    code = ("import socket,subprocess,sys\n"
            "s=socket.socket();s.bind(('127.0.0.1',0));s.listen()\n"
            "print(s.getsockname()[1],flush=True)\n"
            "runner=None\n"
            "for line in sys.stdin:\n"
            "    if runner is None:\n"
            "        runner=subprocess.Popen([sys.executable,'-S','-c',sys.argv[1]],"
            "stdin=subprocess.PIPE,stdout=subprocess.PIPE)\n"
            "    runner.stdin.write(b'go\\n');runner.stdin.flush();runner.stdout.readline()\n"
            "    print('done',flush=True)\n")
    burn = ("import sys,time\n"
            "for line in sys.stdin:\n"
            "    t=time.process_time()\n"
            "    while time.process_time()-t<0.3: pass\n"
            "    print('done',flush=True)\n")
    server = subprocess.Popen([sys.executable, "-S", "-c", code, burn], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    assert server.stdout is not None
    try:
        port = int(server.stdout.readline())
        shares = CpuShares(port, listening_pid(port), relist_every=0)
        measured = []
        for _ in range(2):  # the runner's first request, and one it finds running
            ticket = shares.begin()
            _work(server)
            measured.append(shares.end(ticket) if ticket is not None else None)
    finally:
        server.kill()
        server.wait()
    assert all(m is not None and 0.25 <= m < 1.0 for m in measured), measured


def test_a_restarted_local_server_is_measured_again(tmp_path):
    """(Mended.) services._local_servers finds the server's pid once, at start;
    when the model server is restarted (a crash, an upgrade, `ollama serve` again) on the
    same port, CpuShares keeps the dead pid's clock: every later request is unmeasured
    (begin() None: modelled, or no figures at all for a model without [models.impact])
    until the gateway itself restarts, though the new server is one /proc look-up away."""
    from tokometer.gateway import services

    first, port = _listener()
    path = tmp_path / "tokometer.toml"
    path.write_text(f'[[providers]]\nname="p"\napi="openai"\n'
                    f'base_url="http://127.0.0.1:{port}/v1"\nimpact={{watts_per_core=10}}\n')
    shares = services._local_servers(load(path))["p"]
    ticket = shares.begin()
    _work(first)
    assert (shares.end(ticket) or 0) >= 0.2  # measured while the first server runs
    first.kill()
    first.wait()
    second, _ = _listener(port)
    try:
        assert listening_pid(port) == second.pid
        ticket = shares.begin()
        _work(second)
        seconds = shares.end(ticket) if ticket is not None else None
    finally:
        second.kill()
        second.wait()
    assert seconds is not None and seconds >= 0.2, \
        f"the restarted server's 0.3 s of CPU measured as {seconds}"


def test_a_provider_nobody_reached_used_no_energy(prov_gw):
    """(Mended.) meter._impact gives figures to every outcome with a route, and
    a route is set even when the connection was refused (nothing listens on the provider's
    port): Prepared.impact with no tokens still charges min(duration, EcoLogits' TTFT) of a
    server's power plus its embodied share, so a request that never reached any model is
    recorded with Wh and gCO2e (and spends them from an energy budget). Only an outcome
    whose provider answered (a status it sent) ran anything."""
    r = prov_gw.chat("dead-4o")
    assert r.status_code >= 500, r.text
    event = wait_for_event(prov_gw, r.headers["x-tokometer-event-id"])
    assert event["energy_wh"] in (None, "0"), \
        f"a refused connection recorded {event['energy_wh']} Wh, {event['co2e_g']} gCO2e"


def test_a_remote_server_with_a_launch_table_is_not_measured_by_a_local_process(tmp_path):
    """(Mended.) impact.watts_per_core gives the 10 W default to any provider
    with a [providers.launch] table, and services._local_servers then looks up whichever
    local process listens on the base_url's *port number*, whatever its host: for a model
    server on another machine (launch is skipped when it is already up there), the CPU of an
    unrelated process here (another app, or the gateway itself) becomes the requests'
    "measured" energy. The config refuses an explicit watts_per_core off loopback; the
    launch default skips that rule."""
    from tokometer.gateway import services

    unrelated, port = _listener()
    try:
        path = tmp_path / "tokometer.toml"
        path.write_text(f'[[providers]]\nname="p"\napi="openai"\n'
                        f'base_url="http://gpu-box.example:{port}/v1"\n'
                        'launch={gguf="model.gguf", chat_format="chatml"}\n')
        found = services._local_servers(load(path))
    finally:
        unrelated.kill()
        unrelated.wait()
    assert "p" not in found, f"measured by the local pid {found['p'].pid} (unrelated)"


def test_provenance_checks_do_not_hold_up_key_revocation(prov_gw):
    """(Mended.) A check fingerprints its text in pure Python on the side store's
    thread (Transparency._read = the OffLoop shared with the admin API and the dashboard,
    whose calls never overlap): any key may send texts up to max_body_bytes (2 M CJK
    characters, each a word: ~2 s of HMACs apiece), and a few at once queue the admin API
    behind them. Here four checks from a tenant's key delay the admin's revocation of a key
    (the tool to stop that very tenant) by seconds. Fingerprint the query before taking the
    store (and bound the words a check reads)."""
    gw = prov_gw
    victim, victim_id = gw.new_key(tenant="abuser")
    text = "\u4e00\u4e8c\u4e09\u56db\u4e94" * 400_000
    body = json.dumps({"text": text}, ensure_ascii=False).encode()
    checks = [threading.Thread(target=lambda: gw.request(
        "POST", "/v1/provenance/check", body, key=victim, timeout=120)) for _ in range(4)]
    for t in checks:
        t.start()
    time.sleep(1.0)  # the checks have arrived
    t0 = time.monotonic()
    revoked = gw.request("DELETE", f"/admin/keys/{victim_id}", key="admin", timeout=120)
    took = time.monotonic() - t0
    for t in checks:
        t.join(120)
    assert revoked.status_code == 200, revoked.text
    assert took < 2.0, f"the admin's revocation waited {took:.1f} s behind provenance checks"


@pytest.mark.parametrize("column", ["text_sha256", "fingerprints"])
def test_a_tampered_registry_row_does_not_audit_clean(prov_gw, scripted, column):
    """(Mended.) The registry's rows are what a check matches against and what
    its signed receipt vouches for, but `tokometer ledger audit` reads none of them:
    - text_sha256 (the exact tier) is committed nowhere: rewritten to the hash of any text,
      that text is then "exact: generated here, word for word", with a receipt that verifies;
    - fingerprints are committed by the leaf's fingerprint_sha256, yet nothing compares the
      row with it.
    Either edit audits clean. (Commit text_sha256 in the leaf too, and have the audit check
    every row against its event: hash, and no row without an event.)"""
    from tokometer.provenance.fingerprint import text_sha256

    gw = prov_gw
    text = paragraphs(60)[58]
    event_id = _answered(gw, scripted, f"tamper-{column}", text, gw.key)
    wait_for_event(gw, event_id)
    forged = "I wrote this myself, every word of it, by hand."
    with open_store(gw.store) as store:
        old = store.execute(f"SELECT {column} FROM provenance WHERE event_id = ?",
                            (event_id,)).fetchone()[0]
        new = text_sha256(forged) if column == "text_sha256" else bytes(old)[8:]
        with store.transaction():
            store.execute(f"UPDATE provenance SET {column} = ? WHERE event_id = ?",
                          (new, event_id))
    try:
        audit = cli(gw.config, "ledger", "audit")
        if column == "text_sha256":
            assert _check(gw, forged, "admin")["tier"] == "exact"  # the forgery works
    finally:
        with open_store(gw.store) as store, store.transaction():
            store.execute(f"UPDATE provenance SET {column} = ? WHERE event_id = ?",
                          (old, event_id))
    assert audit.returncode != 0 and "audits clean" not in audit.stdout, audit.stdout


def test_streamed_requests_never_pass_an_energy_budget(upstream, tmp_path):
    """HOLDS: streamed requests under a budget in Wh (three times one request's figure)
    are admitted while their modelled ceiling fits and refused after, and what they spent,
    summed from the ledger, stays within the limit."""
    from conftest import FAKE_KEYS, MODELS_TOML, providers_toml

    gw = start_gateway(tmp_path / "gw", f'admin_token_env = "TKM_ADMIN"\n'
                       f"{providers_toml(upstream)}\n{MODELS_TOML}",
                       env={**FAKE_KEYS, "TKM_ADMIN": "admin"})
    body = {"model": "gpt-4o-mini", "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}

    def streamed() -> tuple[int, str]:
        with gw.stream("/v1/chat/completions", body) as r:
            r.read()
            return r.status_code, r.headers["x-tokometer-event-id"]

    try:
        status, first = streamed()
        assert status == 200
        one = Decimal(wait_for_event(gw, first)["energy_wh"])
        limit = one * 3
        put = gw.request("PUT", "/admin/budgets", {"tenant": "acme", "limit": str(limit),
                                                   "unit": "Wh", "period": "day"}, key="admin")
        assert put.status_code in (200, 201), put.text
        answers = [streamed() for _ in range(8)]
        served = [first, *(i for s, i in answers if s == 200)]
        spent = sum(Decimal(wait_for_event(gw, i)["energy_wh"]) for i in served)
    finally:
        stop_gateway(gw)
    assert any(s == 402 for s, _ in answers), answers
    assert spent <= limit, (spent, limit)
