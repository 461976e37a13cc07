"""A user's token outside a request: the grant a sign-in leaves for background jobs.

With ``TOKENGUARD_OFFLINE_GRANTS`` a sign-in that names its subject also writes a row to the
durable grant store: the token, and the link to the session's record in the shared store (the
ticket's id and secret). :meth:`OfflineGrants.token_for` opens that record exactly as a request
of the session would, through the same rules and the same coordinator, so a job and the user's
browsers never both present one refresh token, and whichever refreshes, the others read the
result from the record without calling the provider.

The record in the shared store is the truth; the row is its durable copy, advanced along the
rotation chain by the writer that won each rotation (one SQL write per rotation), repaired by
the next job that sees it behind, and used to write the record back when the shared store lost
it. A logout deletes the row before the record, so a job cannot bring a signed-out session
back. See "Background jobs" in docs/design.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from .coordinator import OutcomeCallback
from .errors import InvalidGrant, StoreError, TokenError
from .rules import Decision, RequestState, TokenRules
from .tickets import TicketTokens
from .token import Token

if TYPE_CHECKING:
    from .grants import GrantStore, StoredGrant

log = logging.getLogger("flask_tokenguard")


class OfflineGrants:
    """The durable grants of signed-in sessions, and tokens for jobs from them."""

    def __init__(self, rules: TokenRules, grant_store: Callable[[], GrantStore]) -> None:
        if not isinstance(rules.tokens, TicketTokens):
            raise TypeError("offline grants need the tokens kept in the store")
        self.rules = rules
        self.tokens: TicketTokens = rules.tokens
        self._grant_store = grant_store
        self.tokens.listener = self

    # -- sign-in ----------------------------------------------------------------------------

    def record(
        self, session: MutableMapping[str, Any], token: Token, subject: str, sid: str | None
    ) -> str:
        """Write the grant of a session that just signed in; its id."""
        from .grants import GrantLink

        ticket_id, secret = self.tokens.ticket(session)
        grant_id = self.tokens.keys.grant(self.tokens.record_key(session))
        return self._grant_store().put(
            subject, token, grant_id=grant_id, link=GrantLink(ticket_id, secret, sid)
        )

    # -- the record listener ------------------------------------------------------------------

    def rotated(self, key: str, subject: str, previous: Token, token: Token) -> None:
        """Advance the durable copy with the rotation this writer won."""
        try:
            self._grant_store().advance(
                self.tokens.keys.grant(key), previous.get("refresh_token"), token
            )
        except Exception as exc:  # the request goes on; the next job repairs it
            log.warning(
                "the durable grant could not be brought up to date (%s); the next job will",
                type(exc).__name__,
            )

    def ending(self, keys: Sequence[str]) -> None:
        """Delete the rows of records about to be deleted (before them: no job restores one)."""
        try:
            store = self._grant_store()
            for key in keys:
                store.delete(self.tokens.keys.grant(key))
        except Exception as exc:  # the logout itself goes on
            log.error(
                "a signed-out session's durable grant could not be deleted (%s): revoke it with"
                " 'flask tokenguard revoke'",
                type(exc).__name__,
            )

    def current(self, grant: StoredGrant) -> Token | None:
        """The token in the grant's record now, not refreshed (it may be ahead of the row);
        None when the grant has no record or it does not open."""
        if grant.link is None:
            return None
        session = self.tokens.session_for(grant.link.ticket_id, grant.link.secret)
        try:
            record = self.tokens.peek(session)
            return None if record is None else self.tokens.open(session, record)[0]
        except (TokenError, StoreError):
            return None

    # -- jobs -------------------------------------------------------------------------------

    def token_for(self, subject: str, on_outcome: OutcomeCallback | None = None) -> Token:
        """A fresh token of ``subject``, from their most recently used grant.

        A grant that can never serve again (refused by the provider, signed out) is deleted
        and the next one is tried; InvalidGrant when none is left (the user must sign in
        again). A provider or store that fails now raises its RefreshError or StoreError.
        """
        grants = sorted(self._grant_store().list(subject), key=lambda g: g.updated_at, reverse=True)
        for grant in grants:
            if grant.link is None:
                continue  # stored by hand, not signed in: nothing to share it with
            token = self._use(grant, on_outcome)
            if token is not None:
                return token
        raise InvalidGrant("no usable grant for this subject: they must sign in again")

    def _use(self, grant: StoredGrant, on_outcome: OutcomeCallback | None) -> Token | None:
        """The grant's token, fresh; None when the grant is dead (and now deleted)."""
        assert grant.link is not None
        session = self.tokens.session_for(grant.link.ticket_id, grant.link.secret)
        key = self.tokens.record_key(session)
        if self.tokens.store.read(key) is None and not self._bring_back(session, grant, key):
            return None
        state = RequestState()
        self.rules.check(session, state, on_outcome=on_outcome)
        verdict = self.rules.verdict(session, state)
        if verdict.decision is Decision.UNAVAILABLE:
            assert verdict.error is not None
            raise verdict.error
        if verdict.decision is Decision.UNAUTHORIZED:
            log.warning("a stored grant can no longer be used (%s); deleted", verdict.error)
            self._grant_store().delete(grant.grant_id)  # (already, where the record was there)
            return None
        token = self.rules.open(session, state)
        if token is None:
            if isinstance(state.error, StoreError):
                raise state.error
            return None
        if token.get("refresh_token") != grant.token.get("refresh_token"):
            # The row is behind (its writer died before advancing it): repair it.
            self.rotated(key, grant.subject, grant.token, token)
        return token

    def _bring_back(self, session: dict[str, Any], grant: StoredGrant, key: str) -> bool:
        """Write the record back from the row; False when the grant must not be used."""
        assert grant.link is not None
        refresh_token = grant.token.get("refresh_token")
        if isinstance(refresh_token, str) and self.rules.coordinator.is_revoked(refresh_token):
            self._grant_store().delete(grant.grant_id)  # signed out; its row outlived it
            return False
        try:
            self.tokens.restore(session, grant.token, grant.subject, grant.link.sid)
        except TokenError as exc:
            log.warning("a stored grant could not be brought back (%s)", exc)
            return False
        if self._grant_store().get(grant.grant_id) is None:
            # Signed out while it was brought back: the logout deleted the row first, so its
            # deletion of the record may have come before this write. Undo it.
            self.tokens.store.forget(key)
            return False
        log.info("a session's token record was brought back from its durable grant")
        return True
