"""Where the token lives in ``flask.session``.

The session holds a small record: the readable part the fast path needs (the access
token's expiry, a fingerprint of the refresh token, a state) and the token itself, sealed.
A request whose token is far from expiry reads two numbers and opens nothing.

The seal's associated data binds the blob to its readable part (expiry, fingerprint, state:
an "ambiguous" mark cannot be edited back to "ok") and to a random id kept
beside the record in the same session, so a blob edited, moved between fields, or swapped
in from another user's session does not open.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import MutableMapping
from typing import Any, NamedTuple

from .errors import TokenError
from .keys import KeyNames
from .sealing import Sealer, SealError
from .token import Token, expires_at, normalize

log = logging.getLogger("flask_tokenguard")

FORMAT = 1
STATE_OK = "ok"
#: The refresh token may have been consumed: never present it; use the access token until expiry.
STATE_AMBIGUOUS = "ambiguous"
_STATES = (STATE_OK, STATE_AMBIGUOUS)


class Record(NamedTuple):
    """The session's view of a token, before opening it (a tuple: cheap on the fast path)."""

    exp: float | None
    fingerprint: str | None
    state: str
    box: str


class SessionTokens:
    """Reads and writes the token record in a session mapping (``flask.session`` in requests)."""

    def __init__(self, key: str, sealer: Sealer, keys: KeyNames) -> None:
        self.key = key
        self.sid_key = f"{key}_sid"
        self.sealer = sealer
        self.keys = keys

    def peek(self, session: MutableMapping[str, Any]) -> Record | None:
        """The record, unopened; None when there is none. Raises TokenError if malformed."""
        raw = session.get(self.key)
        if raw is None:
            return None
        if not isinstance(raw, dict) or raw.get("v") != FORMAT:
            raise TokenError("the session's token record is malformed")
        exp, fp, state, box = raw.get("exp"), raw.get("fp"), raw.get("st"), raw.get("box")
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, (int, float))):
            raise TokenError("the session's token record has a bad expiry")
        if fp is not None and not isinstance(fp, str):
            raise TokenError("the session's token record has a bad fingerprint")
        if state not in _STATES or not isinstance(box, str):
            raise TokenError("the session's token record is malformed")
        return Record(None if exp is None else float(exp), fp, state, box)

    def open(self, session: MutableMapping[str, Any], record: Record) -> Token:
        """The token in ``record``; re-sealed under the current key if a fallback opened it."""
        try:
            data, current = self.sealer.open(record.box, self._aad(session, record))
            token = normalize(json.loads(data))
        except (SealError, ValueError) as exc:
            raise TokenError(f"the session's token does not open: {exc}") from None
        if not current:
            self.save(session, token, state=record.state)
        return token

    def save(self, session: MutableMapping[str, Any], token: Token, state: str = STATE_OK) -> None:
        refresh = token.get("refresh_token")
        sid = session.get(self.sid_key)
        if not isinstance(sid, str):
            sid = session[self.sid_key] = secrets.token_urlsafe(16)
        record = Record(
            exp=expires_at(token),
            fingerprint=self.keys.fingerprint(refresh) if isinstance(refresh, str) else None,
            state=state,
            box="",
        )
        box = self.sealer.seal(
            json.dumps(token, separators=(",", ":")).encode("utf-8"), self._aad(session, record)
        )
        session[self.key] = {
            "v": FORMAT,
            "exp": record.exp,
            "fp": record.fingerprint,
            "st": state,
            "box": box,
        }
        _modified(session)

    def clear(self, session: MutableMapping[str, Any]) -> None:
        if self.key in session:
            del session[self.key]
            _modified(session)

    def _aad(self, session: MutableMapping[str, Any], record: Record) -> bytes:
        sid = session.get(self.sid_key)
        exp = "" if record.exp is None else repr(float(record.exp))
        return f"tokenguard-session|{sid}|{record.fingerprint}|{exp}|{record.state}".encode()


def _modified(session: MutableMapping[str, Any]) -> None:
    if hasattr(session, "modified"):
        session.modified = True
