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
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
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
_LARGEST = 10**15  # counts and amounts beyond this are no usage report's


@dataclass(slots=True)
class Side:
    """One side's account of a day and model: counts (None: not given), cost by currency."""

    requests: int | None = None
    input_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    costs: dict[str, Decimal] = field(default_factory=dict)

    def add(self, other: Side) -> None:
        for kind in KINDS:
            mine, theirs = getattr(self, kind), getattr(other, kind)
            if theirs is not None:
                setattr(self, kind, theirs if mine is None else mine + theirs)
        for currency, amount in other.costs.items():
            self.costs[currency] = self.costs.get(currency, Decimal(0)) + amount


@dataclass(slots=True)
class Account:
    """A side's days and models: (day, model) → Side; and the kinds it gives at all."""

    lines: dict[tuple[str, str], Side] = field(default_factory=dict)
    kinds: set[str] = field(default_factory=set)

    def add(self, day: str, model: str | None, side: Side) -> None:
        self.lines.setdefault((day, model or ALL_MODELS), Side()).add(side)
        self.kinds.update(k for k in KINDS if getattr(side, k) is not None)
        if side.costs:
            self.kinds.add("cost")


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
            document = json.loads(text, parse_float=Decimal, parse_int=Decimal)
        except ValueError as e:
            raise ConfigError(f"{path}: not JSON ({e})") from None
        except RecursionError:
            raise ConfigError(f"{path}: JSON nested too deeply") from None
        for day, model, side in _json_lines(document, path):
            account.add(day, model, side)
    else:
        for day, model, side in _csv_lines(text, path):
            account.add(day, model, side)
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
        return item.split(",")[0].strip() or None, _costed(
            _decimal(amount.get("value"), path), _currency(amount.get("currency")))
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
        return _str(r.get("model")), _costed(cents / 100 if cents is not None else None,
                                             _currency(r.get("currency")))
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
    reader = csv.DictReader(io.StringIO(text, newline=""))
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
        side = _costed(_decimal(cells["cost"], Path(where)), _currency(cells["currency"]))
        for kind in KINDS:
            value = cells[kind]
            if value is not None:
                setattr(side, kind, _whole(value, where))
        yield _day(cells["day"], Path(where)), cells["model"], side


def _cell(row: dict[str, Any], column: str | None) -> str | None:
    value = row.get(column) if column else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _costed(amount: Decimal | None, currency: str | None) -> Side:
    """A side holding a cost (an amount without a currency is in US dollars)."""
    return Side(costs={currency or "USD": amount} if amount is not None else {})


def _day(value: Any, path: Path) -> str:
    """A UTC day from a Unix time or an RFC 3339 time or date."""
    try:
        if isinstance(value, int | Decimal) and not isinstance(value, bool):
            if not 0 <= value < 10**11:  # years 1970 to 5138; checked before any int()
                raise ValueError
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
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value() \
            and 0 <= value < _LARGEST and "." not in str(value) and "E" not in str(value):
        return int(value)
    raise ConfigError(f"{path}: {key} is not a count: {value!r}")


def _whole(value: str, where: str) -> int:
    try:
        number = int(value.replace(",", "").replace("_", ""))
    except ValueError:
        raise ConfigError(f"{where}: not a count: {value!r}") from None
    if not 0 <= number < _LARGEST:
        raise ConfigError(f"{where}: not a count: {value!r}")
    return number


def _decimal(value: Any, path: Path) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value).replace(",", "").lstrip("$"))
    except InvalidOperation:
        raise ConfigError(f"{path}: not an amount: {value!r}") from None
    if not number.is_finite() or number.adjusted() >= 15:  # |number| ≥ 10^15, not computed
        raise ConfigError(f"{path}: not an amount: {value!r}")
    return number


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _currency(value: Any) -> str | None:
    return value.upper()[:3] if isinstance(value, str) and value else None


# --- the ledger's side, and the comparison ----------------------------------------------------

def recorded(store: Store, provider: str) -> bool:
    """Whether the ledger has events of `provider`: a name the config need not have, as an
    app that calls a provider directly reports its usage by the provider's name (ingest/)."""
    return store.execute("SELECT 1 FROM events WHERE provider = ? LIMIT 1",
                         (provider,)).fetchone() is not None


def ledger_account(store: Store, providers: Iterable[str], since: str | None,
                   until: str | None) -> Account:
    """The ledger's events of these providers (config or reported names), by UTC day and
    served model."""
    account = Account()
    for provider in dict.fromkeys(providers):  # a name given twice counts once
        for row in report(store, ["model"], since, until, "day", where={"provider": provider}):
            side = Side(requests=row["requests"], input_tokens=row["input_tokens"],
                        cache_read_tokens=row["cache_read_tokens"],
                        cache_write_tokens=row["cache_write_tokens"],
                        output_tokens=row["output_tokens"])
            if row["cost"] is not None:
                side.costs[row["currency"]] = Decimal(row["cost"])
            account.add(row["period"], row["model"], side)
    return account


def reconcile(theirs: Account, ours: Account, tolerance: Decimal) -> list[dict[str, Any]]:
    """A row per day and model either side knows: each kind the export gives, on both sides,
    and the difference (theirs − ours); `flagged` for the tokens and cost beyond `tolerance`
    (a share of the larger side). Costs compare in one currency only (the `currency` column
    names them all otherwise); requests are shown, never flagged (the ledger's count
    refusals too)."""
    if theirs.lines and {model for _, model in theirs.lines} == {ALL_MODELS}:
        ours = _by_day(ours)  # an export of all models at once: compare the days' totals
    rows = []
    for day, model in sorted(theirs.lines.keys() | ours.lines.keys()):
        a, b = theirs.lines.get((day, model), Side()), ours.lines.get((day, model), Side())
        row: dict[str, Any] = {"day": day, "model": model}
        flagged = []
        for kind in KINDS:
            given, kept = getattr(a, kind), getattr(b, kind) or 0
            if kind not in theirs.kinds:
                given = diff = None
            else:
                given = given or 0
                diff = given - kept
                if kind != "requests" and abs(diff) > tolerance * max(given, kept):
                    flagged.append(kind)
            row.update({f"{kind}_provider": given, f"{kind}_ledger": kept,
                        f"{kind}_diff": diff})
        currencies = sorted(a.costs.keys() | b.costs.keys())
        row["cost_provider"] = row["cost_ledger"] = row["cost_diff"] = None
        if len(currencies) == 1:
            given_cost = a.costs.get(currencies[0], Decimal(0))
            kept_cost = b.costs.get(currencies[0], Decimal(0))
            row["cost_ledger"] = decimal_str(kept_cost)
            if "cost" in theirs.kinds:
                row["cost_provider"] = decimal_str(given_cost)
                row["cost_diff"] = decimal_str(given_cost - kept_cost)
                if abs(given_cost - kept_cost) > tolerance * max(abs(given_cost),
                                                                 abs(kept_cost)):
                    flagged.append("cost")
        row["currency"] = "+".join(currencies) or None
        row["flagged"] = ",".join(flagged) or None
        rows.append(row)
    return rows


def within(account: Account, since: str | None, until: str | None) -> Account:
    """The account's days from `since`'s day up to `until`'s (RFC 3339 times), the last
    excluded, as the ledger's events are taken (whole days compare alike)."""
    kept = Account(kinds=account.kinds)
    for (day, model), side in account.lines.items():
        if (since is None or day >= since[:10]) and (until is None or day < until[:10]):
            kept.lines[(day, model)] = side
    return kept


def _by_day(account: Account) -> Account:
    days = Account()
    for (day, _), side in account.lines.items():
        days.add(day, None, side)
    return days


COLUMNS = ["day", "model", *(f"{kind}_{side}" for kind in (*KINDS, "cost")
                             for side in ("provider", "ledger", "diff")), "currency", "flagged"]
