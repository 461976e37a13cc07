"""Tokens kept server-side: a small ticket in the session, the token record in the shared store.

With ``TOKENGUARD_TOKEN_STORAGE = "store"`` (the default) the session holds a ticket of fixed
size, a random id and a random secret, beside what the fast path needs (the access token's
expiry, when to refresh it, its state). The token record lives in the shared store under a
digest of the id, sealed under a key derived from the ticket's secret and the app's secret: a
dump of the store alone opens nothing, and the cookie alone holds no token. So real-sized
tokens (JWT access and ID tokens of several KB) never meet the browser's 4 KB cookie limit,
and logout deletes the record: a copy of the cookie is dead at once, whatever the session
backend.

Records are written with compare-and-set on the text last read (``Store.swap``): a request
that read an older record never overwrites a newer one; it reads again and takes what is
there. A record lives as long as the session (``PERMANENT_SESSION_LIFETIME``), renewed when
it is written and when it is opened past half that time. An index per subject and per session
at the provider (their records' keys) lets ``logout_all(subject)`` end every session of one user
and a back-channel logout end the sessions the provider names.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections.abc import MutableMapping, Sequence
from typing import Any, Protocol

from .errors import StoreError, TokenError
from .keys import KeyNames
from .sealing import Sealer, SealError
from .session import Record, RecordConflict, mark_modified, read_entry, readable
from .stores.base import Store
from .token import Token, TokenState, expires_at, refresh_at, restore

FORMAT = 3
_ID_BYTES, _SECRET_BYTES = 16, 32
#: How many times an index update is retried against concurrent writers.
_INDEX_TRIES = 8
#: A subject's index is pruned of dead records once it holds this many.
_PRUNE_AT = 32
#: How many sessions' derived ticket keys a process keeps.
_SEALERS_KEPT = 1024


class RecordListener(Protocol):
    """Told when a record's token is replaced or records end (the durable grants listen)."""

    def rotated(self, key: str, subject: str, previous: Token, token: Token) -> None:
        """``key``'s record of ``subject`` went from ``previous`` to ``token`` (this writer won)."""

    def ending(self, keys: Sequence[str]) -> None:
        """These records are about to be deleted (a logout): called before they are."""


class TicketTokens:
    """Reads and writes the token record of a session kept in the shared store."""

    #: told of rotations and endings (set by the extension with ``TOKENGUARD_OFFLINE_GRANTS``)
    listener: RecordListener | None = None

    #: the session carries no token, so a stale copy of it cannot bring an old one back
    guards_lost_updates = False
    #: whether the record still exists takes a store read: a protected view makes it
    opens_cheaply = False

    def __init__(
        self,
        key: str,
        store: Store,
        keys: KeyNames,
        secrets: Sequence[str | bytes],
        leeway: float,
        lifetime: float,
    ) -> None:
        self.key = key
        #: kept beside the ticket: the signed-in user's claims, and (with sessions that hold
        #: tokens) a seal id; cleared with it
        self.sid_key = f"{key}_sid"
        self.user_key = f"{key}_user"
        self.store = store
        self.keys = keys
        self.secrets = [s.encode("utf-8") if isinstance(s, str) else s for s in secrets]
        #: ticket secret -> its Sealer: deriving the keys (HKDF) costs more than opening a
        #: record, and a busy session opens its record often. Bounded; emptied when full.
        self._sealers: dict[bytes, Sealer] = {}
        self.leeway = leeway
        self.lifetime = lifetime

    # -- the session's ticket (no I/O) -------------------------------------------------------

    def peek(self, session: MutableMapping[str, Any]) -> Record | None:
        """The ticket's view of the token, unopened; None without one. TokenError if malformed."""
        raw = read_entry(session, self.key, FORMAT, "ticket")
        if raw is None:
            return None
        if not isinstance(raw.get("id"), str) or not isinstance(raw.get("k"), str):
            raise TokenError("the session's token ticket is malformed")
        return readable(raw, "ticket")

    def _ticket(self, session: MutableMapping[str, Any]) -> tuple[str, bytes]:
        raw = session.get(self.key)
        try:
            ticket_id, secret = raw["id"], _unb64(raw["k"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError, binascii.Error):
            raise TokenError("the session's token ticket is malformed") from None
        if len(secret) != _SECRET_BYTES:
            raise TokenError("the session's token ticket is malformed")
        return ticket_id, secret

    # -- the record in the store -------------------------------------------------------------

    def open(self, session: MutableMapping[str, Any], record: Record) -> tuple[Token, Record]:
        """The token of the session's record (one store read), and the record as stored.

        The ticket's readable part is brought up to date with the store's (another request of
        this session may have refreshed the token). TokenError when there is no record (signed
        out elsewhere, expired, evicted) or it does not open; StoreError when the store fails.
        """
        text = record.box or self.store.read(self.record_key(session))  # (read by present())
        return self.open_text(session, record, text)

    def present(self, session: MutableMapping[str, Any], record: Record) -> Record | None:
        """``record`` with the text now in the store, unopened; None when the record is gone.

        All a protected view whose token is not due needs (a copy of a signed-out session's
        cookie must find nothing): one read, no decryption. The token is opened from that text
        if the view asks for it. A record last written more than half its lifetime ago (as the
        ticket knows) is renewed: the session is in use.
        """
        key = self.record_key(session)
        text = self.store.read(key)
        if text is None:
            return None
        raw = session[self.key]
        at = raw.get("at")
        if not isinstance(at, (int, float)) or time.time() - at > self.lifetime / 2:
            self.store.touch(key, self.lifetime)
            session[self.key] = {**raw, "at": time.time()}
            mark_modified(session)
        return record._replace(box=text)

    def open_text(
        self, session: MutableMapping[str, Any], record: Record, text: str | None
    ) -> tuple[Token, Record]:
        """As :meth:`open`, with the record's ``text`` already read (None: it is gone)."""
        ticket_id, secret = self._ticket(session)
        key = self.keys.ticket(ticket_id)
        if text is None:
            raise TokenError("the session's token record is gone (signed out, or expired)")
        body = self._open_text(key, text, secret)
        token = restore(body.get("token"))
        try:
            state = TokenState(body.get("st"))
        except ValueError:
            raise TokenError("the session's token record is malformed") from None
        stored = self._record(token, state, text)
        at = body.get("at")
        if isinstance(at, (int, float)) and time.time() - at > self.lifetime / 2:
            self.store.touch(key, self.lifetime)  # the session is in use: keep its record
        if stored[:4] != record[:4]:
            self._write_ticket(session, ticket_id, secret, stored, at)
        return token, stored

    def save(
        self,
        session: MutableMapping[str, Any],
        token: Token,
        state: TokenState = TokenState.OK,
        previous: Record | None = None,
        subject: str | None = None,
        sid: str | None = None,
    ) -> Record:
        """Write the record (compare-and-set on ``previous.box``) and the ticket.

        Without a ticket (a sign-in), a new one is made, indexed under ``subject`` (the user)
        and ``sid`` (the session at the provider) when given. RecordConflict when the record
        changed since ``previous`` was read: read it again and take what is there.
        """
        try:
            ticket_id, secret = self._ticket(session) if session.get(self.key) else (None, b"")
        except TokenError:
            ticket_id = None
        fresh = ticket_id is None
        if ticket_id is None:
            ticket_id = _b64(secrets.token_bytes(_ID_BYTES))
            secret = secrets.token_bytes(_SECRET_BYTES)
        key = self.keys.ticket(ticket_id)
        expected = None if fresh or previous is None or not previous.box else previous.box
        if expected is not None:
            current = self.store.read(key)
            if current != expected:
                # Written meanwhile (in a burst, every request that shared one refresh writes
                # its result, and the first one wins): the swap could only fail, so the record
                # is not opened and sealed for it; what is there now goes back to the caller.
                # A read that matches still goes through the swap.
                raise RecordConflict("the session's token record changed meanwhile", current)
        body: dict[str, Any] = {"v": 1, "token": token, "st": state.value, "at": time.time()}
        old: dict[str, Any] = {}
        if previous is not None and previous.box and not fresh:
            old = self._open_text(key, previous.box, secret)  # who it belongs to carries over
            body.update({k: old[k] for k in ("sub", "sid") if isinstance(old.get(k), str)})
        body.update({k: v for k, v in (("sub", subject), ("sid", sid)) if v is not None})
        text = self._seal(key, secret, body)
        if not self.store.swap(key, expected, text, self.lifetime):
            if fresh:  # a random 128-bit id already taken: practically never
                raise StoreError("a new token ticket collided with an existing one")
            raise RecordConflict(
                "the session's token record changed meanwhile", self.store.read(key)
            )
        if fresh:
            self._index_body(key, body)
        elif self.listener is not None and isinstance(body.get("sub"), str):
            before = old.get("token")
            if isinstance(before, dict) and before != token:
                self.listener.rotated(key, body["sub"], before, token)
        stored = self._record(token, state, text)
        self._write_ticket(session, ticket_id, secret, stored, body["at"])
        return stored

    def restore(
        self,
        session: MutableMapping[str, Any],
        token: Token,
        subject: str | None = None,
        sid: str | None = None,
    ) -> bool:
        """Write the record of the session's ticket from a durable copy, if it has none (the
        shared store lost it: a restart, an eviction, an expiry); whether this call wrote it."""
        ticket_id, secret = self._ticket(session)
        key = self.keys.ticket(ticket_id)
        body: dict[str, Any] = {"v": 1, "token": token, "st": TokenState.OK.value}
        body.update({"at": time.time(), "sub": subject, "sid": sid})
        body = {k: v for k, v in body.items() if v is not None}
        text = self._seal(key, secret, body)
        if not self.store.swap(key, None, text, self.lifetime):
            return False
        self._index_body(key, body)
        return True

    def session_for(self, ticket_id: str, secret: str) -> dict[str, Any]:
        """A session mapping holding a ticket known elsewhere (a stored grant's), for work done
        without a request. Its readable part is unknown: the first check reads the record."""
        ticket = {"v": FORMAT, "id": ticket_id, "k": secret, "exp": 0.0, "due": 0.0}
        return {self.key: {**ticket, "st": TokenState.OK.value}}

    def ticket(self, session: MutableMapping[str, Any]) -> tuple[str, str]:
        """The session ticket's id and secret (as text), to reopen its record elsewhere."""
        ticket_id, secret = self._ticket(session)
        return ticket_id, _b64(secret)

    def _index_body(self, key: str, body: dict[str, Any]) -> None:
        for name, index in (("sub", self.keys.subject), ("sid", self.keys.provider_session)):
            if isinstance(body.get(name), str):
                self._index(index(body[name]), key)

    def clear(self, session: MutableMapping[str, Any]) -> None:
        """Delete the record (the session's copies are dead at once) and the ticket."""
        if self.key not in session:
            return
        try:
            ticket_id, _secret = self._ticket(session)
        except TokenError:
            ticket_id = None
        del session[self.key]
        session.pop(self.user_key, None)
        mark_modified(session)
        if ticket_id is not None:
            key = self.keys.ticket(ticket_id)
            if self.listener is not None:
                self.listener.ending([key])
            self.store.forget(key)

    def logout_all(self, subject: str) -> int:
        """Delete every record of ``subject``; how many there were."""
        return self._end(self.keys.subject(subject))

    def logout_provider_session(self, sid: str) -> int:
        """Delete the records of one session at the provider (its ``sid``); how many."""
        return self._end(self.keys.provider_session(sid))

    def _end(self, index: str) -> int:
        text = self.store.read(index)
        keys = _keys(text)
        if self.listener is not None and keys:
            self.listener.ending(keys)
        for key in keys:
            self.store.forget(key)
        self.store.forget(index)
        return len(keys)

    # -- helpers -----------------------------------------------------------------------------

    def record_key(self, session: MutableMapping[str, Any]) -> str:
        """The store key of the session's record; TokenError without a valid ticket."""
        return self.keys.ticket(self._ticket(session)[0])

    def _sealer(self, secret: bytes) -> Sealer:
        sealer = self._sealers.get(secret)
        if sealer is None:
            sealer = Sealer([app + b"\x00" + secret for app in self.secrets], "ticket")
            if len(self._sealers) >= _SEALERS_KEPT:
                self._sealers.clear()
            self._sealers[secret] = sealer
        return sealer

    def _seal(self, key: str, secret: bytes, body: dict[str, Any]) -> str:
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        return self._sealer(secret).seal(data, key.encode("utf-8"))

    def _open_text(self, key: str, text: str, secret: bytes) -> dict[str, Any]:
        try:
            data, _current = self._sealer(secret).open(text, key.encode("utf-8"))
            body = json.loads(data)
        except (SealError, ValueError, RecursionError) as exc:
            raise TokenError(f"the session's token record does not open: {exc}") from None
        if not isinstance(body, dict) or body.get("v") != 1:
            raise TokenError("the session's token record is malformed")
        return body

    def _record(self, token: Token, state: TokenState, text: str) -> Record:
        return Record(expires_at(token), refresh_at(token, self.leeway), None, state, text)

    def _write_ticket(
        self,
        session: MutableMapping[str, Any],
        ticket_id: str,
        secret: bytes,
        record: Record,
        at: Any = None,
    ) -> None:
        """The ticket; ``at``: when the record was last written or renewed, if known."""
        session[self.key] = {
            "v": FORMAT,
            "id": ticket_id,
            "k": _b64(secret),
            "exp": record.exp,
            "due": record.due,
            "st": record.state.value,
            **({"at": at} if isinstance(at, (int, float)) else {}),
        }
        mark_modified(session)

    def _index(self, index: str, key: str) -> None:
        """Add ``key`` to an index of records (compare-and-set, retried against writers)."""
        for _ in range(_INDEX_TRIES):
            text = self.store.read(index)
            live = [k for k in _keys(text) if k != key]
            if len(live) >= _PRUNE_AT:  # drop the records that expired or were deleted
                live = [k for k in live if self.store.read(k) is not None]
            new = json.dumps([*live, key])
            if self.store.swap(index, text, new, self.lifetime):
                return
        raise StoreError("could not index the session's record (too many writers)")


def _keys(text: str | None) -> list[str]:
    if text is None:
        return []
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return []
    return [k for k in value if isinstance(k, str)] if isinstance(value, list) else []


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
