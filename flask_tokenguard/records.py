"""What the coordinator publishes in the shared store, sealed and bound to its key.

A record is JSON: ``{"outcome": "ok", "token": {...}, "at": <epoch>}`` for a success, or a
:class:`~flask_tokenguard.errors.RefreshError` record for a failure. It is sealed with the
store's key and the key name as associated data, so an entry copied to another key, or
written by anyone without the secret, does not open. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .errors import Outcome, RefreshError
from .sealing import Sealer, SealError
from .token import Token

log = logging.getLogger("flask_tokenguard")


class RecordCodec:
    def __init__(self, sealer: Sealer) -> None:
        self.sealer = sealer

    def encode(self, key: str, record: dict[str, Any]) -> str:
        data = json.dumps(record, separators=(",", ":"), sort_keys=True).encode("utf-8")
        return self.sealer.seal(data, key.encode("utf-8"))

    def decode(self, key: str, text: str) -> dict[str, Any] | None:
        """The record, or None (logged without content) when it does not open or parse."""
        try:
            data, _current = self.sealer.open(text, key.encode("utf-8"))
            record = json.loads(data)
        except (SealError, ValueError) as exc:
            log.warning("ignoring an unreadable store entry %s: %s", key, exc)
            return None
        if not isinstance(record, dict) or not isinstance(record.get("outcome"), str):
            log.warning("ignoring a malformed store entry %s", key)
            return None
        return record

    @staticmethod
    def success(token: Token) -> dict[str, Any]:
        return {"outcome": Outcome.OK.value, "token": token, "at": time.time()}

    @staticmethod
    def failure(error: RefreshError) -> dict[str, Any]:
        record = error.to_record()
        record["at"] = time.time()
        return record
