"""Usage in the shapes billing systems take: Stripe meter events, OpenMeter CloudEvents and
Lago events, one record per event and kind of token, for the event's tenant.

A record's id is its event's id and its kind, so exporting the same events again gives the
same ids, which each system keeps to drop what it has already counted (Stripe's
`identifier`, a CloudEvent's `id`, Lago's `transaction_id`): a re-run never bills twice.
Kinds split the input as prices do: uncached input, cache reads, cache writes, and output
(reasoning included). A correction's records carry its differences, negative for a refund.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

SHAPES = ("stripe", "openmeter", "lago")
KINDS = ("input", "cache_read", "cache_write", "output")
METER = "tokometer_tokens"  # Stripe's meters are named per kind: tokometer_input_tokens, ...


def billing_records(events: Iterator[dict[str, Any]], shape: str) -> Iterator[dict[str, Any]]:
    """Each event's records in `shape` (one of SHAPES); events of no tenant (refused before a
    key was known) and kinds with no tokens have none."""
    build = _BUILDERS[shape]
    for event in events:
        if not event["tenant"]:
            continue
        for kind, tokens in _tokens(event).items():
            if tokens:
                yield build(event, kind, tokens)


def _tokens(event: dict[str, Any]) -> dict[str, int]:
    cached, written = event["cache_read_tokens"], event["cache_write_tokens"]
    return {"input": event["input_tokens"] - cached - written, "cache_read": cached,
            "cache_write": written, "output": event["output_tokens"]}


def _seconds(event: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(event["time"]).timestamp())


def _stripe(event: dict[str, Any], kind: str, tokens: int) -> dict[str, Any]:
    return {"event_name": f"tokometer_{kind}_tokens", "identifier": f"{event['id']}-{kind}",
            "timestamp": _seconds(event),
            "payload": {"stripe_customer_id": event["tenant"], "value": str(tokens)}}


def _openmeter(event: dict[str, Any], kind: str, tokens: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"{event['id']}-{kind}", "source": "tokometer",
            "type": METER, "subject": event["tenant"], "time": event["time"],
            "data": {"tokens": tokens, "kind": kind, **_about(event)}}


def _lago(event: dict[str, Any], kind: str, tokens: int) -> dict[str, Any]:
    return {"event": {"transaction_id": f"{event['id']}-{kind}",
                      "external_subscription_id": event["tenant"], "code": METER,
                      "timestamp": _seconds(event),
                      "properties": {"tokens": tokens, "kind": kind, **_about(event)}}}


def _about(event: dict[str, Any]) -> dict[str, Any]:
    """What a usage-based price may group by: who, which model, and where from."""
    return {name: event[name] for name in ("app", "agent", "provider", "model", "source")
            if event.get(name) is not None}


_BUILDERS: dict[str, Callable[[dict[str, Any], str, int], dict[str, Any]]] = {
    "stripe": _stripe, "openmeter": _openmeter, "lago": _lago}
