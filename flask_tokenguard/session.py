"""Where the token lives in the session mapping (``flask.session`` in a request).

The session holds a small record: the readable part the fast path needs (the access token's
expiry, when to refresh it, a fingerprint of the refresh token, a state) and the token itself,
sealed. A request whose token is not yet due reads two numbers and opens nothing.

The seal's associated data binds the blob to its readable part (an "ambiguous" mark cannot be
edited back to "ok") and to a random id kept beside the record in the same session, so a blob
edited, moved between fields, or swapped in from another user's session does not open.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import MutableMapping
from typing import Any, NamedTuple

from .errors import TokenError
from .keys import KeyNames
from .sealing import Sealer, SealError
from .token import Token, TokenState, expires_at, refresh_at, restore

FORMAT = 2
_STATES = {state.value: state for state in TokenState}


class RecordConflict(TokenError):
    """The record changed since this request read it: take what is there now.

    ``current``: the record's text as just read (None: it is gone), so the caller need not
    read it again.
    """

    def __init__(self, message: str, current: str | None) -> None:
        super().__init__(message)
        self.current = current


class Record(NamedTuple):
    """The session's view of a token, before opening it (a tuple: cheap on the fast path).

    ``box`` is what the holder needs to open it: the sealed token for :class:`SessionTokens`,
    the text last read from the store for the ticket holder (empty before it was read).
    """

    #: when the access token expires (epoch seconds), None when the provider gave no expiry
    exp: float | None
    #: when to refresh it: the later of ``exp - leeway`` and half its lifetime
    due: float | None
    fingerprint: str | None
    state: TokenState
    box: str


class SessionTokens:
    """Reads and writes the token record in a session mapping (``TOKENGUARD_TOKEN_STORAGE =
    "session"``): the whole token travels with the session."""

    #: a stale copy of the session can carry an old token back: the lost-update guard runs
    guards_lost_updates = True
    #: the token is in hand: a protected view opens it only when it asks for it
    opens_cheaply = True

    def __init__(self, key: str, sealer: Sealer, keys: KeyNames, leeway: float) -> None:
        self.key = key
        self.sid_key = f"{key}_sid"
        #: the signed-in user's claims (``guard.user``): no secret, never a token
        self.user_key = f"{key}_user"
        self.sealer = sealer
        self.keys = keys
        self.leeway = leeway

    def peek(self, session: MutableMapping[str, Any]) -> Record | None:
        """The record, unopened; None when there is none. Raises TokenError if malformed."""
        raw = read_entry(session, self.key, FORMAT, "record")
        if raw is None:
            return None
        fp, box = raw.get("fp"), raw.get("box")
        if (fp is not None and not isinstance(fp, str)) or not isinstance(box, str):
            raise TokenError("the session's token record is malformed")
        return readable(raw, "record", fp, box)

    def open(self, session: MutableMapping[str, Any], record: Record) -> tuple[Token, Record]:
        """The token in ``record``; re-sealed under the current key if a fallback opened it."""
        try:
            data, current = self.sealer.open(record.box, self._aad(session, record))
            token = restore(json.loads(data))
        except (SealError, ValueError, RecursionError) as exc:
            raise TokenError(f"the session's token does not open: {exc}") from None
        if not current:
            record = self.save(session, token, state=record.state)
        return token, record

    def save(
        self,
        session: MutableMapping[str, Any],
        token: Token,
        state: TokenState = TokenState.OK,
        previous: Record | None = None,
        subject: str | None = None,
        sid: str | None = None,
    ) -> Record:
        refresh = token.get("refresh_token")
        sid = session.get(self.sid_key)
        if not isinstance(sid, str):
            sid = session[self.sid_key] = secrets.token_urlsafe(16)
        record = Record(
            exp=expires_at(token),
            due=refresh_at(token, self.leeway),
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
            "due": record.due,
            "fp": record.fingerprint,
            "st": state.value,
            "box": box,
        }
        mark_modified(session)
        return record._replace(box=box)

    def clear(self, session: MutableMapping[str, Any]) -> None:
        for key in (self.key, self.user_key):
            if key in session:
                del session[key]
                mark_modified(session)

    def _aad(self, session: MutableMapping[str, Any], record: Record) -> bytes:
        sid = session.get(self.sid_key)
        exp = "" if record.exp is None else repr(float(record.exp))
        due = "" if record.due is None else repr(float(record.due))
        return (
            f"tokenguard-session|{sid}|{record.fingerprint}|{exp}|{due}|{record.state.value}"
        ).encode()


def read_entry(
    session: MutableMapping[str, Any], key: str, version: int, what: str
) -> dict[str, Any] | None:
    """The extension's entry in the session, None if absent; TokenError if not ours."""
    raw = session.get(key)
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("v") != version:
        raise TokenError(f"the session's token {what} is malformed")
    return raw


def readable(
    raw: dict[str, Any], what: str, fingerprint: str | None = None, box: str = ""
) -> Record:
    """The readable part of a session entry (expiry, refresh time, state); TokenError if bad."""
    exp, due = raw.get("exp"), raw.get("due")
    state = _STATES.get(raw.get("st"))  # type: ignore[arg-type]
    if not (is_time(exp) and is_time(due)) or state is None:
        raise TokenError(f"the session's token {what} is malformed")
    return Record(
        None if exp is None else float(exp),
        None if due is None else float(due),
        fingerprint,
        state,
        box,
    )


def is_time(value: Any) -> bool:
    """None or a finite number of seconds (not a bool)."""
    if value is None:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mark_modified(session: MutableMapping[str, Any]) -> None:
    if hasattr(session, "modified"):
        session.modified = True
