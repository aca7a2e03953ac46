"""The commands, declared as data (COMMANDS), and what each runs: a call into the library and
a choice of how to show its answer (output.py). No SQL and no business rules live here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .. import analytics, config
from ..analytics import GROUPABLE, RANKED_BY, REPORT_PERIODS
from ..analytics import tasks as agent_tasks
from ..analytics.billing import SHAPES, billing_records
from ..analytics.charts import flows_chart, index_chart, rankings_chart, report_chart
from ..analytics.export import export as write_events
from ..analytics.price_index import INDEXED_BY, Ratios, price_index
from ..config import PERIODS, SCOPES, Budget
from ..counting.registry import TokenizerRegistry
from ..errors import LedgerError, TokometerError
from ..events import FIELDS, decimal_str
from ..ledger import Store, open_store
from ..ledger.read import count_events, iter_events
from ..policy import create_key, list_keys, revoke_key
from ..policy.budgets import (
    all_budgets,
    budget_statuses,
    new_budget,
    remove_budget,
    set_budget,
    stored_budgets,
)
from ..policy.wallets import WalletBudgets, top_up, wallet_with
from .corpus import ABOUT as COUNT_ABOUT
from .corpus import DEFAULT_TOKENIZERS, count_command, positive
from .output import progress, show, show_json, show_lines
from .spec import CHART, JSON_LINES, SINCE, TABLE_FORMAT, UNTIL, Command, OneOf, arg, whole

if TYPE_CHECKING:
    from ..ledger.audit import AuditReport
    from ..ledger.signer import Signer

MAX_TOP = 1_000_000
MAX_WEEKS = 520  # ten years
REPORT_COLUMNS = ["requests", "input_tokens", "cache_read_tokens", "cache_write_tokens",
                  "output_tokens", "reasoning_tokens", "cost", "currency", "energy_wh",
                  "co2e_g", "tokens_per_kwh"]
BUDGET_COLUMNS = ["budget_id", "scope", "scope_value", "limit", "unit", "period"]


def _store(args: argparse.Namespace, *, create: bool = False) -> Store:
    """The config's store; only commands that write may create it. Close it (`with`)."""
    return open_store(config.load(args.config).server.store, create=create)


def _rows_format(args: argparse.Namespace) -> str:
    return "jsonl" if args.json else "table"


def serve(args: argparse.Namespace) -> int:
    from ..serve import serve

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(Path(args.config), launch=not args.no_launch)
    return 0


# --- keys ---------------------------------------------------------------------------------

def keys_create(args: argparse.Namespace) -> int:
    with _store(args, create=True) as store:
        key, key_id = create_key(store, args.tenant, args.app, args.region)
    if args.json:
        show_json({"key": key, "key_id": key_id})
    else:
        print(f"key:    {key}\nkey_id: {key_id}\n(the key is shown only now; store it safely)")
    return 0


def keys_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        rows = list_keys(store)
    show(rows, ["key_id", "tenant", "app", "region", "created", "revoked"], _rows_format(args))
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    with _store(args) as store:
        revoke_key(store, args.key_id)
    print(f"revoked {args.key_id}")
    return 0


# --- budgets ------------------------------------------------------------------------------

def budgets_set(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    currency = settings.server.currency
    kind = next(k for k in SCOPES if getattr(args, k) is not None)
    budget = new_budget(kind, getattr(args, kind), args.limit, args.unit or currency,
                        args.period, currency)
    with open_store(settings.server.store, create=True) as store:
        budget = set_budget(store, budget, [b.id for b in settings.budgets])
    if args.json:
        show_json(_budget_row(budget, "store"))
    else:
        print(f"set {budget}")
    return 0


def budgets_list(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    with open_store(settings.server.store) as store:
        stored = stored_budgets(store)
    rows = [*(_budget_row(b, "config") for b in settings.budgets),
            *(_budget_row(b, "store") for b in stored)]
    show(rows, [*BUDGET_COLUMNS, "source"], _rows_format(args))
    return 0


def budgets_status(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    with open_store(settings.server.store) as store:
        now = datetime.now(UTC)
        wallets = WalletBudgets(settings.allowances, settings.server.currency)
        rows = budget_statuses(store, [*all_budgets(store, settings.budgets),
                                       *wallets.budgets(store, now)], now)
    show(rows, [*BUDGET_COLUMNS, "spent", "reserved", "remaining", "resets"],
         _rows_format(args))
    return 0


# --- wallets ------------------------------------------------------------------------------

WALLET_COLUMNS = ["lot_id", "created", "currency", "amount", "priority", "expires", "used",
                  "forfeited", "left", "note"]


def wallet_top_up(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    with open_store(settings.server.store, create=True) as store:
        lot = top_up(store, args.tenant, args.amount, args.currency or settings.server.currency,
                     args.priority, args.expires, args.note)
    print(f"added lot {lot.lot_id}: {decimal_str(lot.amount)} {lot.currency} for {lot.tenant}"
          + (f", expiring {lot.expires}" if lot.expires else ""))
    return 0


def wallet_show(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    with open_store(settings.server.store) as store:
        found = wallet_with(store, args.tenant, settings.allowances)
    show([s.row() for s in found.lots], WALLET_COLUMNS, args.format)
    if args.format == "table":
        summary = found.summary()
        if (allowed := summary["allowance"]) is not None:
            print(f"allowance {allowed['left']} {allowed['currency']} left of "
                  f"{allowed['amount']} this {allowed['period']}")
        for currency, balance in summary["balances"].items():
            owed = summary["owed"].get(currency)
            print(f"balance {balance} {currency}" + (f"; owed {owed} {currency}" if owed else ""))
        if found.unpriced:
            print(f"{found.unpriced} events had no known price and drew on no lot")
    return 0


def budgets_remove(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    with open_store(settings.server.store) as store:
        remove_budget(store, args.budget_id, [b.id for b in settings.budgets])
    print(f"removed {args.budget_id}")
    return 0


def _budget_row(budget: Budget, source: str) -> dict[str, str]:
    return {"budget_id": budget.id, "scope": budget.scope.kind,
            "scope_value": budget.scope.value, "limit": decimal_str(budget.limit),
            "unit": budget.unit, "period": budget.period, "source": source}


# --- the log ------------------------------------------------------------------------------
# These import the log's modules (and `cryptography`) when they run, so that `tokometer
# serve`'s supervisor process does not carry them.

def _signer(settings: config.Settings) -> Signer:
    from ..ledger.signer import load_signer

    s = settings.server
    return load_signer(s.signing_key, s.signing_key_pem, s.signing_key_env)


def ledger_pubkey(args: argparse.Namespace) -> int:
    print(_signer(config.load(args.config)).public_key_text())
    return 0


def ledger_head(args: argparse.Namespace) -> int:
    from ..ledger.receipts import latest_head

    with _store(args) as store:
        head = latest_head(store)
    if head is None:
        raise TokometerError("no signed tree head yet: start the gateway, or ask for a receipt")
    show_json(head.to_json())
    return 0


def ledger_audit(args: argparse.Namespace) -> int:
    from ..ledger.audit import audit

    settings = config.load(args.config)
    with open_store(settings.server.store) as store, \
            progress(count_events(store), "events") as step:
        report = audit(store, _signer(settings).public_key, step)
    return _audited(report, "the log audits clean")


def _audited(report: AuditReport, clean: str) -> int:
    """The audit's summary and findings; exit code 1 when it is not clean."""
    print(f"{report.events} events, {report.leaves} leaves, {report.heads} signed tree heads")
    first = report.first()
    if first is None:
        print(clean)
        return 0
    show_lines([f"NOT CLEAN: {len(report.findings)} problem(s); the first: {first.what}",
                *(f"  also: {finding.what}" for finding in report.ordered()[1:20])])
    return 1


def migrate(args: argparse.Namespace) -> int:
    from ..ledger.audit import audit
    from ..ledger.copy import copy_store

    settings = config.load(args.config)  # the log's key, to audit the copy with
    try:
        source, target = (config.store_location(text, Path.cwd())
                          for text in (args.source, args.target))
    except ValueError as e:
        raise TokometerError(f"--from/--to: {e}") from None
    with open_store(source) as src, open_store(target, create=True) as dst:
        with progress(count_events(src), "events") as step:
            copied = copy_store(src, dst, step)
        report = audit(dst, _signer(settings).public_key)
    print(", ".join(f"{n} {table}" for table, n in copied.items() if n))
    return _audited(report, "the copy audits clean")


def receipt(args: argparse.Namespace) -> int:
    from ..ledger.receipts import NotFound, receipt_signing_if_needed

    settings = config.load(args.config)
    try:
        with open_store(settings.server.store) as store:
            document = receipt_signing_if_needed(store, args.event_id, _signer(settings))
    except NotFound as e:
        raise TokometerError(str(e)) from None
    show_json(document, indent=True)
    return 0


def verify_receipt(args: argparse.Namespace) -> int:
    import orjson

    from ..ledger.receipts import verify_receipt
    from ..ledger.signer import parse_public_key

    try:
        document = orjson.loads(_read_receipt(args.file))  # orjson checks a file's UTF-8
    except (OSError, ValueError) as e:  # JSONDecodeError, and stdin's UnicodeDecodeError
        raise TokometerError(f"cannot read the receipt {args.file}: {e}") from None
    try:
        key = parse_public_key(_key_text(args.pubkey))
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise TokometerError(f"--pubkey: {e}") from None
    if problems := verify_receipt(document, key):
        show_lines(["INVALID receipt:", *(f"- {p}" for p in problems)])
        return 1
    event = document["event"]
    print(f"valid: event {event.get('id')} is leaf {document['leaf_index']} of the log signed "
          f"at {document['tree_head']['tree_size']} leaves")
    return 0


def statement(args: argparse.Namespace) -> int:
    from ..gateway.dashboard import statement_page
    from ..ledger.statements import build_statement

    settings = config.load(args.config)
    with open_store(settings.server.store) as store:
        try:
            document = build_statement(store, _signer(settings), args.tenant, args.period)
        except ValueError as e:
            raise TokometerError(f"--period: {e}") from None
    text = statement_page(document) if args.format == "html" \
        else orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote the statement of {args.tenant} for {args.period} "
              f"({document['events']['count']} events) to {args.output}")
    return 0


def verify_statement(args: argparse.Namespace) -> int:
    from ..ledger.signer import parse_public_key
    from ..ledger.statements import load_statement, verify_statement

    try:
        document = load_statement(_read_receipt(args.file))
    except (OSError, ValueError) as e:
        raise TokometerError(f"cannot read the statement {args.file}: {e}") from None
    try:
        key = parse_public_key(_key_text(args.pubkey))
    except (OSError, ValueError) as e:
        raise TokometerError(f"--pubkey: {e}") from None
    events = None if args.events is None else list(_exported_events(args.events))
    if problems := verify_statement(document, key, events):
        show_lines(["INVALID statement:", *(f"- {p}" for p in problems)])
        return 1
    checked = "; every line recomputed from the events given" if events is not None else ""
    print(f"valid: the statement of {document['tenant']} for {document['period']}, "
          f"{document['events']['count']} events{checked}")
    return 0


def _exported_events(path: Path) -> Iterator[dict[str, Any]]:
    """Events from JSON lines: `tokometer events --format jsonl`'s, or receipts (one per
    line: their events)."""
    try:
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    item = orjson.loads(line)
                    if not isinstance(item, dict):
                        raise ValueError(f"line {number} is not a JSON object")
                    yield item["event"] if "receipt_version" in item else item
    except (OSError, ValueError, KeyError) as e:
        raise TokometerError(f"--events {path}: {e}") from None


def provenance_check(args: argparse.Namespace) -> int:
    from ..ledger.receipts import sign_stored_head
    from ..provenance.registry import Registry, fingerprint_key

    try:
        raw = _read_receipt(args.file)
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except (OSError, ValueError) as e:
        raise TokometerError(f"cannot read {args.file}: {e}") from None
    settings = config.load(args.config)
    signer = _signer(settings)
    registry = Registry(fingerprint_key(signer.secret()))
    query = registry.query(text)
    with open_store(settings.server.store) as store:
        answer = registry.check(store, query, args.tenant)
        if answer["tier"] != "none" and answer["receipt"] is None:
            sign_stored_head(store, signer)  # the best match is newer than the latest head
            answer = registry.check(store, query, args.tenant)
    if args.format == "json":
        show_json(answer, indent=True)
        return 0
    print(_TIER_WORDS[answer["tier"]])
    show(answer["matches"], ["event_id", "time", "model", "provider", "tenant", "share"],
         "table")
    return 0


def provenance_c2pa_chain(args: argparse.Namespace) -> int:
    from ..provenance.manifests import certificate_chain

    settings = config.load(args.config)
    chain, root = certificate_chain(_signer(settings).secret(),
                                    settings.server.producer or "tokometer")
    sys.stdout.write((root if args.root else chain).decode())
    return 0


def reconcile_command(args: argparse.Namespace) -> int:
    from decimal import Decimal, InvalidOperation

    from ..analytics.reconcile import (
        COLUMNS,
        ledger_account,
        read_export,
        reconcile,
        recorded,
        within,
    )

    settings = config.load(args.config)
    providers = list(dict.fromkeys(p.strip() for p in args.provider.split(",") if p.strip()))
    unknown = [p for p in providers if p not in settings.providers]
    nowhere = f"in the config (it has {', '.join(settings.providers)})"
    if unknown:  # a provider apps report their usage of (ingest/) need not be configured
        try:
            with open_store(settings.server.store) as store:
                unknown = [p for p in unknown if not recorded(store, p)]
            nowhere += ", nor events of it in the ledger"
        except LedgerError as e:
            nowhere += f", and the ledger cannot be read for events of it: {e}"
    if not providers or unknown:
        raise TokometerError(f"--provider: no provider {', '.join(unknown) or '(none given)'} "
                             f"{nowhere}")
    try:
        tolerance = Decimal(args.tolerance)
    except InvalidOperation:
        tolerance = Decimal(-1)
    if not tolerance.is_finite() or not Decimal(0) <= tolerance <= 1:
        raise TokometerError(f"--tolerance: expected a share from 0 to 1, got {args.tolerance}")
    # Whole UTC days on both sides: a day's account is the provider's unit.
    since = f"{args.since[:10]}T00:00:00Z" if args.since else None
    until = f"{args.until[:10]}T00:00:00Z" if args.until else None
    theirs = within(read_export(Path(args.file)), since, until)
    with open_store(settings.server.store) as store:
        ours = ledger_account(store, providers, since, until)
    rows = reconcile(theirs, ours, tolerance)
    show(rows, COLUMNS, args.format)
    flagged = sum(1 for row in rows if row["flagged"])
    print(f"{len(rows)} days × models, {flagged} beyond {tolerance:%} of the larger side",
          file=sys.stderr)
    return 1 if flagged else 0


_TIER_WORDS = {
    "exact": "exact: this text was generated here, word for word",
    "strong": "strong: an edited copy of a text generated here",
    "partial": "partial: part of it, or a heavily edited copy, was generated here",
    "none": "no evidence that it was generated here (which says nothing of who wrote it)"}


def _read_receipt(name: str) -> bytes | str:
    """A file's bytes, or standard input's text for "-" (None in Python when it was closed)."""
    if name != "-":
        return Path(name).read_bytes()
    if sys.stdin is None:
        raise OSError("standard input is closed")
    return sys.stdin.read()


def _key_text(pubkey: str) -> str:
    """--pubkey: the key itself, or a PEM file's text; a key is longer than a file name can
    be, and asking whether such a name is a file is an OSError, not False."""
    try:
        is_file = Path(pubkey).is_file()
    except OSError:
        is_file = False
    return Path(pubkey).read_text() if is_file else pubkey


# --- reading the events -------------------------------------------------------------------

def events(args: argparse.Namespace) -> int:
    with _store(args) as store:
        show(iter_events(store, args.since, args.until), list(FIELDS),
             "csv" if args.format == "csv" else "jsonl")
    return 0


def billing(args: argparse.Namespace) -> int:
    """Billing records as JSON lines, to a file (written whole, then moved into place) or
    to stdout."""
    with _store(args) as store:
        records = billing_records(iter_events(store, args.since, args.until), args.to)
        if args.output is None:
            for record in records:
                sys.stdout.write(orjson.dumps(record).decode() + "\n")
            return 0
        partial = args.output.with_name(args.output.name + ".partial")
        n = 0
        with partial.open("wb") as f:
            for record in records:
                f.write(orjson.dumps(record) + b"\n")
                n += 1
        partial.replace(args.output)
    print(f"wrote {n} {args.to} records to {args.output}")
    return 0


def report(args: argparse.Namespace) -> int:
    by = [b.strip() for b in args.by.split(",") if b.strip()]
    with _store(args) as store:
        rows = analytics.report(store, by, args.since, args.until, args.period, args.top)
    if args.chart:
        report_chart(rows, by, args.period, args.chart)
    charged = ["charge", "margin"]
    if not any(r["charge"] is not None for r in rows):  # no price plan: nothing charged
        rows, charged = [{k: v for k, v in r.items() if k not in charged} for r in rows], []
    show(rows, [*(["period"] if args.period else []), *by, *REPORT_COLUMNS, *charged],
         args.format)
    return 0


def rankings(args: argparse.Namespace) -> int:
    with _store(args) as store:
        rows = analytics.rankings(store, args.by, args.weeks)
    if args.chart:
        rankings_chart(rows, args.by, args.chart)
    show(rows, ["week", args.by, "tokens", "share", "change_pp", "energy_wh", "co2e_g"],
         args.format)
    return 0


def tasks(args: argparse.Namespace) -> int:
    with _store(args) as store:
        if args.agents:
            rows, columns = agent_tasks.agents(store, args.since, args.until), [
                "tenant", "agent", "tasks", "successes", "cost", "currency", "cost_per_success"]
        else:
            rows, columns = agent_tasks.tasks(store, args.since, args.until), [
                "tenant", "task", "requests", "tokens", "cost", "currency", "duration_ms",
                "outcome", "value"]
    show(rows, columns, args.format)
    return 0


def export(args: argparse.Namespace) -> int:
    with _store(args) as store, \
            progress(count_events(store, args.since, args.until), "events") as step:
        n = write_events(store, args.format, args.output, args.since, args.until, step)
    print(f"wrote {n} events to {args.output}")
    return 0


def index(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    with open_store(settings.server.store) as store:
        rows = price_index(store, Ratios(TokenizerRegistry(settings.server.data_dir)), args.by,
                           args.weeks)
    if args.chart:
        index_chart(rows, args.by, args.chart)
    show(rows, ["week", *([] if args.by == "all" else [args.by]), "currency", "tokens",
                "reference_tokens", "restated", "paid", "price_per_mtok"], args.format)
    return 0


def flows(args: argparse.Namespace) -> int:
    with _store(args) as store:
        rows = analytics.flows(store, args.since, args.until)
    if args.chart:
        flows_chart(rows, args.chart)
    show(rows, ["from", "to", "model_origin", "requests", "tokens", "cost", "currency",
                "energy_wh", "co2e_g", "tokens_per_kwh"],
         args.format)
    return 0


COMMANDS: tuple[Command, ...] = (
    Command("serve", "run the gateway (and any local model servers the config launches) "
            "until interrupted", serve,
            (arg("--no-launch", action="store_true",
                 help="do not start the config's local model servers"),)),
    Command("keys", "create, list and revoke API keys",
            about="API keys are shown once at creation and stored hashed."),
    Command("keys create", "create a key and print it once", keys_create, (
        arg("--tenant", required=True, help="the organisation or team billed"),
        arg("--app", required=True, help="the application using the key"),
        arg("--region", help="consumer country, ISO 3166-1 alpha-2 (e.g. DE)"),
        arg("--json", action="store_true", help='print {"key": ..., "key_id": ...}'))),
    Command("keys list", "list keys (never the keys themselves)", keys_list, (JSON_LINES,)),
    Command("keys revoke", "revoke a key by its id", keys_revoke,
            (arg("key_id", help="the key's id, as `keys list` shows it"),)),
    Command("budgets", "set, list, remove budgets and show their status",
            about="Budgets cap cost or tokens per day, week, month or in total for a tenant, "
                  "an app or one key. Those in the config file are changed there; these "
                  "commands manage the rest, and a running gateway takes them up within a "
                  "second."),
    Command("budgets set", "create or change a budget", budgets_set, (
        OneOf((arg("--tenant", help="every key of this tenant"),
               arg("--app", help="every key of this app"),
               arg("--key-id", help="one key, by its id"))),
        arg("--limit", required=True, help="the cap: an amount of money, or tokens"),
        arg("--unit", help="the server currency (default) or 'tokens'"),
        arg("--period", default="month", choices=PERIODS,
            help="UTC calendar period the cap applies to (default: month)"),
        arg("--json", action="store_true", help="print the budget as JSON")),
        about="Create a budget, or change the limit of the one with the same scope, unit and "
              "period."),
    Command("budgets list", "list budgets, from the config and set here", budgets_list,
            (JSON_LINES,)),
    Command("budgets status", "spend, reservations and what remains of every budget",
            budgets_status, (JSON_LINES,)),
    Command("budgets remove", "remove a budget set at run time", budgets_remove,
            (arg("budget_id", help="the budget's id, as `budgets list` shows it"),)),
    Command("wallet", "prepaid credit: top up a tenant's wallet, show its lots",
            about="A wallet is lots of credit a tenant bought (an amount, a currency, a "
                  "priority, perhaps an expiry). Its spend (each event's charge under a price "
                  "plan, else its cost) is drawn from them in time order: from the lots "
                  "bought by then and not expired, the lowest priority number first, then "
                  "the earliest expiry, then the oldest. What a lot had left when it expired "
                  "is forfeited."),
    Command("wallet top-up", "add a lot of credit to a tenant's wallet", wallet_top_up, (
        arg("--tenant", required=True),
        arg("--amount", required=True, help="the credit, like 100 or 49.99"),
        arg("--currency", help="ISO 4217 (default: the server currency)"),
        arg("--priority", type=whole(0, 999), default=0,
            help="drawn from the lowest first (default 0)"),
        arg("--expires", help="a date (its start, UTC) or an RFC 3339 time; default: never"),
        arg("--note", help="what the lot is, e.g. an invoice number"))),
    Command("wallet show", "a tenant's lots: bought, used, forfeited, left; and the balance",
            wallet_show, (arg("--tenant", required=True), TABLE_FORMAT)),
    Command("ledger", "the verifiable log: public key, signed head, audit",
            about="Every event is a leaf of an RFC 9162 Merkle log whose heads the gateway "
                  "signs with Ed25519."),
    Command("ledger pubkey", "print the log's public key (base64, 32 bytes)", ledger_pubkey),
    Command("ledger head", "print the latest signed tree head as JSON", ledger_head),
    Command("ledger audit", "recompute the whole log from the stored events and check every "
            "head", ledger_audit,
            about="Recompute every leaf from the stored events, check every signed tree head "
                  "and its signature, that the heads never shrink and the log proves each "
                  "consistent with the one before, and that the rollups hold the events' sums; "
                  "report the first event that was altered, deleted or inserted. Exit code 1 "
                  "when the log does not audit clean."),
    Command("migrate", "copy a whole store into a new one (SQLite or PostgreSQL) and audit "
            "the copy", migrate, (
                arg("--from", dest="source", required=True, metavar="STORE",
                    help="sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE"),
                arg("--to", dest="target", required=True, metavar="STORE",
                    help="a new store: a missing SQLite file or an empty database")),
            about="Copy every event, leaf, tree node, signed head, provenance mark, key, "
                  "budget, outcome and rollup into a new store, then audit the copy with "
                  "the log's key (the "
                  "config's). Exit code 1 when the copy does not audit clean. Stop the "
                  "gateways writing to the source first."),
    Command("receipt", "print a self-contained, verifiable receipt for one event", receipt,
            (arg("event_id", help="the event's id (x-tokometer-event-id)"),)),
    Command("verify-receipt", "check a receipt offline with the log's key", verify_receipt, (
        arg("file", help="the receipt (JSON), or - for standard input"),
        arg("--pubkey", required=True, help="the log's public key as `tokometer ledger "
            "pubkey` prints it, or a PEM file")),
        about="Check a receipt with nothing but the log's public key: the event's hash, the "
              "inclusion proof and the tree head's signature. Exit code 1 and what is wrong "
              "when it fails.", config=False),
    Command("statement", "a tenant's signed statement for a month: lines by model, totals, "
            "and a commitment to its events", statement, (
                arg("--tenant", required=True),
                arg("--period", required=True, help="the month, like 2026-11 (UTC)"),
                arg("--format", choices=("json", "html"), default="json"),
                arg("--output", "-o", type=Path, help="the file to write (default: stdout)")),
            about="Signed with the log's key, over a tree head signed now: a line per model "
                  "and currency (corrections on lines of their own) with the tokens of each "
                  "kind, cost, charge and energy; totals per currency; and the Merkle root of "
                  "the tenant's events in the month, in log order, so the statement stays "
                  "small however many there are. `verify-statement` checks it (the JSON)."),
    Command("verify-statement", "check a statement offline with the log's key, and its lines "
            "against the tenant's own events", verify_statement, (
                arg("file", help="the statement (JSON), or - for standard input"),
                arg("--pubkey", required=True, help="the log's public key as `tokometer "
                    "ledger pubkey` prints it, or a PEM file"),
                arg("--events", type=Path, help="the tenant's events as JSON lines "
                    "(`tokometer events --format jsonl`, or receipts, one per line)")),
            about="Exit code 0 only when it holds: the statement's and the tree head's "
                  "signatures, the totals against the lines, and, given --events, every line "
                  "recomputed from the events of the tenant and month, which must be exactly "
                  "the ones it commits to (nothing missing, nothing added).", config=False),
    Command("provenance", "was a text generated here? look-ups in the provenance registry",
            about="Every generated answer is registered by the hash of its normalised text "
                  "and keyed fingerprints of its words (never the text itself), committed in "
                  "its event's leaf."),
    Command("provenance check", "how strongly a text matches answers generated here",
            provenance_check, (
                arg("file", help="the text (UTF-8), or - for standard input"),
                arg("--tenant", help="only this tenant's answers"),
                arg("--format", choices=("table", "json"), default="table")),
            about="Answers in tiers: exact (the same text), strong (a lightly edited copy), "
                  "partial (an excerpt, or a heavily edited copy), or no evidence, which "
                  "never means a human wrote it. With --format json: {tier, matches: "
                  "[{event_id, time, model, provider, tenant, share}], receipt}; the receipt "
                  "(the best match's) is what `tokometer verify-receipt` checks, and its "
                  "event's fingerprint_sha256 is the hash of the fingerprints registered."),
    Command("provenance c2pa-chain", "print the certificates that sign C2PA text manifests",
            provenance_c2pa_chain, (
                arg("--root", action="store_true",
                    help="only the root, for a verifier's trust anchors"),),
            about="C2PA text manifests ([[labels]] c2pa = true) are signed with the log's "
                  "key under a certificate chain derived from it: the same on every replica "
                  "that holds the key. Prints the chain (PEM, leaf first) or, with --root, "
                  "the root a C2PA verifier should trust."),
    Command("count", "tokens of a corpus by tokenizer family, and its cost per model",
            count_command, (
                arg("paths", nargs="+", metavar="PATH", help="files or directories"),
                arg("--tokenizers", default=DEFAULT_TOKENIZERS,
                    help=f"comma-separated families or specs (default: {DEFAULT_TOKENIZERS})"),
                arg("--field", help="JSON Lines: the text's key (a.b for nested)"),
                arg("--column", action="append",
                    help="CSV and Parquet: a text column (repeatable; default: all)"),
                arg("--workers", type=positive, help="processes (default: one per core)"),
                TABLE_FORMAT),
            about=COUNT_ABOUT),
    Command("reconcile", "set a provider's usage or cost export against the ledger",
            reconcile_command, (
                arg("file", help="the export: OpenAI's or Anthropic's usage or cost report "
                    "(JSON), or a CSV with date and model columns"),
                arg("--provider", required=True,
                    help="the provider(s) whose events to compare, comma-separated: the "
                    "config's, or any the ledger has events of (usage reported by apps)"),
                SINCE, UNTIL,
                arg("--tolerance", default="0.01",
                    help="a difference allowed, as a share of the larger side (default 0.01)"),
                TABLE_FORMAT),
            about="For each UTC day and model either side knows: requests, input, cache "
                  "read, cache write and output tokens, and cost, as the provider's export "
                  "says and as the ledger's events of --provider sum them, and the "
                  "difference (provider minus ledger). Tokens and cost beyond the tolerance "
                  "are flagged, and the exit code is 1. --since and --until (whole days "
                  "compare alike: each is taken down to its UTC day's start) hold for both "
                  "sides. Input tokens are the total, cache "
                  "reads and writes included, as the events count them; an export not "
                  "grouped by model is compared day by day."),
    Command("events", "print every meter reading, oldest first", events,
            (SINCE, UNTIL, arg("--format", choices=("jsonl", "csv"), default="jsonl"))),
    Command("report", "requests, tokens by kind and cost per group", report, (
        arg("--by", default="", help=f"comma-separated fields: {', '.join(GROUPABLE)}"),
        SINCE, UNTIL, TABLE_FORMAT,
        arg("--period", choices=REPORT_PERIODS,
            help="also group by UTC hour, day, week (from Monday) or month"),
        arg("--top", type=whole(1, MAX_TOP), help="only the N groups with the most tokens"),
        CHART)),
    Command("rankings", "token share per model, vendor or vendor country, week by week, with "
            "the change since the week before", rankings, (
                arg("--by", choices=tuple(RANKED_BY), default="model"),
                arg("--weeks", type=whole(1, MAX_WEEKS), default=4,
                    help=f"weeks to show, 1 to {MAX_WEEKS} (default 4)"),
                TABLE_FORMAT, CHART)),
    Command("tasks", "agent tasks: requests, tokens, cost, duration and outcome per task; "
            "with --agents, cost per successful outcome per agent", tasks, (
                SINCE, UNTIL,
                arg("--agents", action="store_true", help="one row per agent instead"),
                TABLE_FORMAT)),
    Command("export", "write every event to a CSV or Parquet file, for data teams", export, (
        arg("--format", choices=("parquet", "csv"), default="parquet"),
        arg("--output", "-o", type=Path, required=True, help="the file to write"),
        SINCE, UNTIL)),
    Command("index", "the token price index: the price per million tokens paid, week by "
            "week, tokens restated in one reference tokenizer's", index, (
                arg("--by", choices=tuple(INDEXED_BY), default="all"),
                arg("--weeks", type=whole(1, MAX_WEEKS), default=8,
                    help=f"weeks to show, this one included, 1 to {MAX_WEEKS} (default 8)"),
                TABLE_FORMAT, CHART),
            about="Volume-weighted: each row's price is what its priced events cost, per "
                  "million of their tokens (input and output) as o200k counts them: every "
                  "model's tokens are restated by how many o200k tokens one of its tokens is "
                  "on a fixed text in eleven languages. A model whose tokenizer is not known "
                  "here is taken as it counts (`restated` is the share that was restated). "
                  "A row per currency."),
    Command("billing-export", "usage as Stripe meter events, OpenMeter CloudEvents or Lago "
            "events, as JSON lines, with stable ids", billing, (
                arg("--to", choices=SHAPES, required=True, help="the billing system's shape"),
                arg("--output", "-o", type=Path, help="the file to write (default: stdout)"),
                SINCE, UNTIL),
            about="One record per event and kind of token (uncached input, cache reads, "
                  "cache writes, output) for the event's tenant, as the customer (Stripe), "
                  "subject (OpenMeter) or subscription (Lago). Each record's id is its "
                  "event's id and kind, so a second export of the same events has the same "
                  "ids, which the billing system drops: a re-run never bills twice."),
    Command("flows", "tokens and cost from consumer country to serving country, by model "
            "origin", flows, (SINCE, UNTIL, TABLE_FORMAT, CHART)),
)

