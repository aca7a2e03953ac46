"""The `tokometer` command: parses arguments, calls the library, formats output.

No business logic lives here; library errors become a message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from . import config
from .analytics import GROUPABLE, RANKED_BY, REPORT_PERIODS, flows, rankings, report
from .analytics.cells import CSVWriter, visible
from .analytics.charts import flows_chart, rankings_chart, report_chart
from .analytics.export import export
from .analytics.tasks import agents, tasks
from .config import PERIODS, SCOPES, Budget
from .errors import TokometerError
from .events import FIELDS, decimal_str, rfc3339
from .ledger import open_db
from .ledger.read import iter_events, time_filter
from .policy import create_key, list_keys, revoke_key
from .policy.budgets import (
    load_states,
    new_budget,
    remove_budget,
    saved_reservations,
    set_budget,
    stored_budgets,
)

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MAX_TOP = 1_000_000
MAX_WEEKS = 520  # ten years


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except TokometerError as e:
        print(f"tokometer: {e.message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except OSError as e:  # a file to write that cannot be: the user's to fix, not a traceback
        print(f"tokometer: {e}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokometer",
        description="A metering gateway for LLM tokens: every request priced, attributed and "
                    "recorded.")
    sub = p.add_subparsers(metavar="COMMAND")

    def command(name: str, help: str, run: Any) -> argparse.ArgumentParser:
        return _runs(sub.add_parser(name, help=help, description=help), run)

    serve = command("serve", "run the gateway (and any local model servers the config "
                    "launches) until interrupted", _serve)
    serve.add_argument("--no-launch", action="store_true",
                       help="do not start the config's local model servers")

    keys = sub.add_parser("keys", help="create, list and revoke API keys",
                          description="API keys are shown once at creation and stored hashed.")
    keys_sub = keys.add_subparsers(metavar="ACTION")
    keys.set_defaults(run=lambda a: keys.print_help() or 2)
    for name, help, run in (("create", "create a key and print it once", _keys_create),
                            ("list", "list keys (never the keys themselves)", _keys_list),
                            ("revoke", "revoke a key by its id", _keys_revoke)):
        c = _runs(keys_sub.add_parser(name, help=help, description=help), run)
        if name == "create":
            c.add_argument("--tenant", required=True, help="the organisation or team billed")
            c.add_argument("--app", required=True, help="the application using the key")
            c.add_argument("--region", help="consumer country, ISO 3166-1 alpha-2 (e.g. DE)")
            c.add_argument("--json", action="store_true", help='print {"key": ..., "key_id": ...}')
        elif name == "list":
            c.add_argument("--json", action="store_true", help="print JSON lines")
        else:
            c.add_argument("key_id", help="the key's id, as `keys list` shows it")

    budgets = sub.add_parser(
        "budgets", help="set, list, remove budgets and show their status",
        description="Budgets cap cost or tokens per day, week, month or in total for a tenant, "
                    "an app or one key. Those in the config file are changed there; these "
                    "commands manage the rest, and a running gateway takes them up within a "
                    "second.")
    budgets_sub = budgets.add_subparsers(metavar="ACTION")
    budgets.set_defaults(run=lambda a: budgets.print_help() or 2)
    c = _runs(budgets_sub.add_parser("set", help="create or change a budget",
                                     description="Create a budget, or change the limit of the "
                                     "one with the same scope, unit and period."), _budgets_set)
    who = c.add_mutually_exclusive_group(required=True)
    who.add_argument("--tenant", help="every key of this tenant")
    who.add_argument("--app", help="every key of this app")
    who.add_argument("--key-id", help="one key, by its id")
    c.add_argument("--limit", required=True, help="the cap: an amount of money, or tokens")
    c.add_argument("--unit", help="the server currency (default) or 'tokens'")
    c.add_argument("--period", default="month", choices=PERIODS,
                   help="UTC calendar period the cap applies to (default: month)")
    c.add_argument("--json", action="store_true", help="print the budget as JSON")
    for name, help, run in (("list", "list budgets, from the config and set here", _budgets_list),
                            ("status", "spend, reservations and what remains of every budget",
                             _budgets_status)):
        c = _runs(budgets_sub.add_parser(name, help=help, description=help), run)
        c.add_argument("--json", action="store_true", help="print JSON lines")
    c = _runs(budgets_sub.add_parser("remove", help="remove a budget set at run time",
                                     description="remove a budget set at run time"),
              _budgets_remove)
    c.add_argument("budget_id", help="the budget's id, as `budgets list` shows it")

    ledger = sub.add_parser("ledger", help="the verifiable log: public key, signed head, audit",
                            description="Every event is a leaf of an RFC 9162 Merkle log whose "
                                        "heads the gateway signs with Ed25519.")
    ledger_sub = ledger.add_subparsers(metavar="ACTION")
    ledger.set_defaults(run=lambda a: ledger.print_help() or 2)
    _runs(ledger_sub.add_parser("pubkey", help="print the log's public key (base64, 32 bytes)",
                                description="print the log's public key (base64, 32 bytes)"),
          _ledger_pubkey)
    _runs(ledger_sub.add_parser("head", help="print the latest signed tree head as JSON",
                                description="print the latest signed tree head as JSON"),
          _ledger_head)
    _runs(ledger_sub.add_parser(
        "audit", help="recompute the whole log from the stored events and check every head",
        description="Recompute every leaf from the stored events, check every signed tree "
                    "head and its signature, that the heads never shrink and the log proves "
                    "each consistent with the one before, and that the rollups hold the "
                    "events' sums; report the first event that was altered, deleted or "
                    "inserted. Exit code 1 when the log does not audit clean."),
        _ledger_audit)
    rec = command("receipt", "print a self-contained, verifiable receipt for one event",
                  _receipt)
    rec.add_argument("event_id", help="the event's id (x-tokometer-event-id)")
    ver = sub.add_parser("verify-receipt", help="check a receipt offline with the log's key",
                         description="Check a receipt with nothing but the log's public key: "
                         "the event's hash, the inclusion proof and the tree head's signature. "
                         "Exit code 1 and what is wrong when it fails.")
    ver.add_argument("file", help="the receipt (JSON), or - for standard input")
    ver.add_argument("--pubkey", required=True,
                     help="the log's public key as `tokometer ledger pubkey` prints it, or a "
                          "PEM file")
    ver.set_defaults(run=_verify_receipt)

    events = command("events", "print every meter reading, oldest first", _events)
    _time_range(events)
    events.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")

    rep = command("report", "requests, tokens by kind and cost per group", _report)
    rep.add_argument("--by", default="", help=f"comma-separated fields: {', '.join(GROUPABLE)}")
    _time_range(rep)
    rep.add_argument("--format", choices=("table", "csv", "json"), default="table")
    rep.add_argument("--period", choices=REPORT_PERIODS,
                     help="also group by UTC hour, day, week (from Monday) or month")
    rep.add_argument("--top", type=_whole(1, MAX_TOP),
                     help="only the N groups with the most tokens")
    rep.add_argument("--chart", type=Path, help="also draw it to FILE.png or FILE.svg")

    rank = command("rankings", "token share per model, vendor or vendor country, week by "
                   "week, with the change since the week before", _rankings)
    rank.add_argument("--by", choices=tuple(RANKED_BY), default="model")
    rank.add_argument("--weeks", type=_whole(1, MAX_WEEKS), default=4,
                      help=f"weeks to show, 1 to {MAX_WEEKS} (default 4)")
    rank.add_argument("--format", choices=("table", "csv", "json"), default="table")
    rank.add_argument("--chart", type=Path, help="also draw it to FILE.png or FILE.svg")

    task = command("tasks", "agent tasks: requests, tokens, cost, duration and outcome per "
                   "task; with --agents, cost per successful outcome per agent", _tasks)
    _time_range(task)
    task.add_argument("--agents", action="store_true", help="one row per agent instead")
    task.add_argument("--format", choices=("table", "csv", "json"), default="table")

    exp = command("export", "write every event to a CSV or Parquet file, for data teams",
                  _export)
    exp.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    exp.add_argument("--output", "-o", type=Path, required=True, help="the file to write")
    _time_range(exp)

    flow = command("flows", "tokens and cost from consumer country to serving country, by "
                   "model origin", _flows)
    _time_range(flow)
    flow.add_argument("--format", choices=("table", "csv", "json"), default="table")
    flow.add_argument("--chart", type=Path, help="also draw it to FILE.png or FILE.svg")
    return p


def _runs(p: argparse.ArgumentParser, run: Any) -> argparse.ArgumentParser:
    """A command that reads the config and calls `run` with the parsed arguments."""
    p.add_argument("--config", default=os.environ.get("TOKOMETER_CONFIG", "tokometer.toml"),
                   help="the TOML config (default: $TOKOMETER_CONFIG or ./tokometer.toml)")
    p.set_defaults(run=run)
    return p


def _time_range(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=_time, help="RFC 3339 time, a date, or an age like 24h, 7d")
    p.add_argument("--until", type=_time, help="RFC 3339 time, a date, or an age like 1h")


def _time(text: str) -> str:
    """An argparse type: an RFC 3339 time, a date or an age, as an RFC 3339 UTC time."""
    try:
        if m := _RELATIVE.match(text):
            return rfc3339(datetime.now(UTC)
                           - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))}))
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return rfc3339(t if t.tzinfo else t.replace(tzinfo=UTC))
    except (ValueError, OverflowError):  # not a time, or before year 1 / after 9999 in UTC
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time in the years 1 to 9999: use 2026-11-28, "
            "2026-11-28T10:00:00Z or an age like 24h") from None


def _whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`."""
    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number from {low} to {high}")
        return number
    return parse


def _db(args: argparse.Namespace, *, create: bool = False) -> Any:
    """The config's store; only commands that write may create it."""
    settings = config.load(args.config)
    return open_db(settings.server.store, create=create)


def _serve(args: argparse.Namespace) -> int:
    from .serve import serve

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(Path(args.config), launch=not args.no_launch)
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    key, key_id = create_key(_db(args, create=True), args.tenant, args.app, args.region)
    if args.json:
        print(orjson.dumps({"key": key, "key_id": key_id}).decode())
    else:
        print(f"key:    {key}\nkey_id: {key_id}\n(the key is shown only now; store it safely)")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    _print_rows(list_keys(_db(args)), ["key_id", "tenant", "app", "region", "created", "revoked"],
                args.json)
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    revoke_key(_db(args), args.key_id)
    print(f"revoked {args.key_id}")
    return 0


def _budgets_set(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    kind = next(k for k in SCOPES if getattr(args, k) is not None)
    budget = new_budget(kind, getattr(args, kind), args.limit,
                        args.unit or settings.server.currency, args.period,
                        settings.server.currency)
    budget = set_budget(open_db(settings.server.store), budget, [b.id for b in settings.budgets])
    if args.json:
        print(orjson.dumps(_budget_row(budget, "store")).decode())
    else:
        print(f"set {budget}")
    return 0


def _budgets_list(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    stored = stored_budgets(open_db(settings.server.store, create=False))
    rows = [*(_budget_row(b, "config") for b in settings.budgets),
            *(_budget_row(b, "store") for b in stored)]
    _print_rows(rows, ["budget_id", "scope", "scope_value", "limit", "unit", "period", "source"],
                args.json)
    return 0


def _budgets_status(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    conn = open_db(settings.server.store, create=False)
    budgets = [*settings.budgets, *stored_budgets(conn)]
    states = load_states(conn, budgets, datetime.now(UTC))
    for budget_id, reserved in saved_reservations(conn).items():
        if budget_id in states:
            states[budget_id].reserved = reserved
    _print_rows([s.status() for s in states.values()],
                ["budget_id", "scope", "scope_value", "limit", "unit", "period", "spent",
                 "reserved", "remaining", "resets"], args.json)
    return 0


def _budgets_remove(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    remove_budget(open_db(settings.server.store, create=False), args.budget_id,
                  [b.id for b in settings.budgets])
    print(f"removed {args.budget_id}")
    return 0


def _budget_row(budget: Budget, source: str) -> dict[str, str]:
    return {"budget_id": budget.id, "scope": budget.scope.kind,
            "scope_value": budget.scope.value, "limit": decimal_str(budget.limit),
            "unit": budget.unit, "period": budget.period, "source": source}


def _print_rows(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(orjson.dumps(row).decode())
    else:
        _print_table(rows, columns)


# The ledger commands import the log's modules (and `cryptography`) when they run, so that
# `tokometer serve`'s supervisor process does not carry them.

def _signer(settings: config.Settings) -> Any:
    from .ledger.signer import load_signer

    return load_signer(settings.server.signing_key, settings.server.signing_key_pem,
                       settings.server.signing_key_env)


def _ledger_pubkey(args: argparse.Namespace) -> int:
    print(_signer(config.load(args.config)).public_key_text())
    return 0


def _ledger_head(args: argparse.Namespace) -> int:
    from .ledger.receipts import latest_head

    head = latest_head(_db(args))
    if head is None:
        raise TokometerError("no signed tree head yet: start the gateway, or ask for a receipt")
    print(orjson.dumps(head.to_json()).decode())
    return 0


def _ledger_audit(args: argparse.Namespace) -> int:
    from .ledger.audit import audit

    settings = config.load(args.config)
    conn = open_db(settings.server.store, create=False)
    total = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    with _progress(total, "events") as step:
        report = audit(conn, _signer(settings).public_key, step)
    print(f"{report.events} events, {report.leaves} leaves, {report.heads} signed tree heads")
    first = report.first()
    if first is None:
        print("the log audits clean")
        return 0
    # Findings quote stored values, which clients chose: escaped, like every terminal table.
    print(f"NOT CLEAN: {len(report.findings)} problem(s); the first: {visible(first.what)}")
    for finding in report.ordered()[1:20]:
        print(f"  also: {visible(finding.what)}")
    return 1


def _receipt(args: argparse.Namespace) -> int:
    from .ledger.receipts import NotFound, build_receipt, sign_stored_head

    settings = config.load(args.config)
    conn = open_db(settings.server.store, create=False)
    try:
        receipt = build_receipt(conn, args.event_id)
        if receipt is None:  # no signed head covers it yet: sign one now
            sign_stored_head(conn, _signer(settings))
            receipt = build_receipt(conn, args.event_id)
    except NotFound as e:
        raise TokometerError(str(e)) from None
    print(orjson.dumps(receipt, option=orjson.OPT_INDENT_2).decode())
    return 0


def _verify_receipt(args: argparse.Namespace) -> int:
    from .ledger.receipts import verify_receipt
    from .ledger.signer import parse_public_key

    source = sys.stdin if args.file == "-" else None
    try:
        text = source.read() if source else Path(args.file).read_text()
        receipt = orjson.loads(text)
    except (OSError, orjson.JSONDecodeError) as e:
        raise TokometerError(f"cannot read the receipt {args.file}: {e}") from None
    pubkey = args.pubkey
    if Path(pubkey).is_file():
        pubkey = Path(pubkey).read_text()
    try:
        key = parse_public_key(pubkey)
    except ValueError as e:
        raise TokometerError(f"--pubkey: {e}") from None
    problems = verify_receipt(receipt, key)
    if problems:
        print("INVALID receipt:\n" + "\n".join(f"- {visible(p)}" for p in problems))
        return 1
    event = receipt["event"]
    print(f"valid: event {event.get('id')} is leaf {receipt['leaf_index']} of the log signed at "
          f"{receipt['tree_head']['tree_size']} leaves")
    return 0


def _events(args: argparse.Namespace) -> int:
    rows = iter_events(_db(args), args.since, args.until)
    out = sys.stdout
    if args.format == "csv":
        CSVWriter(out, FIELDS).write(rows)
    else:
        for row in rows:
            out.write(orjson.dumps(row).decode() + "\n")
    return 0


def _report(args: argparse.Namespace) -> int:
    by = [b.strip() for b in args.by.split(",") if b.strip()]
    rows = report(_db(args), by, args.since, args.until, args.period, args.top)
    if args.chart:
        report_chart(rows, by, args.period, args.chart)
    columns = [*(["period"] if args.period else []), *by, "requests", "input_tokens",
               "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens",
               "cost", "currency"]
    _output(rows, columns, args.format)
    return 0


def _rankings(args: argparse.Namespace) -> int:
    rows = rankings(_db(args), args.by, args.weeks)
    if args.chart:
        rankings_chart(rows, args.by, args.chart)
    _output(rows, ["week", args.by, "tokens", "share", "change_pp"], args.format)
    return 0


def _tasks(args: argparse.Namespace) -> int:
    if args.agents:
        _output(agents(_db(args), args.since, args.until),
                ["tenant", "agent", "tasks", "successes", "cost", "currency",
                 "cost_per_success"],
                args.format)
    else:
        _output(tasks(_db(args), args.since, args.until),
                ["tenant", "task", "requests", "tokens", "cost", "currency", "duration_ms",
                 "outcome", "value"], args.format)
    return 0


def _export(args: argparse.Namespace) -> int:
    conn = _db(args)
    where, params = time_filter(args.since, args.until)
    total = conn.execute(f"SELECT COUNT(*) FROM events{where}", params).fetchone()[0]
    with _progress(total, "events") as step:
        n = export(conn, args.format, args.output, args.since, args.until, step)
    print(f"wrote {n} events to {args.output}")
    return 0


def _flows(args: argparse.Namespace) -> int:
    rows = flows(_db(args), args.since, args.until)
    if args.chart:
        flows_chart(rows, args.chart)
    _output(rows, ["from", "to", "model_origin", "requests", "tokens", "cost", "currency"],
            args.format)
    return 0


def _output(rows: list[dict[str, Any]], columns: list[str], fmt: str) -> None:
    if fmt == "json":
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    elif fmt == "csv":
        CSVWriter(sys.stdout, columns).write(rows)
    else:
        _print_table(rows, columns)


@contextlib.contextmanager
def _progress(total: int, unit: str) -> Iterator[Callable[[int], None]]:
    """A one-line progress count on stderr, when stderr is a terminal."""
    done = 0
    show = sys.stderr.isatty()

    def step(n: int) -> None:
        nonlocal done
        done += n
        if show:
            print(f"\r{done:,} / {total:,} {unit} ({done * 100 // max(total, 1)}%)", end="",
                  file=sys.stderr, flush=True)

    try:
        yield step
    finally:
        if show:
            print(file=sys.stderr)


def _print_table(rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    cells = [["" if r.get(c) is None else visible(str(r[c])) for c in columns]
             for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.rjust(w) if v.replace(".", "").isdigit() else v.ljust(w)
                        for v, w in zip(row, widths, strict=True)).rstrip())
    if not cells:
        print("(none)")


if __name__ == "__main__":
    sys.exit(main())
