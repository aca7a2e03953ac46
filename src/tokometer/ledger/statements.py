"""Statements: what a tenant consumed in a month, line by line, signed so that anyone with the
log's public key can check it offline, and, given the tenant's own events, check every line.

    {"statement_version": 1, "tenant": "acme", "period": "2026-11", "from": …, "until": …,
     "lines": [{"model", "currency", "correction", "requests", "input_tokens", …, "cost",
                "charge", "energy_wh"}, …],
     "totals": [{"currency", "requests", "tokens", "cost", "charge", "energy_wh"}, …],
     "events": {"count": N, "root": "…", "first_leaf": i, "last_leaf": j},
     "tree_head": {…}, "public_key": "…", "signature": "…"}

A statement stays small however many events it covers: it commits to them by `events.root`,
the RFC 9162 Merkle root of their leaf hashes in log order (the same leaves the log holds,
each proven by a receipt), not by a proof per event. `tree_head` is a head signed over the
log that holds them all. The statement is signed with the log's key over the canonical
JSON of everything but its signature, after a domain prefix, so it cannot pass for anything
else the key signs. Corrections are lines of their own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..events import FIELDS, decimal_str, rfc3339
from .canonical import canonical_json, leaf_document
from .merkle import leaf_hash, root_of
from .read import event_of_row
from .receipts import sign_stored_head
from .signer import Signer, TreeHead, verify_head
from .store import Store

STATEMENT_VERSION = 1
_DOMAIN = b"tokometer statement v1\n"
_PERIOD = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
_TOKENS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
           "reasoning_tokens")
_AMOUNTS = ("cost", "charge", "energy_wh")
_EVENTS = (f"SELECT {', '.join(FIELDS)} FROM events WHERE tenant = ? AND time >= ? "
           "AND time < ? AND leaf_index IS NOT NULL AND leaf_index < ? ORDER BY leaf_index")


def bounds(period: str) -> tuple[str, str]:
    """A month's first instant and the next month's, RFC 3339 in UTC; ValueError if it is
    not a month like 2026-11."""
    found = _PERIOD.fullmatch(period)
    if found is None:
        raise ValueError(f"the period must be a month like 2026-11, not {period[:20]!r}")
    year, month = int(found[1]), int(found[2])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return rfc3339(start), rfc3339(end)


def build_statement(conn: Store, signer: Signer, tenant: str, period: str) -> dict[str, Any]:
    """The tenant's signed statement for the month, over the log as stored now."""
    start, end = bounds(period)
    head = sign_stored_head(conn, signer)
    tally = _Tally()
    for row in conn.stream(_EVENTS, (tenant, start, end, head.tree_size)):
        tally.add(event_of_row(row))
    body = {"statement_version": STATEMENT_VERSION, "tenant": tenant, "period": period,
            "from": start, "until": end, **tally.document(), "tree_head": head.to_json(),
            "public_key": signer.public_key_text()}
    signature = signer.sign_bytes(_signed(body))
    return {**body, "signature": base64.b64encode(signature).decode()}


def load_statement(data: bytes | str) -> Any:
    """A statement file's JSON, refused (ValueError) if an object in it names a key twice:
    readers differ on which value counts, and a verified statement must mean one thing."""
    document = orjson.loads(data)  # first: UTF-8, and a bound on nesting

    def once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            twice = next(k for k in keys if keys.count(k) > 1)
            raise ValueError(f"the key {twice[:40]!r} appears twice in one object")
        return dict(pairs)

    try:
        json.loads(data, object_pairs_hook=once)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
    return document


def verify_statement(statement: Any, key: Ed25519PublicKey,
                     events: Iterable[dict[str, Any]] | None = None) -> list[str]:
    """What is wrong with a statement; empty when it holds. With `events` (the tenant's own
    export, or its receipts' events), every line is recomputed from them, and they must be
    exactly the events it commits to: none missing, none added."""
    if not isinstance(statement, dict):
        return ["the statement is not a JSON object"]
    try:
        body = {k: v for k, v in statement.items() if k != "signature"}
        signature = base64.b64decode(statement["signature"], validate=True)
        if base64.b64encode(signature).decode() != statement["signature"]:
            raise ValueError("the signature is not canonical base64")
        head = TreeHead.from_json(statement["tree_head"])
        tenant, start, end = statement["tenant"], statement["from"], statement["until"]
        committed = statement["events"]
        lines, totals = statement["lines"], statement["totals"]
    except (KeyError, TypeError, ValueError) as e:
        return [f"the statement is malformed: {e}"]
    problems = []
    try:
        key.verify(signature, _signed(body))
    except (InvalidSignature, TypeError, orjson.JSONEncodeError):
        problems.append("the statement's signature does not verify with this public key: "
                        "it was altered, or signed by another key")
    if not verify_head(head, key):
        problems.append("the tree head's signature does not verify with this public key")
    if not isinstance(committed, dict) or not isinstance(committed.get("last_leaf", -1),
                                                         int | None):
        return [*problems, "the statement's events are malformed"]
    if committed.get("last_leaf") is not None and committed["last_leaf"] >= head.tree_size:
        problems.append("the statement covers leaves the signed tree head does not")
    try:
        if _totals(lines) != totals:
            problems.append("the totals are not the sums of the lines")
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:  # Decimal's Overflow too
        return [*problems, f"the statement's lines are malformed: {e!r}"]
    if events is None:
        return problems
    tally = _Tally()
    try:
        for event in sorted((e for e in events if isinstance(e, dict)
                             and e.get("tenant") == tenant
                             and isinstance(e.get("time"), str) and start <= e["time"] < end
                             and isinstance(e.get("leaf_index"), int)
                             and e["leaf_index"] < head.tree_size),
                            key=lambda e: e["leaf_index"]):
            tally.add(event)
        mine = tally.document()
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:
        return [*problems, f"the events given are malformed: {e!r}"]
    if mine["events"] != committed:
        problems.append(f"the events given are not the ones the statement covers: "
                        f"{mine['events']['count']} given for its {committed.get('count')} "
                        "(one is missing, added or altered)")
    expected = {_line_key(line): line for line in mine["lines"]}
    for line in lines:
        if expected.pop(_line_key(line), None) != line:
            problems.append(f"line {_line_key(line)} is not what the events add up to")
    problems += [f"line {k} of the events is missing from the statement" for k in expected]
    return problems


class _Tally:
    """Events folded into lines (per model, currency and whether a correction) and leaves."""

    def __init__(self) -> None:
        self.lines: dict[tuple[str, str, bool], dict[str, Any]] = {}
        self.leaves: list[bytes] = []
        self.first: int | None = None
        self.last: int | None = None

    def add(self, event: dict[str, Any]) -> None:
        self.leaves.append(leaf_hash(canonical_json(leaf_document(event))))
        self.first = event["leaf_index"] if self.first is None else self.first
        self.last = event["leaf_index"]
        key = (event.get("model") or "", event.get("currency") or "",
               event.get("corrects") is not None)
        line = self.lines.setdefault(key, {
            "model": key[0], "currency": key[1], "correction": key[2], "requests": 0,
            **dict.fromkeys(_TOKENS, 0), **dict.fromkeys(_AMOUNTS, None)})
        line["requests"] += 1
        for name in _TOKENS:
            line[name] += event.get(name) or 0
        for name in _AMOUNTS:
            if event.get(name) is not None:
                line[name] = Decimal(line[name] or 0) + Decimal(event[name])

    def document(self) -> dict[str, Any]:
        lines = [{**line, **{a: None if line[a] is None else decimal_str(line[a])
                             for a in _AMOUNTS}}
                 for _, line in sorted(self.lines.items())]
        root = root_of(self.leaves) if self.leaves else hashlib.sha256(b"").digest()
        return {"lines": lines, "totals": _totals(lines),
                "events": {"count": len(self.leaves), "root": root.hex(),
                           "first_leaf": self.first, "last_leaf": self.last}}


def _totals(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per currency: requests, tokens (input and output), and each amount (null if no line
    has one)."""
    totals: dict[str, dict[str, Any]] = {}
    for line in lines:
        total = totals.setdefault(line["currency"], {
            "currency": line["currency"], "requests": 0, "tokens": 0,
            **dict.fromkeys(_AMOUNTS, None)})
        total["requests"] += line["requests"]
        total["tokens"] += line["input_tokens"] + line["output_tokens"]
        for name in _AMOUNTS:
            if line[name] is not None:
                total[name] = decimal_str(Decimal(total[name] or 0) + Decimal(line[name]))
    return [totals[c] for c in sorted(totals)]


def _line_key(line: dict[str, Any]) -> str:
    return f"{line.get('model')!s}/{line.get('currency')!s}" + (
        " (correction)" if line.get("correction") else "")


def _signed(body: dict[str, Any]) -> bytes:
    return _DOMAIN + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
