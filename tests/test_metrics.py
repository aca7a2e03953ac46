"""The Prometheus counters and histogram, counted in plain dictionaries and rendered on scrape."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import orjson

from conftest import make_event
from tokometer.gateway.metrics import Metrics


def an_event():
    return make_event(cost=Decimal("0.5"), input_tokens=7, output_tokens=0, model="m")


def samples(metrics: Metrics) -> dict[str, float]:
    lines = metrics.render().decode().splitlines()
    return {k: float(v) for k, v in (x.rsplit(" ", 1) for x in lines if not x.startswith("#"))}


def test_durations_fall_in_the_first_bucket_that_holds_them_and_sum_up():
    m = Metrics(["m"])
    base = replace(an_event(), provider="p", duration_ms=10.0)  # exactly on the 0.01 s bound
    for ms in (10.0, 11.0, 400_000.0):  # the last one is past every finite bucket
        m.observe(replace(base, duration_ms=ms))
    s = samples(m)
    assert s['tokometer_request_duration_seconds_bucket{le="0.005",provider="p"}'] == 0
    assert s['tokometer_request_duration_seconds_bucket{le="0.01",provider="p"}'] == 1
    assert s['tokometer_request_duration_seconds_bucket{le="0.025",provider="p"}'] == 2
    assert s['tokometer_request_duration_seconds_bucket{le="300",provider="p"}'] == 2
    assert s['tokometer_request_duration_seconds_bucket{le="+Inf",provider="p"}'] == 3
    assert s['tokometer_request_duration_seconds_count{provider="p"}'] == 3
    assert abs(s['tokometer_request_duration_seconds_sum{provider="p"}'] - 400.021) < 1e-9


def test_refusals_and_upstream_errors_are_told_apart():
    m = Metrics(["m"])
    m.observe(replace(an_event(), provider=None, status=402, error_type="budget_exceeded",
                      cost=Decimal(0)))
    m.observe(replace(an_event(), provider="p", status=504, error_type="upstream_timeout"))
    s = samples(m)
    assert s['tokometer_refusals_total{reason="budget_exceeded"}'] == 1
    assert s['tokometer_upstream_errors_total{error_type="upstream_timeout",provider="p"}'] == 1
    assert not any(k.startswith("tokometer_upstream_errors_total{error_type=\"budget") for k in s)


def test_a_model_the_config_does_not_know_is_labelled_other():
    m = Metrics(["m"])
    m.observe(replace(an_event(), provider="p", model="m-2025-01-01", model_requested="m"))
    m.observe(replace(an_event(), provider=None, model=None, model_requested="x" * 10_000))
    m.observe(replace(an_event(), provider=None, model=None, model_requested=None))
    s = samples(m)
    assert s['tokometer_requests_total{model="m",provider="p",status="200"}'] == 1
    assert s['tokometer_requests_total{model="other",provider="",status="200"}'] == 2
    assert {k.split('model="')[1].split('"')[0] for k in s if 'model="' in k} == {"m", "other"}


def test_a_workers_counts_carried_to_another_add_up():
    """What each worker saves for the others (state) and how one adds them up (add)."""
    one, other = Metrics(["m"]), Metrics(["m"])
    one.observe(replace(an_event(), provider="p", duration_ms=20.0))
    one.observe(replace(an_event(), provider=None, status=429, error_type="rate_limit_exceeded"))
    other.observe(replace(an_event(), provider="p", duration_ms=20.0, status=502,
                          error_type="upstream_timeout"))
    total = Metrics(["m"])
    for worker in (one, other):
        total.add(orjson.loads(orjson.dumps(worker.state())))  # as it travels, in a file
    s = samples(total)
    assert s['tokometer_requests_total{model="m",provider="p",status="200"}'] == 1
    assert s['tokometer_requests_total{model="m",provider="p",status="502"}'] == 1
    assert s['tokometer_cost_total{currency="USD",model="m",provider="p"}'] == 1.0
    assert s['tokometer_tokens_total{kind="input",model="m",provider="p"}'] == 14
    assert s['tokometer_refusals_total{reason="rate_limit_exceeded"}'] == 1
    assert s['tokometer_upstream_errors_total{error_type="upstream_timeout",provider="p"}'] == 1
    assert s['tokometer_request_duration_seconds_count{provider="p"}'] == 2
    copy = Metrics(["m"])
    copy.add(one.state())
    assert copy.render() == one.render()
