"""Who may use the gateway, as whom, and how much: keys, rules, rate limits, budgets."""

from .guard import Guard, Need, Ticket
from .keys import ANONYMOUS, Consumer, KeyRing, create_key, hash_key, list_keys, revoke_key

__all__ = ["ANONYMOUS", "Consumer", "Guard", "KeyRing", "Need", "Ticket", "create_key",
           "hash_key", "list_keys", "revoke_key"]
