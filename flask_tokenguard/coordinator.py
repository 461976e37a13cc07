"""The refresh protocol, across threads, processes and hosts.

For one refresh token, per process, a single flight elects a leader thread. The leader:

1. looks for a published outcome under the token's key (a late or stale request adopts the
   successor, following chains RT0 -> RT1 -> RT2, without calling the provider);
2. claims the token in the shared store (atomic, with an expiry);
3. the winner looks once more, marks the claim "sent" (the mark outlives the claim), calls
   the provider under a total deadline, and publishes the outcome under the old token's key;
4. losers wait for that outcome, bounded by their deadline, and adopt it; a claim that
   vanishes unsent is taken over, one that vanishes sent is an ambiguous outcome.

The provider call is a :class:`Grant`: a refresh (:meth:`Coordinator.refresh`), or any other
request to the token endpoint that must happen once everywhere, such as the app's own
client-credentials token (:meth:`Coordinator.run`).

Nothing here knows about Flask.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import DEFAULTS, TRANSIENT_TTL_CAP, Settings
from .config import ConfigKeys as K
from .deadline import Deadline
from .errors import (
    InvalidGrant,
    Outcome,
    OutcomeUnknown,
    ProviderError,
    ProviderUnavailable,
    RefreshError,
    RefreshTimeout,
    StoreError,
    TokenError,
)
from .keys import KeyNames
from .provider import RefreshClient
from .records import RecordCodec
from .singleflight import FlightTimeout, SingleFlight
from .stores.base import Store
from .stores.memory import MemoryStore
from .token import Token, restore

log = logging.getLogger("flask_tokenguard")

#: Called by the thread that called the provider: (new token, None) or (None, error).
OutcomeCallback = Callable[[Token | None, RefreshError | None], None]


class Vetter(Protocol):
    """Checks a refresh's outcome before anyone adopts it (the ID token checks, for one)."""

    def vet(self, old: Token, new: Token) -> Token:
        """Run by the leader before publishing: the token to publish, or raise InvalidGrant."""
        ...

    def check_adopted(self, old: Token, new: Token) -> None:
        """Run on a result adopted from the store: raise InvalidGrant if it is not ``old``'s."""
        ...


_MAX_CHAIN = 32
#: The least time left on a deadline for which a leader still sends a refresh.
_MIN_SEND_BUDGET = 0.5
#: The longest time between a leader's looks at the store's identity while it calls the
#: provider: with the identity cached for 0.05 s and a few store round trips, a leader
#: re-asserts its claim well inside the shortest TOKENGUARD_RESTART_HOLD (0.5 s; 2 s default).
_REASSERT_EVERY = 0.25


@dataclass(frozen=True)
class Policy:
    """The timings of the protocol (see the ``TOKENGUARD_*`` keys of the same names)."""

    provider_timeout: float = DEFAULTS[K.PROVIDER_TIMEOUT]
    claim_ttl: float = DEFAULTS[K.CLAIM_TTL]
    #: how long claims count as held after a store restart (at most ``claim_ttl``)
    restart_hold: float = DEFAULTS[K.RESTART_HOLD]
    result_ttl: float = DEFAULTS[K.RESULT_TTL]
    failure_ttl: float = DEFAULTS[K.FAILURE_TTL]
    retry_after: float = DEFAULTS[K.RETRY_AFTER]
    provider_grace: float = DEFAULTS[K.PROVIDER_GRACE]
    store_fallback: str = DEFAULTS[K.STORE_FALLBACK]
    #: how long a logout's tombstone lasts: at least as long as a session can
    revoked_ttl: float = DEFAULTS[K.RESULT_TTL]

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            provider_timeout=settings.provider_timeout,
            claim_ttl=settings.claim_ttl,
            restart_hold=settings.restart_hold,
            result_ttl=settings.result_ttl,
            failure_ttl=settings.failure_ttl,
            retry_after=settings.retry_after,
            provider_grace=settings.provider_grace,
            store_fallback=settings.store_fallback,
            revoked_ttl=settings.result_ttl,
        )

    @property
    def hold_after_restart(self) -> float:
        """Seconds claims count as held after the store restarted: leaders re-assert theirs
        within it (every :attr:`reassert_every` seconds they look at the store's identity)."""
        return min(self.restart_hold, self.claim_ttl)

    @property
    def reassert_every(self) -> float:
        """Seconds between a leader's looks at the store's identity while its call runs."""
        return min(_REASSERT_EVERY, self.hold_after_restart / 4)

    def publish_ttl(self, error: RefreshError) -> float:
        """How long a failure record stays in the store.

        An ambiguous one as long as a result would: nobody may present that token again.
        A transient one as long too, but it holds only for :meth:`hold` seconds: the record
        tells a later leader that the "sent" mark beside it is settled (nothing was consumed).
        """
        if isinstance(error, (OutcomeUnknown, ProviderUnavailable, ProviderError)):
            return self.result_ttl
        return self.failure_ttl

    def hold(self, error: RefreshError) -> float | None:
        """Seconds a retryable failure is remembered: its Retry-After, capped at a few seconds."""
        if isinstance(error, (ProviderUnavailable, ProviderError)):
            return max(0.5, min(error.retry_after or self.retry_after, TRANSIENT_TTL_CAP))
        return None


@dataclass(frozen=True)
class Grant:
    """One request to the token endpoint that the protocol makes happen once everywhere.

    ``key`` names the flight, the claim and the published outcome (it never reaches the store
    in clear: names are digests); ``send(timeout)`` makes the call and returns the token or
    raises a classified :class:`RefreshError`.
    """

    key: str
    send: Callable[[float], Token] = field(repr=False)
    #: follow published successors through ``refresh_token`` (a rotating refresh chain)
    follow: bool = True
    #: the call consumes nothing (no refresh token is rotated), so an ambiguous outcome is
    #: harmless: it is published as a transient failure, held briefly, then tried again
    idempotent: bool = False

    def settle(self, error: RefreshError) -> RefreshError:
        """The failure as published: for an idempotent grant, an ambiguous outcome is transient
        and ``invalid_grant`` is the client's configuration (there is no user to sign in)."""
        if self.idempotent and isinstance(error, OutcomeUnknown):
            return ProviderUnavailable(
                f"{error.message}; nothing is consumed by this grant, so it is tried again",
                status=error.status,
                error=error.error,
            )
        if self.idempotent and isinstance(error, InvalidGrant):
            return ProviderError(error.message, status=error.status, error=error.error)
        return error


@dataclass
class _Claimed:
    """A leader's claim and "sent" mark, as it re-asserts them on a store that restarted."""

    claim_key: str
    owner: str
    #: the store's identity, read before the claim was taken: another one means a restart
    identity: str
    #: when the claim and the mark expire (``time.monotonic()``)
    claim_until: float
    mark_until: float


class _ProviderCall:
    """One call to the token endpoint, run in its own thread so the leader can stop waiting.

    If the leader's deadline passes first, the outcome is published as ambiguous; should the
    call later succeed after all, its result replaces that record, so later requests heal.
    """

    def __init__(
        self, coordinator: Coordinator, store: Store, grant: Grant, *, defer: bool = False
    ) -> None:
        self.coordinator = coordinator
        self.store = store
        self.grant = grant
        #: leave an ambiguous outcome unpublished: the leader may retry inside the grace window
        self.defer = defer
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.outcome: Token | RefreshError | None = None
        self.abandoned = False

    def run(self) -> None:
        outcome: Token | RefreshError
        try:
            # Each read may take the provider timeout even when the leader's own deadline is
            # shorter: an answer that lands after the leader gave up is still published.
            timeout = self.coordinator.policy.provider_timeout
            outcome = self.grant.send(timeout)
        except RefreshError as exc:
            outcome = self.grant.settle(exc)
        except Exception as exc:  # never let a bug leave waiters hanging
            log.exception("refresh failed unexpectedly")
            outcome = self.grant.settle(
                OutcomeUnknown(f"refresh failed unexpectedly ({type(exc).__name__})")
            )
        with self.lock:
            if self.abandoned and isinstance(outcome, RefreshError):
                pass  # the ambiguous record the leader published stays
            elif self.defer and isinstance(outcome, OutcomeUnknown) and not self.abandoned:
                pass  # the leader decides: retry inside the provider's grace, or publish
            else:
                outcome = self.coordinator._publish(self.store, self.grant.key, outcome)
                if self.abandoned:
                    log.info("a refresh that outlived its deadline succeeded; result published")
            self.outcome = outcome
        self.done.set()


class Coordinator:
    """Exactly one provider refresh per refresh token, wherever the requests run."""

    def __init__(
        self,
        client: RefreshClient,
        store: Store,
        keys: KeyNames,
        codec: RecordCodec,
        policy: Policy | None = None,
        vetter: Vetter | None = None,
    ) -> None:
        self.client = client
        self.vetter = vetter
        self.store = store
        self.keys = keys
        self.codec = codec
        self.policy = policy or Policy()
        self.flights: SingleFlight[tuple[Token, bool]] = SingleFlight()
        self._local = MemoryStore()  # used only with TOKENGUARD_STORE_FALLBACK = "process"
        self._outage = False
        self._identity: str | None = None
        self._uncertain_until = 0.0
        self._state_lock = threading.Lock()

    # -- public -----------------------------------------------------------------------------

    def refresh(
        self, token: Token, deadline: Deadline, on_outcome: OutcomeCallback | None = None
    ) -> tuple[Token, bool]:
        """The newest token for ``token``, and whether this call refreshed at the provider.

        Raises a :class:`RefreshError` subclass (the same one for every request that shared
        the refresh) or :class:`StoreError` when the store fails and the fallback is
        closed.
        """
        refresh_token = token.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            raise InvalidGrant("the token has no refresh token")
        vetter = self.vetter

        def send(timeout: float) -> Token:
            new = self.client.refresh(refresh_token, timeout)
            # Checked in the leader, before the outcome is published: every waiter, in every
            # process, gets the same verdict (an ID token naming another user fails for all).
            return new if vetter is None else vetter.vet(token, new)

        new, called = self.run(Grant(refresh_token, send), deadline, on_outcome)
        if not called and vetter is not None:
            vetter.check_adopted(token, new)
        return new, called

    def run(
        self, grant: Grant, deadline: Deadline, on_outcome: OutcomeCallback | None = None
    ) -> tuple[Token, bool]:
        """The outcome of ``grant``, called once across threads, processes and hosts.

        The token, and whether this call made the request; raises like :meth:`refresh`.
        """
        try:
            (new, called), led = self.flights.run(
                self.keys.flight(grant.key),
                lambda: self._lead(grant, deadline, on_outcome),
                deadline.remaining(),
            )
        except FlightTimeout:
            raise RefreshTimeout(
                "timed out waiting for a refresh in progress", retry_after=self.policy.retry_after
            ) from None
        return new, called and led

    def newest(self, refresh_token: str, previous: Token | None = None) -> Token | None:
        """The newest published successor of ``refresh_token``, if any (no provider call).

        Failures and store errors count as "none known": this serves the lost-update guard,
        which must never break a response. With ``previous`` (the token being healed), a
        successor must also pass the vetter's adoption check (the same user).
        """
        for store in self._stores():
            try:
                found = self._adopt(store, refresh_token)
                if found is not None and previous is not None and self.vetter is not None:
                    self.vetter.check_adopted(previous, found)
            except (RefreshError, StoreError):
                continue
            if found is not None:
                return found
        return None

    def revoke(self, refresh_token: str) -> None:
        """Leave a tombstone so a refresh that finishes later cannot bring the token back."""
        for store in self._stores():
            try:
                key = self.keys.revoked(refresh_token)
                store.publish(
                    key,
                    self.codec.encode(key, {"outcome": Outcome.REVOKED.value}),
                    max(self.policy.revoked_ttl, self.policy.result_ttl),
                )
            except StoreError:
                log.warning("could not record a logout in the shared store")

    def is_revoked(self, refresh_token: str) -> bool:
        for store in self._stores():
            try:
                key = self.keys.revoked(refresh_token)
                text = store.read(key)
            except StoreError:
                continue
            if text is not None and self.codec.decode(key, text) is not None:
                return True
        return False

    # -- the protocol ----------------------------------------------------------------------

    def _revoked_in(self, store: Store, refresh_token: str) -> bool:
        """Whether a logout's tombstone lies in ``store`` for ``refresh_token``."""
        key = self.keys.revoked(refresh_token)
        text = store.read(key)
        return text is not None and self.codec.decode(key, text) is not None

    def _revoked_quietly(self, store: Store, refresh_token: str) -> bool:
        try:
            return self._revoked_in(store, refresh_token)
        except StoreError:
            return False

    def _stores(self) -> list[Store]:
        return [self.store, self._local] if self._outage else [self.store]

    def _lead(
        self, grant: Grant, deadline: Deadline, on_outcome: OutcomeCallback | None
    ) -> tuple[Token, bool]:
        try:
            result = self._protocol(self.store, grant, deadline, on_outcome)
        except StoreError:
            if self.policy.store_fallback != "process":
                raise
            with self._state_lock:
                first = not self._outage
                self._outage = True
            if first:
                log.warning(
                    "shared store unreachable: falling back to single flight in this process"
                    " (TOKENGUARD_STORE_FALLBACK=process); other processes are not coordinated"
                )
            return self._protocol(self._local, grant, deadline, on_outcome)
        if self._outage:
            with self._state_lock:
                self._outage = False
            log.warning("shared store reachable again")
        return result

    def _protocol(
        self,
        store: Store,
        grant: Grant,
        deadline: Deadline,
        on_outcome: OutcomeCallback | None,
    ) -> tuple[Token, bool]:
        refresh_token = grant.key
        claim_key = self.keys.claim(refresh_token)
        if grant.follow and self._revoked_in(store, refresh_token):
            # Signed out: checked before any claim or provider call.
            raise InvalidGrant("signed out: this refresh token is not used again")
        found = self._adopt(store, refresh_token, follow=grant.follow)
        if found is not None:
            return found, False
        while True:
            if deadline.remaining() < _MIN_SEND_BUDGET:
                raise RefreshTimeout("no time left to refresh", retry_after=self.policy.retry_after)
            owner = self._owner()
            claimed_at = time.monotonic()
            won = False
            identity: str | None = None
            if not self._claims_uncertain(store):
                identity = store.identity() if store is self.store else None  # (cached)
                won = store.claim(claim_key, owner, self.policy.claim_ttl)
            if won:
                try:
                    found = self._adopt(store, refresh_token, follow=grant.follow)
                    if found is not None:
                        return found, False
                    if (
                        store.read_claim(claim_key).sent_by is not None
                        and self._record(store, refresh_token) is None
                    ):
                        raise self._fail(
                            store,
                            grant,
                            OutcomeUnknown("an earlier refresh with this token never finished"),
                        )
                    marked_at = time.monotonic()
                    if not self._mark_sent(store, claim_key, owner):
                        continue  # the claim expired under us: start over
                    claimed = None
                    if identity is not None and not grant.idempotent:  # watched for restarts
                        claimed = _Claimed(
                            claim_key,
                            owner,
                            identity,
                            claim_until=claimed_at + self.policy.claim_ttl,
                            mark_until=marked_at + self.policy.result_ttl,
                        )
                    return self._call(store, grant, deadline, on_outcome, claimed), True
                finally:
                    self._release(store, claim_key, owner)
            found = self._await(store, grant, claim_key, deadline)
            if found is not None:
                return found, False
            # The claim vanished unsent and without a result: its owner died. Take over.

    def _await(
        self, store: Store, grant: Grant, claim_key: str, deadline: Deadline
    ) -> Token | None:
        refresh_token = grant.key
        result_key = self.keys.result(refresh_token)
        idle = 0.005
        while True:
            remaining = deadline.remaining()
            if remaining <= 0:
                raise RefreshTimeout(
                    "timed out waiting for another process's refresh",
                    retry_after=self.policy.retry_after,
                )
            wait = min(remaining, 0.5)
            hold_left = self._uncertain_until - time.monotonic()
            if 0 < hold_left < wait:
                wait = hold_left  # look at the claim again as soon as a restart's hold ends
            text = store.wait_for(result_key, wait)
            if text is not None:
                found = self._adopt(store, refresh_token, text, follow=grant.follow)
                if found is not None:
                    return found
                # A settled retryable failure sits there: poll gently until it is replaced.
                time.sleep(min(idle, deadline.remaining()))
                idle = min(idle * 2, 0.1)
            info = store.read_claim(claim_key)
            if info.owner is not None or self._claims_uncertain(store):
                continue
            found = self._adopt(store, refresh_token, follow=grant.follow)
            if found is not None:
                return found
            if info.sent_by is not None and self._record(store, refresh_token) is None:
                raise self._fail(
                    store,
                    grant,
                    OutcomeUnknown("the process that sent this refresh ended without a result"),
                )
            return None

    def _call(
        self,
        store: Store,
        grant: Grant,
        deadline: Deadline,
        on_outcome: OutcomeCallback | None,
        claimed: _Claimed | None = None,
    ) -> Token:
        started = time.monotonic()
        grace = self.policy.provider_grace
        attempts = 2 if grace > 0 else 1
        for attempt in range(attempts):
            budget = deadline.cap(self.policy.provider_timeout)
            may_retry = attempt + 1 < attempts
            call = _ProviderCall(self, store, grant, defer=may_retry)
            threading.Thread(target=call.run, name="tokenguard-refresh", daemon=True).start()
            if claimed is not None:
                threading.Thread(
                    target=self._watch_restarts,
                    args=(store, claimed, call),
                    name="tokenguard-reassert",
                    daemon=True,
                ).start()
            call.done.wait(budget)
            with call.lock:
                if call.outcome is None:
                    call.abandoned = True
                    error = grant.settle(
                        OutcomeUnknown(f"the token endpoint did not answer within {budget:.1f}s")
                    )
                    self._publish(store, grant.key, error)
                    outcome: Token | RefreshError = error
                    break  # never resend while the first request may still be in flight
                outcome = call.outcome
            if not (may_retry and isinstance(outcome, OutcomeUnknown)):
                break
            if time.monotonic() - started < grace and deadline.remaining() >= _MIN_SEND_BUDGET:
                log.warning(
                    "refresh outcome unknown; retrying once inside the provider's grace"
                    " window (TOKENGUARD_PROVIDER_GRACE=%g)",
                    grace,
                )
                continue
            outcome = self._publish(store, grant.key, outcome)
            break
        if on_outcome is not None:
            try:
                if isinstance(outcome, RefreshError):
                    on_outcome(None, outcome)
                else:
                    on_outcome(outcome, None)
            except Exception:
                log.exception("a token_refreshed/token_refresh_failed receiver failed")
        if isinstance(outcome, RefreshError):
            raise outcome
        return outcome

    # -- records -----------------------------------------------------------------------------

    def _adopt(
        self, store: Store, refresh_token: str, text: str | None = None, *, follow: bool = True
    ) -> Token | None:
        """Follow published successors from ``refresh_token`` to the newest; raise a failure.

        ``text``: the entry under ``refresh_token``'s result key, when the caller just read it.
        ``follow``: False for a grant whose result has no successors to chase.
        """
        newest: Token | None = None
        current = refresh_token
        for _ in range(_MAX_CHAIN):
            record = self._record(store, current, text)
            text = None
            if record is None:
                break
            if record["outcome"] != Outcome.OK:
                until = record.get("until")
                if isinstance(until, (int, float)) and time.time() >= until:
                    break  # a retryable failure whose hold has passed: try again
                if newest is None:
                    raise RefreshError.from_record(record)
                break  # the successor's own refresh failed; it is still the newest token
            try:
                newest = restore(record.get("token"))
            except TokenError:
                log.warning("ignoring a published result without a usable token")
                break
            following = newest.get("refresh_token")
            if not follow or not isinstance(following, str) or following == current:
                break  # a provider that does not rotate
            if self._revoked_in(store, following):
                raise InvalidGrant("signed out: the successor of this token was logged out")
            current = following
        return newest

    def _publish(
        self, store: Store, refresh_token: str, outcome: Token | RefreshError
    ) -> Token | RefreshError:
        """Publish ``outcome``; the outcome as published (a success for a token signed out
        meanwhile is published, and returned, as ``InvalidGrant``: every waiter, here or in
        another process, learns the same)."""
        key = self.keys.result(refresh_token)
        if isinstance(outcome, RefreshError):
            record, ttl = self.codec.failure(outcome), self.policy.publish_ttl(outcome)
            hold = self.policy.hold(outcome)
            if hold is not None:
                record["until"] = record["at"] + hold
        elif self._revoked_quietly(store, refresh_token):
            # Signed out while the call was in flight: no success is ever published for it.
            log.info("a refresh finished after its session signed out; not published")
            outcome = InvalidGrant("signed out during the refresh")
            record, ttl = self.codec.failure(outcome), self.policy.publish_ttl(outcome)
        else:
            record, ttl = self.codec.success(outcome), self.policy.result_ttl
        try:
            store.publish(key, self.codec.encode(key, record), ttl)
        except StoreError:
            # The provider has answered: our own requests still get the outcome.
            log.error("could not publish a refresh outcome: the shared store is unreachable")
        return outcome

    def _record(
        self, store: Store, refresh_token: str, text: str | None = None
    ) -> dict[str, Any] | None:
        key = self.keys.result(refresh_token)
        if text is None:
            text = store.read(key)
        return self.codec.decode(key, text) if text is not None else None

    def _fail(self, store: Store, grant: Grant, error: RefreshError) -> RefreshError:
        error = grant.settle(error)
        self._publish(store, grant.key, error)
        return error

    def _mark_sent(self, store: Store, claim_key: str, owner: str) -> bool:
        """Mark the claim "sent"; an answer lost on the way is settled by reading the mark back
        (else a mark that did land would later make this token look ambiguous)."""
        try:
            return store.mark_sent(claim_key, owner, self.policy.result_ttl)
        except StoreError:
            info = store.read_claim(claim_key)  # still failing: the outage propagates
            return info.owner == owner and info.sent_by == owner

    def _watch_restarts(self, store: Store, claimed: _Claimed, call: _ProviderCall) -> None:
        """While ``call`` runs, put its claim and "sent" mark back on a store that restarted.

        A store that restarts empty (or fails over) forgets both. Other processes hold off
        claiming for :attr:`Policy.hold_after_restart` seconds after the restart; a leader looks
        at the store's identity every :attr:`Policy.reassert_every` seconds, well inside that
        time, and re-asserts (same owner, the time each had left), so nobody presents the token
        beside this call.
        """
        while not call.done.wait(self.policy.reassert_every):
            try:
                identity = store.identity()
            except StoreError:
                continue  # down, or coming back: look again
            if identity is None or identity == claimed.identity:
                continue
            with call.lock:
                if call.outcome is not None:
                    return  # answered: its outcome is published (or the leader decides)
                try:
                    self._reassert(store, claimed, held=not call.abandoned)
                except StoreError:
                    log.warning("could not re-assert a claim on the restarted store; retrying")
                    continue
            claimed.identity = identity

    def _reassert(self, store: Store, claimed: _Claimed, *, held: bool) -> None:
        """Claim and mark "sent" again, on a store that forgot both.

        ``held``: the leader still waits for the call, and keeps the claim for the time it had
        left; otherwise it gave up waiting (and released its claim): the claim is taken just
        long enough to set the mark, which tells a later leader the outcome is unknown.
        """
        now = time.monotonic()
        ttl = claimed.claim_until - now if held else 0.0
        brief = ttl <= 0
        if brief:
            ttl = _REASSERT_EVERY * 4
        if not store.claim(claimed.claim_key, claimed.owner, ttl):
            if store.read_claim(claimed.claim_key).owner != claimed.owner:
                log.error(
                    "the shared store restarted and another process claimed a refresh token"
                    " before its leader re-asserted the claim: it may be presented twice"
                )
                return
        marked = store.mark_sent(
            claimed.claim_key, claimed.owner, max(claimed.mark_until - now, 1.0)
        )
        if brief:
            self._release(store, claimed.claim_key, claimed.owner)
        if marked:
            log.warning("the shared store restarted: a refresh in flight re-asserted its claim")

    def _release(self, store: Store, claim_key: str, owner: str) -> None:
        try:
            store.release(claim_key, owner)
        except StoreError:
            log.warning("could not release a claim; it expires on its own")

    def _owner(self) -> str:
        return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:16]}"

    def _claims_uncertain(self, store: Store) -> bool:
        """Whether the store may have forgotten claims that are still held.

        After a restart (a server younger than the hold) or a failover (the server's identity
        changed), a claim taken now could run beside one taken before, until that claim's
        leader re-asserts it (see :meth:`_watch_restarts`): for
        :attr:`Policy.hold_after_restart` seconds (TOKENGUARD_RESTART_HOLD, at most one claim
        ttl) claims count as held and this process waits for results.
        """
        if store is not self.store:
            return False
        hold = self.policy.hold_after_restart
        uptime = store.uptime()
        identity = store.identity()
        now = time.monotonic()
        with self._state_lock:
            if identity is None:  # restarts are noticed by the uptime alone, if at all
                if uptime is not None and uptime < hold:
                    self._uncertain_until = max(self._uncertain_until, now + hold - uptime)
            elif identity != self._identity:
                # Counted once per server, from when this process first sees it: the uptime
                # is in whole seconds, and counting it again on every look would stretch the
                # hold by up to one.
                if self._identity is not None:
                    log.warning(
                        "the shared store restarted or failed over; claims count as held for %gs",
                        hold,
                    )
                    self._uncertain_until = max(self._uncertain_until, now + hold)
                elif uptime is not None and uptime < hold:
                    self._uncertain_until = max(self._uncertain_until, now + hold - uptime)
                self._identity = identity
            return now < self._uncertain_until
