"""The log over HTTP: signed heads, consistency proofs, receipts and provenance look-ups.

    GET /v1/ledger/head                          the latest signed tree head (+ public key)
    GET /v1/ledger/consistency?first=M&second=N  PROOF(M, N) as hex hashes
    GET /v1/receipts/{event_id}                  the event's receipt (its own key, or admin)
    POST /v1/provenance/check {"text": "..."}    was it generated here? (its tenant, or admin)

Store reads run on a thread with a connection of their own, never on the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

from ..errors import RequestError
from ..ledger import Ledger
from ..ledger.read import get_event
from ..ledger.receipts import NotFound, build_receipt, consistency_proof, latest_head
from ..policy import Consumer
from ..provenance.registry import Registry
from .offloop import OffLoop


class Transparency:
    def __init__(self, store: OffLoop, ledger: Ledger, registry: Registry):
        self._read = store.run
        self.ledger = ledger
        self.registry = registry

    async def head(self) -> dict[str, Any]:
        head = await self._read(latest_head) or await self.ledger.sign_now()
        return {**head.to_json(), "public_key": self.ledger.signer.public_key_text()}

    async def consistency(self, query: bytes) -> dict[str, Any]:
        params = parse_qs(query.decode("latin-1"))
        try:
            first, second = int(params["first"][0]), int(params["second"][0])
        except (KeyError, ValueError):
            raise RequestError("give two tree sizes: ?first=M&second=N") from None
        try:
            proof = await self._read(consistency_proof, first, second)
        except ValueError as e:
            raise RequestError(str(e)) from None
        return {"first": first, "second": second, "proof": [p.hex() for p in proof]}

    async def receipt(self, event_id: str, who: Consumer | None) -> dict[str, Any]:
        """`who` None: the admin, who may see any receipt."""
        event = await self._read(get_event, event_id)
        if event is None or (who is not None and event["key_id"] != who.key_id):
            # The same answer for another key's event as for none: ids reveal nothing.
            raise RequestError(f"no event {event_id} for this key", status=404,
                               type="not_found_error")
        try:
            receipt = await self._read(build_receipt, event_id)
            if receipt is None:  # newer than the latest signed head
                await self.ledger.sign_now()
                receipt = await self._read(build_receipt, event_id)
        except NotFound as e:
            raise RequestError(str(e), status=404, type="not_found_error") from None
        assert receipt is not None, "a head signed now covers every event already stored"
        return receipt

    async def provenance(self, text: str, tenant: str | None) -> dict[str, Any]:
        """registry.check's answer, with a receipt even for an answer newer than the latest
        signed head (one is signed now). The text is fingerprinted on a thread of its own,
        not the one the admin API and the dashboard share."""
        query = await asyncio.to_thread(self.registry.query, text)
        answer = await self._read(self.registry.check, query, tenant)
        if answer["tier"] != "none" and answer["receipt"] is None:
            await self.ledger.sign_now()
            answer = await self._read(self.registry.check, query, tenant)
        return answer
