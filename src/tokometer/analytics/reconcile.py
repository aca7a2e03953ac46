"""A provider's own account of usage, set against the ledger's, day by day and model by model:
how a customer checks a provider's bill, and the bill checks the meter.

The provider's side is read from the exports the providers publish (the format is told by
the content):
- OpenAI's Usage API for completions (`/v1/organization/usage/completions`, grouped by
  model, one or more pages) and its Costs API (`/v1/organization/costs`, grouped by line
  item, whose name starts with the model);
- Anthropic's Usage report (`/v1/organizations/usage_report/messages`, grouped by model) and
  its Cost report (`/v1/organizations/cost_report`, amounts in cents);
- a CSV with a header: a day (`date`, `day` or `start_time`), `model`, and any of the token
  columns, `requests` and `cost` (the consoles' exports, or one's own).
Token kinds follow the event's (DESIGN.md): input is the total, cache reads and writes
included.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..events import decimal_str
from ..ledger.store import Store
from .report import report

KINDS = ("requests", "input_tokens", "cache_read_tokens", "cache_write_tokens",
         "output_tokens")
ALL_MODELS = "(all models)"  # an export not grouped by model


@dataclass(slots=True)
class Side:
    """One side's account of a day and model."""

    requests: int | None = None
    input_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    cost: Decimal | None = None
    currency: str | None = None

    def add(self, other: Side) -> None:
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name == "currency":
                self.currency = self.currency or theirs
            elif theirs is not None:
                setattr(self, f.name, theirs if mine is None else mine + theirs)


@dataclass(slots=True)
class Account:
    """A side's days and models: (day, model) → Side."""

    lines: dict[tuple[str, str], Side] = field(default_factory=dict)

    def add(self, day: str, model: str | None, side: Side) -> None:
        self.lines.setdefault((day, model or ALL_MODELS), Side()).add(side)


# --- the provider's exports ---------------------------------------------------------------

def read_export(path: Path) -> Account:
    """The provider's account in `path` (JSON or CSV, told by its content)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    account = Account()
    if text.lstrip()[:1] in ("{", "["):
        try:
            document = json.loads(text, parse_float=Decimal)
        except ValueError as e:
            raise ConfigError(f"{path}: not JSON ({e})") from None
        for day, model, side in _json_lines(document, path):
            account.add(day, model, side)
    else:
        for day, model, side in _csv_lines(text, path):
            account.add(day, model, side)
    if not account.lines:
        raise ConfigError(f"{path}: no usage found (an OpenAI or Anthropic usage or cost "
                          "export, or a CSV with date and model columns)")
    return account


def _json_lines(document: Any, path: Path) -> Iterator[tuple[str, str | None, Side]]:
    pages = document if isinstance(document, list) else [document]
    for page in pages:
        buckets = page.get("data") if isinstance(page, dict) else None
        if not isinstance(buckets, list):
            raise ConfigError(f"{path}: expected a page of usage buckets with a `data` list")
        for bucket in buckets:
            if not isinstance(bucket, dict) or not isinstance(bucket.get("results"), list):
                raise ConfigError(f"{path}: a bucket without `results`")
            day = _day(bucket.get("start_time", bucket.get("starting_at")), path)
            for result in bucket["results"]:
                if isinstance(result, dict):
                    yield day, *_result(result, path)


def _result(r: dict[str, Any], path: Path) -> tuple[str | None, Side]:
    """A result of any of the four exports: (model, its side)."""
    if r.get("object") == "organization.usage.completions.result":  # OpenAI usage
        return _str(r.get("model")), Side(
            requests=_int(r, "num_model_requests", path),
            input_tokens=_int(r, "input_tokens", path),
            cache_read_tokens=_int(r, "input_cached_tokens", path),
            output_tokens=_int(r, "output_tokens", path))
    if r.get("object") == "organization.costs.result":  # OpenAI costs
        amount = _object(r.get("amount"))
        item = _str(r.get("line_item")) or ""
        return item.split(",")[0].strip() or None, Side(
            cost=_decimal(amount.get("value"), path), currency=_currency(amount.get("currency")))
    if "uncached_input_tokens" in r:  # Anthropic usage
        created = _object(r.get("cache_creation"))
        written = (_int(created, "ephemeral_5m_input_tokens", path) or 0) + (
            _int(created, "ephemeral_1h_input_tokens", path) or 0) + (
            _int(r, "cache_creation_5m_input_tokens", path) or 0) + (
            _int(r, "cache_creation_1h_input_tokens", path) or 0)
        read = _int(r, "cache_read_input_tokens", path) or 0
        return _str(r.get("model")), Side(
            input_tokens=(_int(r, "uncached_input_tokens", path) or 0) + read + written,
            cache_read_tokens=read, cache_write_tokens=written,
            output_tokens=_int(r, "output_tokens", path))
    if "amount" in r and "currency" in r:  # Anthropic costs: amounts in cents
        cents = _decimal(r.get("amount"), path)
        return _str(r.get("model")), Side(cost=cents / 100 if cents is not None else None,
                                          currency=_currency(r.get("currency")))
    raise ConfigError(f"{path}: a result of no known export: {sorted(r)[:8]}")


_CSV_COLUMNS = {
    "day": ("date", "day", "start_time", "starting_at"),
    "model": ("model", "model_name"),
    "requests": ("requests", "num_model_requests", "num_requests"),
    "input_tokens": ("input_tokens", "prompt_tokens"),
    "cache_read_tokens": ("cache_read_tokens", "input_cached_tokens", "cached_tokens",
                          "cache_read_input_tokens"),
    "cache_write_tokens": ("cache_write_tokens", "cache_creation_input_tokens"),
    "output_tokens": ("output_tokens", "completion_tokens"),
    "cost": ("cost", "cost_usd", "amount"),
    "currency": ("currency",),
}


def _csv_lines(text: str, path: Path) -> Iterator[tuple[str, str | None, Side]]:
    reader = csv.DictReader(text.splitlines())
    header = [h.strip().lower() for h in reader.fieldnames or []]
    found = {name: next((h for h in aliases if h in header), None)
             for name, aliases in _CSV_COLUMNS.items()}
    if found["day"] is None or found["model"] is None:
        raise ConfigError(f"{path}: a CSV export needs a date and a model column (it has "
                          f"{', '.join(header) or 'none'})")
    reader.fieldnames = header
    for number, row in enumerate(reader, 2):
        cells = {name: _cell(row, column) for name, column in found.items()}
        where = f"{path}, line {number}"
        side = Side(cost=_decimal(cells["cost"], Path(where)),
                    currency=_currency(cells["currency"]) or ("USD" if cells["cost"] else None))
        for kind in KINDS:
            value = cells[kind]
            if value is not None:
                setattr(side, kind, _whole(value, where))
        yield _day(cells["day"], Path(where)), cells["model"], side


def _cell(row: dict[str, Any], column: str | None) -> str | None:
    value = row.get(column) if column else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _day(value: Any, path: Path) -> str:
    """A UTC day from a Unix time or an RFC 3339 time or date."""
    try:
        if isinstance(value, int | Decimal) and not isinstance(value, bool):
            return datetime.fromtimestamp(int(value), UTC).date().isoformat()
        if isinstance(value, str) and value.strip().isdigit():
            return datetime.fromtimestamp(int(value), UTC).date().isoformat()
        if isinstance(value, str):
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            if moment.tzinfo is not None:
                moment = moment.astimezone(UTC)
            return moment.date().isoformat()
    except (ValueError, OverflowError, OSError):
        pass
    raise ConfigError(f"{path}: not a time or date: {value!r}")


def _int(holder: dict[str, Any], key: str, path: Path) -> int | None:
    value = holder.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f"{path}: {key} is not a count: {value!r}")


def _whole(value: str, where: str) -> int:
    try:
        number = int(value.replace(",", "").replace("_", ""))
    except ValueError:
        raise ConfigError(f"{where}: not a count: {value!r}") from None
    if number < 0:
        raise ConfigError(f"{where}: not a count: {value!r}")
    return number


def _decimal(value: Any, path: Path) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value).replace(",", "").lstrip("$"))
    except InvalidOperation:
        raise ConfigError(f"{path}: not an amount: {value!r}") from None
    if not number.is_finite():
        raise ConfigError(f"{path}: not an amount: {value!r}")
    return number


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _currency(value: Any) -> str | None:
    return value.upper()[:3] if isinstance(value, str) and value else None


# --- the ledger's side, and the comparison ----------------------------------------------------

def ledger_account(store: Store, providers: Iterable[str], since: str | None,
                   until: str | None) -> Account:
    """The ledger's events of these providers (config names), by UTC day and served model."""
    account = Account()
    for provider in providers:
        for row in report(store, ["model"], since, until, "day", where={"provider": provider}):
            account.add(row["period"], row["model"], Side(
                requests=row["requests"], input_tokens=row["input_tokens"],
                cache_read_tokens=row["cache_read_tokens"],
                cache_write_tokens=row["cache_write_tokens"],
                output_tokens=row["output_tokens"],
                cost=Decimal(row["cost"]) if row["cost"] is not None else None,
                currency=row["currency"]))
    return account


def reconcile(theirs: Account, ours: Account, tolerance: Decimal) -> list[dict[str, Any]]:
    """A row per day and model either side knows: each kind on both sides and the difference
    (theirs − ours), and `flagged` for the tokens and cost beyond `tolerance` (a share of the
    larger side). A kind the export does not give, or costs in two currencies, are not
    compared; requests are shown, never flagged (the ledger's count refusals too)."""
    if theirs.lines.keys() == {(day, ALL_MODELS) for day, _ in theirs.lines}:
        ours = _by_day(ours)  # an export of all models at once: compare the days' totals
    rows = []
    for day, model in sorted(theirs.lines.keys() | ours.lines.keys()):
        a, b = theirs.lines.get((day, model), Side()), ours.lines.get((day, model), Side())
        row: dict[str, Any] = {"day": day, "model": model}
        flagged = []
        comparable_cost = not (a.currency and b.currency and a.currency != b.currency)
        for kind in (*KINDS, "cost"):
            given, kept = getattr(a, kind), getattr(b, kind)
            if (given is None and (day, model) in theirs.lines) or (
                    kind == "cost" and not comparable_cost):
                row.update({f"{kind}_provider": None, f"{kind}_ledger": _out(kept),
                            f"{kind}_diff": None})
                continue
            given, kept = given or 0, kept or 0
            diff = given - kept
            row.update({f"{kind}_provider": _out(given), f"{kind}_ledger": _out(kept),
                        f"{kind}_diff": _out(diff)})
            if kind != "requests" and abs(diff) > tolerance * max(abs(given), abs(kept)):
                flagged.append(kind)  # (requests: the ledger's include its refusals)
        row["currency"] = a.currency or b.currency
        row["flagged"] = ",".join(flagged) or None
        rows.append(row)
    return rows


def within(account: Account, since: str | None, until: str | None) -> Account:
    """The account's days from `since`'s day up to `until`'s (RFC 3339 times), the last
    excluded, as the ledger's events are taken (whole days compare alike)."""
    kept = Account()
    for (day, model), side in account.lines.items():
        if (since is None or day >= since[:10]) and (until is None or day < until[:10]):
            kept.lines[(day, model)] = side
    return kept


def _by_day(account: Account) -> Account:
    days = Account()
    for (day, _), side in account.lines.items():
        days.add(day, None, side)
    return days


def _out(value: int | Decimal | None) -> int | str | None:
    return decimal_str(value) if isinstance(value, Decimal) else value


COLUMNS = ["day", "model", *(f"{kind}_{side}" for kind in (*KINDS, "cost")
                             for side in ("provider", "ledger", "diff")), "currency", "flagged"]
