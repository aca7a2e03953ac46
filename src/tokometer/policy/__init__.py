"""Who may use the gateway, and as whom: API keys → consumers."""

from .keys import Consumer, KeyRing, create_key, hash_key, list_keys, revoke_key

__all__ = ["Consumer", "KeyRing", "create_key", "hash_key", "list_keys", "revoke_key"]
