"""Attacks on enforced wallets (policy/wallets.py WalletBudgets, guard.py, meter.py need):
what lets a tenant take tokens its wallet does not pay for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from conftest import FAKE_KEYS, make_event, providers_toml, start_gateway, stop_gateway
from test_replicas import METERED_MODEL
from test_stores import append
from test_wallet_enforcement import ADMIN, CHARGE, COST, METERED, lot
from tokometer.events import rfc3339
from tokometer.ledger import open_store
from tokometer.ledger.signer import load_signer
from tokometer.policy import wallets
from tokometer.policy.wallets import wallet


def _gateway(upstream, tmp_path: Path, extra: str = METERED):
    return start_gateway(tmp_path, f'admin_token_env = "WALLET_ADMIN"\n'
                         f'{providers_toml(upstream)}{extra}',
                         env={**FAKE_KEYS, "WALLET_ADMIN": ADMIN})


def test_a_refund_the_wallet_does_not_take_back_gives_no_credit(upstream, tmp_path: Path):
    """A refund of spend from before the wallet is not the wallet's (wallets.py), nor is the
    part of a refund larger than what the lots paid: the guard must not let the tenant spend
    it either, or the wallet ends owing."""
    gw = _gateway(upstream, tmp_path)
    try:
        before = gw.chat("metered", max_tokens=300)  # no wallet yet: charged, no lot paid
        assert before.status_code == 200
        gw.post("/admin/wallets/acme", {"amount": str(CHARGE)}, key=ADMIN).raise_for_status()
        refund = gw.post("/admin/corrections", {
            "event_id": before.headers["x-tokometer-event-id"], "reason": "goodwill",
            "cost": str(-COST)}, key=ADMIN)  # charged back -CHARGE under the markup
        assert refund.status_code == 201, refund.text
        assert gw.chat("metered", max_tokens=300).status_code == 200  # the lot pays it
        over = gw.chat("metered", max_tokens=300)
        assert over.status_code == 402, over.text  # the wallet is empty
        paid = gw.chat("metered", max_tokens=300)  # ... so a refund too large for the lot
        assert paid.status_code == 402
        gw.post("/admin/wallets/acme", {"amount": str(CHARGE)}, key=ADMIN).raise_for_status()
        served = gw.chat("metered", max_tokens=300)
        assert served.status_code == 200
        gw.post("/admin/corrections", {
            "event_id": served.headers["x-tokometer-event-id"], "reason": "goodwill",
            "cost": str(-3 * COST)}, key=ADMIN).raise_for_status()  # -3 CHARGE: the two
        # lots take back what they paid (2 CHARGE); the rest has no lot to go back to
        assert [gw.chat("metered", max_tokens=300).status_code for _ in range(3)] == [
            200, 200, 402]
    finally:
        stop_gateway(gw)
    with open_store(gw.store) as store:
        assert wallet(store, "acme").owed.get("USD", Decimal(0)) == 0


TARIFFED_BY_ANSWER = METERED_MODEL + """
[[plans]]
tenant = "acme"
tariffs = { "gpt-4o-mini-2024-07-18" = { input = 0, output = 1000 } }
"""


def test_a_tariff_of_the_model_that_answers_is_reserved(upstream, tmp_path: Path):
    """A plan's sell tariff applies by the name of the model that answered (charges.py):
    OpenAI answers gpt-4o-mini as gpt-4o-mini-2024-07-18. The reservation, priced by the
    route's model, was the cost: 100 times less than the charge."""
    gw = _gateway(upstream, tmp_path, TARIFFED_BY_ANSWER)
    try:
        gw.post("/admin/wallets/acme", {"amount": str(2 * COST)}, key=ADMIN).raise_for_status()
        answer = gw.chat("metered", max_tokens=300)
        assert answer.status_code == 402, gw.event(answer.headers["x-tokometer-event-id"])
        gw.post("/admin/wallets/acme", {"amount": str(100 * COST)},
                key=ADMIN).raise_for_status()
        assert gw.chat("metered", max_tokens=300).status_code == 200
    finally:
        stop_gateway(gw)
    with open_store(gw.store) as store:
        assert wallet(store, "acme").owed.get("USD", Decimal(0)) == 0


def test_lots_used_up_are_not_looked_at_again_for_every_event(tmp_path: Path, monkeypatch: Any):
    """A wallet topped up in small lots over a long ledger: each event looked at every lot
    used up before it (1,000 lots and 100,000 events took 155 s, on a thread holding the
    budgets' sync; after: 1 s). Counted, not timed: the lots' balances read."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    with open_store(tmp_path / "t.db", create=True) as store:
        for i in range(300):
            lot(store, "acme", "1", rfc3339(start + timedelta(seconds=i)))
        append(store, [make_event(tenant="acme", cost=Decimal(1),
                                  time=rfc3339(start + timedelta(seconds=300 + i)))
                       for i in range(2000)], load_signer(tmp_path / "key.pem"))
        reads = []
        left = wallets.LotState.left

        def counted(state: wallets.LotState) -> Decimal:
            reads.append(1)
            return left.fget(state)

        monkeypatch.setattr(wallets.LotState, "left", property(counted))
        found = wallet(store, "acme", start + timedelta(days=1))
    assert found.balance("USD") == 0 and found.owed == {"USD": 1700}
    assert len(reads) < 5 * (300 + 2000), len(reads)  # was 555,450
