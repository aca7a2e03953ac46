"""The overhead bench's plan of targets for issue 13's worker and store figures: every
tokometer setup once per worker count and store, bare once per worker count, and the ratios
the issue sets targets for taken between the right pairs (pure helpers; no server started)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent




def test_plan_expands_tokometer_by_store_and_workers_and_bare_by_workers(overhead) -> None:
    targets = overhead.plan(["direct", "bare", "bare+commit", "tokometer+policy", "litellm"],
                            (1, 2), ["sqlite", "postgresql"])
    assert [t.name for t in targets] == [
        "direct", "bare w1", "bare w2", "bare+commit",
        "tokometer+policy w1 sqlite", "tokometer+policy w2 sqlite",
        "tokometer+policy w1 postgresql", "tokometer+policy w2 postgresql", "litellm"]
    assert {(t.kind, t.workers, t.store) for t in targets if t.kind == "bare+commit"} == {
        ("bare+commit", 1, "")}  # one writer thread: not scaled by --workers


def test_comparisons_pair_workers_stores_and_bare_like_for_like(overhead) -> None:
    targets = overhead.plan(["bare", "tokometer"], (1, 2), ["sqlite", "postgresql"])
    pairs = {(a.name, b.name) for a, b in overhead.comparisons(targets)}
    assert pairs == {
        ("bare w2", "bare w1"),
        ("tokometer w2 sqlite", "tokometer w1 sqlite"),
        ("tokometer w2 postgresql", "tokometer w1 postgresql"),
        ("tokometer w1 postgresql", "tokometer w1 sqlite"),
        ("tokometer w2 postgresql", "tokometer w2 sqlite"),
        ("tokometer w1 sqlite", "bare w1"), ("tokometer w2 sqlite", "bare w2"),
        ("tokometer w1 postgresql", "bare w1"), ("tokometer w2 postgresql", "bare w2")}


def test_summary_ratios_are_taken_within_a_round(overhead) -> None:
    targets = overhead.plan(["tokometer"], (1, 2), ["sqlite"])

    def result(target: str, rps: float, n: int):
        return overhead.Result(target, "json", 64, rps, 1.0, 2.0, 0.3, int(rps), 0, None, n)

    # round 1 on a busy machine, round 2 on a quiet one: the ratio is 2.0 in both
    results = [result("tokometer w1 sqlite", 1000, 1), result("tokometer w2 sqlite", 2000, 1),
               result("tokometer w1 sqlite", 1500, 2), result("tokometer w2 sqlite", 3000, 2)]
    text = overhead.summary(targets, results, [])
    assert "| tokometer w2 sqlite / tokometer w1 sqlite | 2.00 (2.00-2.00) | - |" in text
    assert "| tokometer w1 sqlite | 1,250 (1,000-1,500) | - |" in text


def test_unknown_targets_and_stores_are_refused(overhead) -> None:
    assert overhead._names(overhead.STORES, "postgresql,sqlite") == ["postgresql", "sqlite"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown mysql"):
        overhead._names(overhead.STORES, "sqlite,mysql")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown tokometr"):
        overhead._names(overhead.KINDS, "bare,tokometr")  # not started as a tokometer
