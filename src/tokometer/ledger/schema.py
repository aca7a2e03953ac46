"""Table definitions for the SQLite store; one column per DESIGN.md event field."""

from __future__ import annotations

from ..events import FIELDS

_TYPES = {
    "duration_ms": "REAL", "ttft_ms": "REAL", "stream": "INTEGER", "status": "INTEGER",
    "input_tokens": "INTEGER", "cache_read_tokens": "INTEGER", "cache_write_tokens": "INTEGER",
    "output_tokens": "INTEGER", "reasoning_tokens": "INTEGER",
    "counted_input_tokens": "INTEGER", "counted_output_tokens": "INTEGER",
    "cache_write_1h_tokens": "INTEGER", "web_search_requests": "INTEGER",
    "leaf_index": "INTEGER",
}  # everything else TEXT: money stays a decimal string

_EVENT_COLUMNS = ",\n  ".join(
    f"{name} {_TYPES.get(name, 'TEXT')}{' PRIMARY KEY' if name == 'id' else ''}" for name in FIELDS
)

# WITHOUT ROWID: the table is the id's B-tree, so a commit touches one tree less (bench/ledger.py
# measures the appends).
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
  {_EVENT_COLUMNS}
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE TABLE IF NOT EXISTS keys (
  key_id TEXT PRIMARY KEY,
  key_hash TEXT NOT NULL UNIQUE,
  tenant TEXT NOT NULL,
  app TEXT NOT NULL,
  region TEXT,
  created TEXT NOT NULL,
  revoked TEXT
);
CREATE TABLE IF NOT EXISTS budgets (
  budget_id TEXT PRIMARY KEY,
  scope TEXT NOT NULL,
  scope_value TEXT NOT NULL,
  limit_value TEXT NOT NULL,
  unit TEXT NOT NULL,
  period TEXT NOT NULL,
  created TEXT NOT NULL,
  UNIQUE (scope, scope_value, unit, period)
);
CREATE TABLE IF NOT EXISTS ledger_meta (
  key TEXT PRIMARY KEY,     -- 'rolled_up' / 'logged': how many leaves the rollups hold /
                            -- have their Merkle tree nodes stored
  value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS merkle_nodes (
  level INTEGER NOT NULL,   -- 0: leaves; k: the full subtree over 2^k leaves
  idx INTEGER NOT NULL,
  hash BLOB NOT NULL,
  PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tree_heads (
  tree_size INTEGER NOT NULL,
  root_hash BLOB NOT NULL,
  timestamp INTEGER NOT NULL,
  signature BLOB NOT NULL,
  PRIMARY KEY (tree_size, timestamp)
);
CREATE INDEX IF NOT EXISTS events_task ON events(task) WHERE task IS NOT NULL;
CREATE TABLE IF NOT EXISTS outcomes (
  id TEXT PRIMARY KEY,
  time TEXT NOT NULL,
  tenant TEXT NOT NULL,
  task TEXT NOT NULL,
  outcome TEXT NOT NULL,
  value TEXT,             -- a decimal string, in the server currency (what the outcome was worth)
  key_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outcomes_task ON outcomes(tenant, task);
CREATE TABLE IF NOT EXISTS budget_spend (  -- spend per budget and period (policy/shared.py)
  budget_id TEXT NOT NULL,
  period_start TEXT NOT NULL,  -- '' for a budget over all time
  spent TEXT NOT NULL,
  PRIMARY KEY (budget_id, period_start)
);
CREATE TABLE IF NOT EXISTS budget_holds (  -- in-flight reservations (policy/shared.py)
  budget_id TEXT NOT NULL,
  id TEXT NOT NULL,       -- the request's event id
  period_start TEXT NOT NULL,
  amount TEXT NOT NULL,
  expires REAL NOT NULL,  -- Unix seconds
  PRIMARY KEY (budget_id, id)
);
CREATE TABLE IF NOT EXISTS rate_seconds (  -- rate limits' last minute (policy/shared.py)
  limit_name TEXT NOT NULL,
  second INTEGER NOT NULL,  -- Unix time
  requests INTEGER NOT NULL,
  tokens INTEGER NOT NULL,  -- reserved, then used once settled
  PRIMARY KEY (limit_name, second)
);
CREATE TABLE IF NOT EXISTS provenance (  -- what the registry keeps of each answer, no text
  event_id TEXT PRIMARY KEY,
  text_sha256 TEXT NOT NULL,   -- of the normalised text (provenance/fingerprint.py)
  fingerprints BLOB NOT NULL   -- sorted, 8 bytes big-endian each: the event's
                               -- fingerprint_sha256 is their SHA-256
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ingest_claims (  -- ingested readings' identities (claims.py)
  tenant TEXT NOT NULL,
  origin TEXT NOT NULL,      -- what names it: a CloudEvent's source, a provider, spans
  reading_id TEXT NOT NULL,  -- its id there
  event_id TEXT NOT NULL,    -- the event that records it
  PRIMARY KEY (tenant, origin, reading_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wallet_lots (  -- prepaid credit (policy/wallets.py)
  lot_id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  amount TEXT NOT NULL,     -- a decimal string
  currency TEXT NOT NULL,
  priority INTEGER NOT NULL,  -- drawn from the lowest first
  expires TEXT,             -- RFC 3339 UTC; null: never
  created TEXT NOT NULL,
  note TEXT
);
CREATE INDEX IF NOT EXISTS wallet_lots_tenant ON wallet_lots(tenant);
CREATE TABLE IF NOT EXISTS budget_reservations (
  budget_id TEXT PRIMARY KEY,
  reserved TEXT NOT NULL,
  updated TEXT NOT NULL
);
"""

INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(FIELDS)}) VALUES ({', '.join('?' for _ in FIELDS)})"
)


def added_columns(existing: set[str]) -> list[str]:
    """ALTER statements bringing an older store's events table up to FIELDS. Its events read
    the new columns as null, which their leaves leave out (canonical.leaf_document)."""
    return [f"ALTER TABLE events ADD COLUMN {name} {_TYPES.get(name, 'TEXT')}"
            for name in FIELDS if name not in existing]

# Two heads of the same size signed in the same millisecond are the same head (Ed25519 is
# deterministic), so the second is no news, not an error.
INSERT_HEAD = ("INSERT INTO tree_heads (tree_size, root_hash, timestamp, signature) "
               "VALUES (?,?,?,?) ON CONFLICT DO NOTHING")
