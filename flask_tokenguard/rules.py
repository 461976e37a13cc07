"""The per-request rules: what a request does with its token, and what it may answer.

Nothing here knows about Flask. :class:`TokenRules` works on a session mapping and on the
request's :class:`RequestState`, and returns a :class:`Verdict` (serve, unauthorized, or
unavailable) that the extension maps to a response. See "The per-request rules" in
docs/design.md.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .coordinator import Coordinator, OutcomeCallback
from .deadline import Deadline
from .errors import (
    ConfigurationError,
    InvalidGrant,
    OutcomeUnknown,
    ProviderError,
    RefreshError,
    StoreError,
    TokenError,
    TokenGuardError,
)
from .session import Record, RecordConflict, SessionTokens
from .tickets import TicketTokens
from .token import Token, TokenState, accept, is_due, is_expired

log = logging.getLogger("flask_tokenguard")

Session = MutableMapping[str, Any]
#: Where a session's token lives: in the session itself, or in the store behind a ticket.
TokenHolder = SessionTokens | TicketTokens


@dataclass(slots=True)
class RequestState:
    """What one request learned about its token (the extension keeps it on ``g``)."""

    record: Record | None = field(default=None, repr=False)
    token: Token | None = field(default=None, repr=False)
    #: the refresh token the request started with, once opened
    initial_refresh_token: str | None = field(default=None, repr=False)
    error: TokenGuardError | None = None
    refreshed: bool = False
    checked: bool = False
    #: the request passed ``token_required``: a token that fails to open later ends it
    protected: bool = False
    deadline: Deadline | None = field(default=None, repr=False)


class Decision(Enum):
    SERVE = "serve"
    UNAUTHORIZED = "unauthorized"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the request may answer; ``error`` says why it may not serve."""

    decision: Decision
    error: TokenGuardError | None = None


SERVE = Verdict(Decision.SERVE)


class TokenRules:
    """The decisions of one app: refresh when due, heal stale sessions, judge the request."""

    def __init__(self, tokens: TokenHolder, coordinator: Coordinator, wait_timeout: float):
        self.tokens = tokens
        self.coordinator = coordinator
        self.wait_timeout = wait_timeout

    # -- reading ---------------------------------------------------------------------------

    def check(
        self,
        session: Session,
        state: RequestState,
        *,
        force: bool = False,
        on_outcome: OutcomeCallback | None = None,
    ) -> RequestState:
        """Bring the session's token up to date, once per request.

        Fast path: a token that is not due costs two dictionary reads and no I/O. A due one
        is refreshed through the coordinator (shared with every request that needs it), and
        the session always reflects the outcome; only the response is left to :meth:`verdict`.
        """
        if state.checked:
            return state
        state.checked = True
        try:
            record = state.record = self.tokens.peek(session)
        except TokenError as exc:
            self._drop(session, state, exc)
            return state
        if record is None or not (force or is_due(record.due)):
            return state
        if record.state is TokenState.AMBIGUOUS:
            return state  # never presented again; the access token serves until expiry
        token = self.open(session, state)
        if token is None or state.record is None:
            return state
        if state.record.state is TokenState.AMBIGUOUS or not (force or is_due(state.record.due)):
            return state  # the record was brought up to date by another request of the session
        refresh_token = state.initial_refresh_token = token.get("refresh_token")
        if not refresh_token:
            return state  # nothing to refresh with; the verdict decides
        state.deadline = Deadline(self.wait_timeout)
        try:
            new, _called = self.coordinator.refresh(token, state.deadline, on_outcome)
        except InvalidGrant as exc:
            self._drop(session, state, exc)
        except OutcomeUnknown as exc:
            log.warning("refresh outcome unknown (%s): this refresh token is not used again", exc)
            self._keep(session, state, token, TokenState.AMBIGUOUS)
            state.error = exc
        except ProviderError as exc:
            log.error("the provider refused this client (%s): check the client settings", exc)
            state.error = exc
        except (RefreshError, StoreError) as exc:
            log.warning("refresh not done (%s); the token is kept", exc)
            state.error = exc
        else:
            # (A token signed out meanwhile came back as InvalidGrant, for every waiter.)
            self._keep(session, state, new)
            state.refreshed = True
        return state

    def open(self, session: Session, state: RequestState) -> Token | None:
        """The request's token, opened once; a record that does not open is dropped.

        A store that fails while the token is read leaves it in place, with ``state.error``.
        """
        if state.token is None and state.record is not None:
            try:
                state.token, state.record = self.tokens.open(session, state.record)
            except TokenError as exc:
                self._drop(session, state, exc)
            except StoreError as exc:
                log.warning("the token could not be read (%s)", exc)
                state.error = exc
        return state.token

    def verdict(self, session: Session, state: RequestState) -> Verdict:
        """Whether a protected view may run; a token that can never serve again is removed."""
        record = state.record
        error = state.error
        if record is None:
            return Verdict(Decision.UNAUTHORIZED, error)
        if not self.tokens.opens_cheaply and not self._still_there(session, state, record):
            # A record that does not open, or is gone from the store, is no token. (A sealed
            # token in the session is opened only when the view asks for it.)
            if isinstance(state.error, StoreError):
                return Verdict(Decision.UNAVAILABLE, state.error)
            return Verdict(Decision.UNAUTHORIZED, state.error)
        record = state.record or record
        expired = is_expired(record.exp)
        if record.state is TokenState.AMBIGUOUS:
            if expired:
                self._drop(session, state, error or OutcomeUnknown("sign-in required again"))
                return Verdict(Decision.UNAUTHORIZED, state.error)
            return SERVE
        if expired and isinstance(error, (RefreshError, StoreError)):
            return Verdict(Decision.UNAVAILABLE, error)
        if expired:
            # Nothing could refresh it (there is no refresh token): sign in again.
            self._drop(session, state, InvalidGrant("the access token expired"))
            return Verdict(Decision.UNAUTHORIZED, state.error)
        return SERVE

    def _still_there(self, session: Session, state: RequestState, record: Record) -> bool:
        """Whether the token record behind the session's ticket still exists.

        A token the ticket says is fine and not expired is only looked up (one read, nothing
        decrypted); one that is ambiguous or expired is opened (the record knows better).
        """
        if state.token is not None:
            return True
        tokens = self.tokens
        if (
            not isinstance(tokens, TicketTokens)
            or record.box
            or record.state is not TokenState.OK
            or is_expired(record.exp)
        ):
            return self.open(session, state) is not None
        try:
            found = tokens.present(session, record)
        except TokenError as exc:
            self._drop(session, state, exc)
            return False
        except StoreError as exc:
            log.warning("the token could not be read (%s)", exc)
            state.error = exc
            return False
        if found is None:
            gone = TokenError("the session's token record is gone (signed out, or expired)")
            self._drop(session, state, gone)
            return False
        state.record = found
        return True

    def refresh_now(
        self, session: Session, state: RequestState, on_outcome: OutcomeCallback | None = None
    ) -> Token | None:
        """Refresh whatever the expiry says; the new token, or None with ``state.error`` set."""
        state.checked, state.refreshed, state.error = False, False, None
        state.token = None  # opened again with the record the check reads (its write needs it)
        self.check(session, state, force=True, on_outcome=on_outcome)
        if state.refreshed:
            return state.token
        if state.error is None:
            record = state.record
            state.error = (
                InvalidGrant("there is no token to refresh")
                if record is None
                else OutcomeUnknown("this refresh token may have been used: sign in again")
                if record.state is TokenState.AMBIGUOUS
                else InvalidGrant("the token has no refresh token")
            )
        return None

    # -- writing ---------------------------------------------------------------------------

    def login(
        self,
        session: Session,
        state: RequestState,
        reply: Any,
        subject: str | None = None,
        sid: str | None = None,
    ) -> Token:
        """Make ``reply`` (a token from a sign-in) the session's token; raises TokenError.

        ``subject`` (the user's id at the provider) lets ``logout_all`` find the session, and
        ``sid`` (the session at the provider) a back-channel logout.
        """
        token = accept(reply)
        self.tokens.clear(session)  # a new sign-in starts a new record
        state.record = self.tokens.save(session, token, subject=subject, sid=sid)
        state.token = token
        state.error = None
        state.checked = True
        state.initial_refresh_token = token.get("refresh_token")
        return token

    def logout(self, session: Session, state: RequestState) -> Token | None:
        """Remove the token; a refresh still in flight elsewhere will not bring it back.

        Returns the token removed (to end the grant at the provider), if it opened.
        """
        try:
            record = self.tokens.peek(session)
        except TokenError:
            record = None
        if record != state.record:
            state.record, state.token = record, None
        token = self.open(session, state)
        current = token.get("refresh_token") if token is not None else None
        for refresh_token in {state.initial_refresh_token, current}:
            if refresh_token:
                self.coordinator.revoke(refresh_token)
        try:
            self.tokens.clear(session)
        except StoreError as exc:
            log.warning("the token record could not be deleted (%s); it expires on its own", exc)
        state.record = state.token = state.initial_refresh_token = None
        state.checked = True
        return token

    def needs_guard(self, state: RequestState) -> bool:
        """Whether :meth:`guard` must run for this response: only where the session carries
        the token, and only for a token inside its refresh window (now: a slow request may
        have started before it) or one this request refreshed (it may meet a logout)."""
        record = state.record
        return (
            self.tokens.guards_lost_updates
            and record is not None
            and (state.refreshed or is_due(record.due))
        )

    def guard(self, session: Session, state: RequestState) -> None:
        """The lost-update guard, run before the response goes out.

        Never let this response store a token older than the newest one known for it, nor
        restore one that was signed out meanwhile.
        """
        try:
            record = self.tokens.peek(session)
            if record is None or record.state is TokenState.AMBIGUOUS:
                return
            if record != state.record:
                state.record, state.token = record, None
            token = self.open(session, state)
        except TokenError:
            return  # the next request discards it, with a log line
        if token is None:
            return
        current = token.get("refresh_token")
        if not isinstance(current, str):
            return
        candidates = {current}
        if state.initial_refresh_token:
            candidates.add(state.initial_refresh_token)
        if any(self.coordinator.is_revoked(rt) for rt in candidates):
            self.tokens.clear(session)
            return
        newest = self.coordinator.newest(current, token)
        if newest is not None and newest.get("refresh_token") != current:
            self.tokens.save(session, newest, previous=state.record)

    def _keep(
        self,
        session: Session,
        state: RequestState,
        token: Token,
        mark: TokenState = TokenState.OK,
    ) -> None:
        try:
            state.record = self.tokens.save(session, token, state=mark, previous=state.record)
            state.token = token
        except RecordConflict as conflict:
            # Another request of this session wrote first: what it wrote is the newest (the
            # conflict carries it: no second read).
            state.token, state.record = None, self.tokens.peek(session)
            if state.record is not None and isinstance(self.tokens, TicketTokens):
                try:
                    state.token, state.record = self.tokens.open_text(
                        session, state.record, conflict.current
                    )
                except TokenError as exc:
                    self._drop(session, state, exc)
        except StoreError as exc:
            log.warning("the refreshed token could not be stored (%s)", exc)
            state.error = exc

    def logout_all(self, subject: str) -> int:
        """End every session of ``subject``; how many there were (store storage only)."""
        return self._tickets().logout_all(subject)

    def logout_provider_session(self, sid: str) -> int:
        """End the sessions signed in through one session at the provider (store storage)."""
        return self._tickets().logout_provider_session(sid)

    def _tickets(self) -> TicketTokens:
        if not isinstance(self.tokens, TicketTokens):
            raise ConfigurationError(
                "ending sessions from elsewhere needs TOKENGUARD_TOKEN_STORAGE = 'store': with"
                " 'session' the tokens travel in the sessions themselves"
            )
        return self.tokens

    def _drop(self, session: Session, state: RequestState, error: TokenGuardError) -> None:
        if isinstance(error, TokenError):
            log.warning("discarding the session's token: %s", error)
        try:
            self.tokens.clear(session)
        except StoreError as exc:
            log.warning("the token record could not be deleted (%s); it expires on its own", exc)
        state.error = error
        state.record = state.token = None
