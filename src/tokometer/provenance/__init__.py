"""Was this text generated here? Keyed fingerprints of generated text, matched without keeping
the text (fingerprint.py says how, and what each tier means)."""

from __future__ import annotations

from .fingerprint import (
    GUARANTEED_RUN,
    TIERS,
    Index,
    Match,
    boilerplate_limit,
    fingerprint_set_sha256,
    fingerprints,
    match,
    text_sha256,
    tier,
    words,
)

__all__ = ["GUARANTEED_RUN", "TIERS", "Index", "Match", "boilerplate_limit",
           "fingerprint_set_sha256", "fingerprints", "match", "text_sha256", "tier", "words"]
