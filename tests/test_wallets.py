"""Prepaid wallets, on SQLite and PostgreSQL: lots are drawn in time order, lowest priority
number first, then earliest expiry; an expired lot forfeits what it had left; a lot pays
only for what came after it was bought; charges are drawn where a plan gives them, else
costs; a refund goes back; what no lot could pay is owed. Every figure is worked out here
by hand. Top-ups from the CLI and the admin API; bad input is refused, naming the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import MINIMAL_CONFIG, make_event, start_gateway, stop_gateway
from processes import cli
from test_stores import append, stored
from tokometer.errors import RequestError
from tokometer.events import rfc3339
from tokometer.ledger import open_store
from tokometer.ledger.signer import load_signer
from tokometer.policy.wallets import top_up, wallet


def at(minutes: int) -> str:
    return rfc3339(datetime.now(UTC) + timedelta(minutes=minutes))


def test_lots_are_drawn_by_priority_then_expiry_and_expired_ones_forfeit(store_location,
                                                                          tmp_path):
    with open_store(store_location, create=True) as store:
        main = top_up(store, "acme", "10", "USD", priority=1, note="invoice 7")
        promo = top_up(store, "acme", "3", "USD", priority=0, expires=at(30))
        euros = top_up(store, "acme", "4", "EUR")
        top_up(store, "globex", "100", "USD")
        spends = [make_event(tenant="acme", time=at(1), cost=Decimal("1.5")),  # promo
                  make_event(tenant="acme", time=at(2), cost=Decimal("9"),  # a charge: 2
                             charge=Decimal("2")),  # promo 1.5, then main 0.5
                  make_event(tenant="acme", time=at(3), cost=None),  # unpriced
                  make_event(tenant="acme", time=at(40), cost=Decimal("4")),  # main
                  make_event(tenant="acme", time=at(41), cost=Decimal("-1"),
                             corrects="x"),  # refund: back to main
                  make_event(tenant="acme", time=at(42), cost=Decimal("1"), currency="EUR"),
                  make_event(tenant="globex", time=at(4), cost=Decimal("50"))]
        append(store, spends, load_signer(tmp_path / "key.pem"))
        before_expiry = wallet(store, "acme", datetime.now(UTC) + timedelta(minutes=10))
        found = wallet(store, "acme", datetime.now(UTC) + timedelta(hours=1))
    lots = {s.lot.lot_id: s for s in found.lots}
    assert (lots[promo.lot_id].used, lots[promo.lot_id].forfeited) == (Decimal(3), 0)
    assert lots[main.lot_id].used == Decimal("0.5") + 4 - 1
    assert lots[euros.lot_id].used == 1
    assert found.balance("USD") == Decimal(10) - Decimal("3.5")
    assert found.balance("EUR") == 3 and found.unpriced == 1 and not found.owed
    assert before_expiry.balance("USD") == Decimal(13) - Decimal("6.5")  # the promo used up


def test_a_lot_pays_only_for_what_came_after_it_and_an_expired_one_forfeits(store_location,
                                                                             tmp_path):
    with open_store(store_location, create=True) as store:
        append(store, [make_event(tenant="acme", time=at(-60), cost=Decimal(7))],
               load_signer(tmp_path / "key.pem"))  # before any lot: not the wallet's
        short = top_up(store, "acme", "2", "USD", expires=at(5))
        append(store, [make_event(tenant="acme", time=at(1), cost=Decimal("0.5")),
                       make_event(tenant="acme", time=at(10), cost=Decimal("0.25"))],
               load_signer(tmp_path / "key.pem"))  # after expiry: owed
        found = wallet(store, "acme", datetime.now(UTC) + timedelta(hours=1))
    state = found.lots[0]
    assert state.lot.lot_id == short.lot_id
    assert (state.used, state.forfeited, state.left) == (Decimal("0.5"), Decimal("1.5"), 0)
    assert found.owed == {"USD": Decimal("0.25")}


def test_the_cli_tops_up_and_shows_a_wallet(store_location, tmp_path):
    config = stored(store_location, tmp_path, [make_event(tenant="other")])
    done = cli(config, "wallet", "top-up", "--tenant", "acme", "--amount", "25.50",
               "--priority", "2", "--expires", "2099-01-01", "--note", "PO-1")
    assert done.returncode == 0, done.stderr
    assert "25.5 USD for acme, expiring 2099-01-01T00:00:00.000Z" in done.stdout
    shown = json.loads(cli(config, "wallet", "show", "--tenant", "acme", "--format",
                           "json").stdout)
    assert [(r["amount"], r["left"], r["priority"], r["note"]) for r in shown] == [
        ("25.5", "25.5", 2, "PO-1")]
    assert "balance 25.5 USD" in cli(config, "wallet", "show", "--tenant", "acme").stdout
    for bad, says in ((["--amount", "-1"], "non-negative"), (["--amount", "0"], "more than 0"),
                      (["--amount", "1", "--currency", "usd"], "ISO 4217"),
                      (["--amount", "1", "--expires", "soon"], "expires must be a date")):
        refused = cli(config, "wallet", "top-up", "--tenant", "acme", *bad)
        assert refused.returncode != 0 and says in refused.stderr


def test_the_admin_api_tops_up_and_shows_a_wallet(tmp_path):
    gw = start_gateway(tmp_path, 'admin_token_env = "WALLET_ADMIN"\n' + MINIMAL_CONFIG,
                       env={"WALLET_ADMIN": "wallet-admin"})
    try:
        added = gw.post("/admin/wallets/acme", {"amount": "40", "priority": 1,
                                                "expires": "2099-06-01T00:00:00Z"},
                        key="wallet-admin")
        assert added.status_code == 201, added.text
        assert added.json()["balances"] == {"USD": "40"}
        shown = gw.get("/admin/wallets/acme", key="wallet-admin").json()
        assert shown["lots"][0]["expires"] == "2099-06-01T00:00:00.000Z"
        bad = gw.post("/admin/wallets/acme", {"amount": "1", "priority": 5000},
                      key="wallet-admin")
        assert bad.status_code == 400 and "priority" in bad.json()["error"]["message"]
        assert gw.get("/admin/wallets/acme", key=gw.key).status_code == 401
    finally:
        stop_gateway(gw)


@pytest.mark.parametrize("args, says", [
    (("", "1", "USD"), "tenant"), (("t", "1e3", "USD"), "plain notation"),
    (("t", "1", "USD", True), "priority"), (("t", "1", "USD", 0, "2026-01-01T00:00:00"),
                                            "offset"),
    (("t" * 300, "1", "USD"), "longer than 256")])
def test_bad_top_ups_are_refused(tmp_path: Path, args: tuple[Any, ...], says: str):
    with open_store(tmp_path / "t.db", create=True) as store, \
            pytest.raises(RequestError, match=says):
        top_up(store, *args)
