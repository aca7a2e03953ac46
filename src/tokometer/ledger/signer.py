"""Signed tree heads: Ed25519 over (timestamp, tree size, root hash).

The signed bytes are RFC 9162's TreeHeadDataV2 in TLS encoding: uint64 timestamp (ms since
the epoch), uint64 tree_size, the root hash with a one-byte length, and an empty extensions
list (two zero bytes). Anyone with the 32-byte public key can check a head offline.
"""

from __future__ import annotations

import base64
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigError


@dataclass(frozen=True, slots=True)
class TreeHead:
    tree_size: int
    root_hash: bytes
    timestamp: int  # milliseconds since the Unix epoch, UTC
    signature: bytes

    def signed_bytes(self) -> bytes:
        return tree_head_data(self.tree_size, self.root_hash, self.timestamp)

    def to_json(self) -> dict[str, Any]:
        return {"tree_size": self.tree_size, "root_hash": self.root_hash.hex(),
                "timestamp": self.timestamp,
                "signature": base64.b64encode(self.signature).decode()}

    @classmethod
    def from_json(cls, data: Any) -> TreeHead:
        """Raises ValueError saying which field is wrong."""
        if not isinstance(data, dict):
            raise ValueError("tree_head must be an object")
        try:
            size, ts = data["tree_size"], data["timestamp"]
            if not isinstance(size, int) or not isinstance(ts, int) or size < 0:
                raise ValueError("tree_head.tree_size and timestamp must be integers")
            return cls(size, bytes.fromhex(data["root_hash"]), ts,
                       base64.b64decode(data["signature"], validate=True))
        except (KeyError, TypeError) as e:
            raise ValueError(f"tree_head is missing or has a bad {e}") from None


def tree_head_data(tree_size: int, root_hash: bytes, timestamp: int) -> bytes:
    return struct.pack(">QQB", timestamp, tree_size, len(root_hash)) + root_hash + b"\x00\x00"


class Signer:
    def __init__(self, key: Ed25519PrivateKey):
        self._key = key
        self.public_key = key.public_key()

    def sign(self, tree_size: int, root_hash: bytes, timestamp: int) -> TreeHead:
        signature = self._key.sign(tree_head_data(tree_size, root_hash, timestamp))
        return TreeHead(tree_size, root_hash, timestamp, signature)

    def sign_bytes(self, data: bytes) -> bytes:
        """A signature over `data`, which must begin with a prefix of its own kind (a tree
        head's bytes cannot be confused with anything else the key signs)."""
        return self._key.sign(data)

    def public_key_text(self) -> str:
        return public_key_text(self.public_key)

    def secret(self) -> bytes:
        """The private key's raw bytes, for the keys derived from it (the provenance
        registry's fingerprint key)."""
        return self._key.private_bytes(serialization.Encoding.Raw,
                                       serialization.PrivateFormat.Raw,
                                       serialization.NoEncryption())


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key as `ledger pubkey` prints it (base64 of 32 bytes), or a PEM file's text."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 key")
            return key
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError as e:
        raise ValueError(f"not an Ed25519 public key ({e})") from None


def verify_head(head: TreeHead, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(head.signature, head.signed_bytes())
    except InvalidSignature:
        return False
    return True


def _create_whole(path: Path, content: bytes) -> None:
    """`path` with `content`, unless it exists: written aside, then linked into place, so a
    process that starts beside this one (another worker, a replica) reads either no file or
    the whole key, and the first to link it makes the one key they all use."""
    fd, aside = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.link(aside, path)
    except FileExistsError:  # another process made it first: theirs is the key
        pass
    finally:
        os.unlink(aside)


def load_signer(key_file: Path, pem: str | None = None, pem_from: str | None = None) -> Signer:
    """The log's key: `pem` if given (config read it from the variable `pem_from`), else from
    key_file, created there if new."""
    if pem is None:
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            new = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption())
            _create_whole(key_file, new)
        pem = key_file.read_text()
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except ValueError as e:
        where = f"${pem_from}" if pem_from and pem is not None else str(key_file)
        raise ConfigError(f"{where}: not a PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{key_file}: the ledger signing key must be Ed25519")
    return Signer(key)
