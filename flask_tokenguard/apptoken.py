"""The app's own token (client-credentials grant), shared by every thread, worker and host.

One token per normalised scope is kept sealed in the shared store (under a name derived from
the client id and the scope, never a secret) until it nears expiry, by the same leeway rule as
a user's token (:func:`~flask_tokenguard.token.refresh_at`). Each process also keeps it in
memory, so a token that is not due costs no I/O.

A due, missing or refused (401) token is fetched through the coordinator's claim-and-publish
protocol, keyed by the access token that was seen (or none): everyone who saw the same token
shares one request to the token endpoint, and late arrivals adopt its published result.

Failures are classified like a refresh's. Nothing is rotated by this grant, so an ambiguous
outcome is harmless: it is published as a transient failure, every waiter of that round gets
it at once, and a call after its short hold (the ``Retry-After``, at most a few seconds)
fetches again. An ``invalid_grant`` here is a configuration error: there is no user to sign in.

A token refused less than ``min_renew_interval`` seconds after it was fetched is not replaced:
an API that refuses every token (a wrong audience or scope) would otherwise cost one token
request per call. The caller gets the 401, and a warning names the likely cause.

Nothing here knows about Flask.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable

from .coordinator import Coordinator, Grant
from .deadline import Deadline
from .errors import ConfigurationError, StoreError, TokenError
from .keys import KeyNames
from .provider import RefreshClient
from .records import RecordCodec
from .stores.base import Store
from .token import Token, expires_at, is_due, refresh_at, restore

log = logging.getLogger("flask_tokenguard")


def normalise_scope(scope: str | Iterable[str] | None) -> str:
    """Scopes as the token endpoint gets them: unique, sorted, space-separated ("" for none)."""
    if scope is None:
        return ""
    items = scope.split() if isinstance(scope, str) else list(scope)
    if not all(isinstance(item, str) for item in items):
        raise TypeError("a scope is a string or a list of strings")
    return " ".join(sorted({part for item in items for part in item.split()}))


class AppTokens:
    """The app's client-credentials tokens, one per scope, fetched once everywhere."""

    def __init__(
        self,
        coordinator: Coordinator,
        client: RefreshClient,
        store: Store,
        keys: KeyNames,
        codec: RecordCodec,
        *,
        leeway: float,
        wait_timeout: float,
        min_renew_interval: float = 5.0,
        confidential: bool = True,
    ) -> None:
        self.coordinator = coordinator
        self.client = client
        self.store = store
        self.keys = keys
        self.codec = codec
        self.leeway = leeway
        self.wait_timeout = wait_timeout
        self.min_renew_interval = min_renew_interval
        self.confidential = confidential
        #: scope -> (token, epoch seconds it was fetched at)
        self._memory: dict[str, tuple[Token, float]] = {}

    def get(self, scope: str | Iterable[str] | None = None) -> Token:
        """A token for ``scope`` that is not due; fetched (once everywhere) if needed.

        Raises a :class:`~flask_tokenguard.errors.RefreshError` subclass when none can be had,
        :class:`~flask_tokenguard.errors.StoreError` when the store fails (fallback closed).
        """
        name = normalise_scope(scope)
        entry = self._memory.get(name)
        if entry is not None and not self._due(entry[0]):
            return dict(entry[0])
        return self._fetch(name, refused=None)

    def renew(self, scope: str | Iterable[str] | None, refused: str) -> Token:
        """A token other than ``refused`` (an access token an API answered 401 to).

        Every caller that saw the same refused token shares one fetch; one that comes after
        a newer token is known gets that one without any request. A token refused soon after
        it was fetched comes back unchanged (see the module's docstring).
        """
        name = normalise_scope(scope)
        entry = self._memory.get(name)
        if entry is not None:
            token, fetched_at = entry
            if token["access_token"] != refused and not self._due(token):
                return dict(token)
            if token["access_token"] == refused and self._too_soon(fetched_at):
                return dict(token)
        return self._fetch(name, refused=refused)

    # -- internals -------------------------------------------------------------------------

    def _due(self, token: Token) -> bool:
        return is_due(refresh_at(token, self.leeway))

    def _too_soon(self, fetched_at: float) -> bool:
        age = time.time() - fetched_at
        if age >= self.min_renew_interval:
            return False
        log.warning(
            "an API refused the app token %.1fs after it was fetched; no new one is fetched"
            " within %gs of the last (TOKENGUARD_RETRY_AFTER): check the API's audience and"
            " the scope asked for",
            age,
            self.min_renew_interval,
        )
        return True

    def _fetch(self, scope: str, refused: str | None) -> Token:
        if not self.confidential:
            raise ConfigurationError(
                "the app's own token needs a confidential client: the client-credentials grant"
                " authenticates with TOKENGUARD_CLIENT_SECRET (TOKENGUARD_CLIENT_AUTH is 'none')"
            )
        shared, fetched_at = self._read(scope)
        if shared is not None and (
            (shared["access_token"] != refused and not self._due(shared))
            or (shared["access_token"] == refused and self._too_soon(fetched_at))
        ):
            self._memory[scope] = (shared, fetched_at)
            return dict(shared)
        seen = refused if refused is not None else (shared or {}).get("access_token", "")
        deadline = Deadline(self.wait_timeout)
        token: Token | None = None
        # A published result outlives the token it names; one adopted already due (the store
        # lost the kept token meanwhile) names the next flight.
        for _ in range(2):
            grant = Grant(
                self.keys.app_grant(scope, seen),
                functools.partial(self._send, scope),
                follow=False,
                idempotent=True,
            )
            token, _called = self.coordinator.run(grant, deadline)
            if not self._due(token) or token["access_token"] == seen:
                break
            seen = token["access_token"]
        assert token is not None
        self._memory[scope] = (token, time.time())
        return dict(token)

    def _send(self, scope: str, timeout: float) -> Token:
        """The leader's request: fetch, then keep the token in the store before publishing."""
        token = self.client.client_credentials(scope or None, timeout)
        self._keep(scope, token)
        return token

    def _keep(self, scope: str, token: Token) -> None:
        key = self.keys.app_token(scope)
        exp = expires_at(token)
        # Kept past its expiry (as long as a published result): it names the next fetch.
        ttl = self.coordinator.policy.result_ttl
        if exp is not None:
            ttl += max(0.0, exp - time.time())
        try:
            self.store.publish(key, self.codec.encode(key, self.codec.success(token)), ttl)
        except StoreError:
            log.warning("could not keep the app token in the shared store")

    def _read(self, scope: str) -> tuple[Token | None, float]:
        """The kept token, if any, and when it was fetched (epoch seconds)."""
        key = self.keys.app_token(scope)
        try:
            text = self.store.read(key)
        except StoreError:
            return None, 0.0  # the coordinator meets the outage and applies the fallback
        record = self.codec.decode(key, text) if text is not None else None
        if record is None:
            return None, 0.0
        at = record.get("at")
        try:
            token = restore(record.get("token"))
        except TokenError:
            log.warning("ignoring a kept app token that is not usable")
            return None, 0.0
        return token, float(at) if isinstance(at, (int, float)) else 0.0
