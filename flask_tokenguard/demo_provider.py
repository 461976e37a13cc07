"""A strict OAuth 2.0 authorization server for demos and tests (needs the ``demo`` extra: Authlib).

Why it exists: flask-tokenguard must be correct against the strictest provider there is, so this
one behaves like Auth0/Okta/Hydra with every knob at its strictest. Refresh tokens rotate on every
use, a used refresh token presented again revokes the whole token family (reuse window 0 s by
default), and it counts every presentation of every refresh token so that tests can assert the
invariant the extension exists for: no refresh token is ever presented twice
(``stats()["max_presentations"] == 1``).

Endpoints (all on one Flask app, see :func:`create_provider_app`):

``GET /authorize``
    Authorization code grant with PKCE ``S256`` required and ``state`` passed through. It
    auto-approves as a demo user (``login_hint`` or ``user`` query parameter, default ``alice``),
    so a browser or an HTTP client following the redirect logs in without a form. Any
    ``http://127.0.0.1:*/...`` or ``http://localhost:*/...`` redirect URI is accepted.
``POST /token``
    ``authorization_code`` and ``refresh_token`` grants. Client authentication:
    ``client_secret_basic``, ``client_secret_post`` (confidential ``demo-client`` /
    ``demo-secret``) and ``none`` (public ``demo-public``). Every reply carries ``expires_in``.
``GET /userinfo``
    Bearer-protected: ``{"sub", "name", "token_fingerprint"}`` (first 8 hex digits of the
    SHA-256 of the access token); 401 for a missing, unknown, expired or revoked token.
``GET /.well-known/oauth-authorization-server``
    RFC 8414 metadata, so clients can discover the endpoints.

Admin API, for tests that drive the provider from other processes (no authentication: it is a
test server; bind it to 127.0.0.1 only):

``GET /_admin/stats``
    The counters: ``refresh_requests``, ``presentations`` (per refresh token fingerprint),
    ``max_presentations``, ``consume_attempts``/``max_consume_attempts`` (presentations that
    reached the check-and-consume, i.e. were not turned away by a fault first), ``refreshes``
    (committed rotations), ``reuse_detected``, ``grace_reuses``, ``families_revoked``,
    ``invalid_grants``, ``code_exchanges``, ``admin_issued``, ``faults_fired``, the pending
    ``faults`` and the current ``settings``.
``GET /_admin/issued``
    ``{"access_tokens": [...], "refresh_tokens": [...]}``: every token value issued since the last
    reset, so tests can scan stores and logs for them.
``GET|POST /_admin/faults``
    Read or set faults and settings; the JSON body takes the keyword arguments of
    :meth:`ProviderState.set_faults`.
``POST /_admin/reset``
    Clear counters, faults and the issued list and restore the configured settings; with
    ``{"drop_tokens": true}`` also forget every token and code.
``POST /_admin/issue``
    ``{"sub": "alice", "expires_in": 0, "client_id": "demo-client", "scope": ""}`` mints a token
    pair for a user without the browser flow (e.g. an already expired access token).
``POST /_admin/revoke``
    ``{"token": "<access or refresh token>"}`` revokes that token's family, like a provider-side
    logout.

Faults (:data:`FAULTS`) apply to refresh-grant requests only. Each takes a count: ``n > 0`` for
the next ``n`` requests it applies to, ``True`` or ``-1`` until cleared, ``0``/``False``/``None``
to clear it. ``unavailable_before``, ``invalid_client`` and ``status`` (unless
``status_after_consume``) answer before the refresh token is looked at; the others act only on a
refresh that was committed (token rotated, new tokens stored).

Run it on its own with ``python -m flask_tokenguard.demo_provider --port 5001``, in a test with
:class:`ProviderServer`, or under any WSGI server from ONE process (threads are fine: the state
lives in that process's memory, so several workers would each keep their own). Token values are
never logged, not even at DEBUG (Authlib's own "Issue token" lines are filtered out); log lines
carry fingerprints at most.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast
from urllib.parse import urlsplit

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

__all__ = [
    "FAULTS",
    "ProviderConfig",
    "ProviderServer",
    "ProviderState",
    "create_provider_app",
    "fingerprint",
    "get_provider_state",
    "main",
]

log = logging.getLogger(__name__)

EXTENSION_KEY: Final = "tokenguard_demo_provider"

#: Fault switches, in the order they are checked.
FAULTS: Final = (
    "invalid_client",
    "unavailable_before",
    "status",
    "hang",
    "drop_after_commit",
    "garbage",
)
_BEFORE_CONSUME: Final = ("invalid_client", "unavailable_before", "status")
_AFTER_COMMIT: Final = ("drop_after_commit", "status", "garbage")
_UNTIL_CLEARED: Final = -1

_REFRESH_GRANT: Final = "refresh_token"
_CODE_GRANT: Final = "authorization_code"
_TOKEN_AUTH_METHODS: Final = ["client_secret_basic", "client_secret_post", "none"]

_ISSUE_COUNTERS: Final = {"refresh": "refreshes", "code": "code_exchanges", "admin": "admin_issued"}

_GARBAGE_BODY: Final = (
    "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>"
    "<body><h1>Please sign in</h1><p>Your session has ended.</p></body></html>\n"
)


def fingerprint(token: str) -> str:
    """Name a token in logs, stats and userinfo without revealing it: 8 hex of its SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


@dataclass
class ProviderConfig:
    """How the provider behaves. The fields from ``access_ttl`` on are also run-time settings.

    Defaults model the strictest provider: rotation, a 0 s reuse window, family revocation.
    """

    client_id: str = "demo-client"
    client_secret: str = field(default="demo-secret", repr=False)  # a published demo credential
    public_client_id: str = "demo-public"
    #: Redirect URIs registered for both clients; the first is the default one.
    redirect_uris: tuple[str, ...] = ("http://127.0.0.1:5000/callback",)
    #: Accept any http://127.0.0.1:*/ or http://localhost:*/ redirect URI too (RFC 8252 loopback).
    allow_loopback_redirects: bool = True
    default_user: str = "alice"
    code_ttl: int = 600
    # --- run-time settings (ProviderState.set_faults can change them; reset restores them) ---
    access_ttl: int = 20
    #: Issue a new refresh token on every refresh (False: Google-style, the token stays valid).
    rotate: bool = True
    #: Seconds a used refresh token is still accepted (Okta's grace period, Auth0's leeway).
    reuse_grace: float = 0.0
    #: Status of an ``invalid_grant`` answer to a refresh: 400 (RFC 6749) or 403 (Auth0).
    invalid_grant_status: int = 400
    #: Seconds every refresh that reaches the check-and-consume takes (whatever its outcome),
    #: spent after the check and outside any lock, so concurrent refreshes overlap.
    refresh_delay: float = 0.0
    #: How long the ``hang`` fault sleeps before answering.
    hang_seconds: float = 10.0
    #: What the ``status`` fault answers: status, body (a dict is sent as JSON, a str as HTML),
    #: whether it comes after the token is consumed, and an optional Retry-After.
    status_code: int = 502
    status_body: str | dict[str, Any] | None = None
    status_after_consume: bool = False
    status_retry_after: int | None = None


#: The ProviderConfig fields that can change at run time.
_SETTINGS: Final = (
    "access_ttl",
    "rotate",
    "reuse_grace",
    "invalid_grant_status",
    "refresh_delay",
    "hang_seconds",
    "status_code",
    "status_body",
    "status_after_consume",
    "status_retry_after",
)


# --------------------------------------------------------------------------------------------
# Models (Authlib's mixins are untyped, hence the ignores)


@dataclass(frozen=True)
class DemoUser:
    """The resource owner: the demo has no passwords, only subjects."""

    sub: str

    @property
    def name(self) -> str:
        return self.sub.capitalize()


@dataclass(frozen=True)
class DemoClient(ClientMixin):  # type: ignore[misc]
    """A registered client; ``client_secret is None`` makes it public (auth method ``none``)."""

    client_id: str
    client_secret: str | None = field(repr=False)  # Authlib logs clients with %r
    redirect_uris: tuple[str, ...]
    allow_loopback_redirects: bool

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        if redirect_uri in self.redirect_uris:
            return True
        if not self.allow_loopback_redirects:
            return False
        parts = urlsplit(redirect_uri)
        return (
            parts.scheme == "http"
            and parts.hostname in {"127.0.0.1", "localhost"}
            and not parts.fragment
        )

    def check_client_secret(self, client_secret: str) -> bool:
        if self.client_secret is None:
            return False
        return secrets.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint != "token":
            return True
        if self.client_secret is None:
            return method == "none"
        return method in {"client_secret_basic", "client_secret_post"}

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in {_CODE_GRANT, _REFRESH_GRANT}


@dataclass(eq=False)
class Family:
    """Every token descended from one login; reuse detection revokes all of them at once."""

    family_id: str
    revoked: bool = False
    records: list[TokenRecord] = field(default_factory=list, repr=False)


@dataclass(eq=False)
class TokenRecord(TokenMixin):  # type: ignore[misc]
    """One issued access token and the refresh token issued with it (if any)."""

    access_token: str = field(repr=False)  # never in a log line, not even at DEBUG
    refresh_token: str | None = field(repr=False)
    client_id: str
    sub: str
    scope: str
    expires_in: int
    family: Family
    issued_at: float = field(default_factory=time.time)
    revoked: bool = False
    refresh_used_at: float | None = None

    def check_client(self, client: DemoClient) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked or self.family.revoked

    def get_user(self) -> DemoUser:
        return DemoUser(self.sub)

    def get_client_id(self) -> str:
        return self.client_id


@dataclass(eq=False)
class AuthCode:
    """An authorization code; the family id is fixed here so a replayed code can revoke it."""

    code: str = field(repr=False)
    client_id: str
    redirect_uri: str | None
    scope: str
    sub: str
    code_challenge: str | None
    code_challenge_method: str | None
    family_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    expires_at: float = 0.0

    def get_redirect_uri(self) -> str | None:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


# --------------------------------------------------------------------------------------------
# State


class ProviderState:
    """All of the provider's storage, counters, faults and settings, behind one lock.

    Tests in the same process read and steer the provider through this object; the admin API
    exposes the same methods over HTTP.
    """

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.clients: dict[str, DemoClient] = {
            config.client_id: DemoClient(
                config.client_id,
                config.client_secret,
                config.redirect_uris,
                config.allow_loopback_redirects,
            ),
            config.public_client_id: DemoClient(
                config.public_client_id,
                None,
                config.redirect_uris,
                config.allow_loopback_redirects,
            ),
        }
        self.settings = dataclasses.replace(config)
        self._init_storage()
        self._init_counters()

    def _init_storage(self) -> None:
        self._codes: dict[str, AuthCode] = {}
        self._used_codes: dict[str, str] = {}
        self._families: dict[str, Family] = {}
        self._by_access: dict[str, TokenRecord] = {}
        self._by_refresh: dict[str, TokenRecord] = {}

    def _init_counters(self) -> None:
        self._counters: Counter[str] = Counter()
        self._presentations: Counter[str] = Counter()
        self._consume_attempts: Counter[str] = Counter()
        self._faults_fired: Counter[str] = Counter()
        self._faults: dict[str, int] = {}
        self._issued_access: list[str] = []
        self._issued_refresh: list[str] = []

    # -- inspection ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The test oracle, as plain JSON-able data (refresh tokens named by fingerprint)."""
        with self._lock:
            names = (
                "refresh_requests",
                "refreshes",
                "reuse_detected",
                "grace_reuses",
                "families_revoked",
                "invalid_grants",
                "code_exchanges",
                "admin_issued",
            )
            return {
                **{name: self._counters[name] for name in names},
                "presentations": dict(self._presentations),
                "max_presentations": max(self._presentations.values(), default=0),
                "consume_attempts": dict(self._consume_attempts),
                "max_consume_attempts": max(self._consume_attempts.values(), default=0),
                "faults_fired": dict(self._faults_fired),
                "faults": dict(self._faults),
                "settings": {name: getattr(self.settings, name) for name in _SETTINGS},
            }

    def presentations(self, refresh_token: str) -> int:
        """How many times this refresh token arrived at the token endpoint."""
        with self._lock:
            return self._presentations[fingerprint(refresh_token)]

    def issued(self) -> dict[str, list[str]]:
        """Every token value issued since the last reset."""
        with self._lock:
            return {
                "access_tokens": list(self._issued_access),
                "refresh_tokens": list(self._issued_refresh),
            }

    # -- steering -----------------------------------------------------------------------------

    def set_faults(self, **kwargs: Any) -> None:
        """Arm faults (names in :data:`FAULTS`, with a count) and change run-time settings.

        Unknown names raise ``ValueError``; settings keep their value until :meth:`reset`.
        """
        faults: dict[str, int | None] = {}
        settings: dict[str, Any] = {}
        for name, value in kwargs.items():
            if name in FAULTS:
                faults[name] = _fault_count(name, value)
            elif name in _SETTINGS:
                settings[name] = _coerce_setting(name, value)
            else:
                raise ValueError(f"unknown fault or setting: {name!r}")
        with self._lock:
            for name, count in faults.items():
                if count:
                    self._faults[name] = count
                else:
                    self._faults.pop(name, None)
            self.settings = dataclasses.replace(self.settings, **settings)

    def clear_faults(self) -> None:
        """Disarm every fault (settings stay)."""
        with self._lock:
            self._faults.clear()

    def reset(self, *, drop_tokens: bool = False) -> None:
        """Back to the configured behaviour: counters, faults, issued list and settings.

        Tokens stay valid unless ``drop_tokens``; sleeping requests (``hang``, ``refresh_delay``)
        are woken so they do not leak into the next test.
        """
        self.wake_sleepers()
        with self._lock:
            self._init_counters()
            self.settings = dataclasses.replace(self.config)
            if drop_tokens:
                self._init_storage()

    def wake_sleepers(self) -> None:
        """End every ``hang``/``refresh_delay`` sleep in progress now."""
        with self._lock:
            wake, self._wake = self._wake, threading.Event()
        wake.set()

    def sleep(self, seconds: float) -> None:
        """Sleep that :meth:`wake_sleepers` (reset, server stop) can cut short."""
        if seconds > 0:
            with self._lock:
                wake = self._wake
            wake.wait(seconds)

    def revoke_family_of(self, token: str) -> bool:
        """Revoke the family of an access or refresh token; False if the token is unknown."""
        with self._lock:
            record = self._by_access.get(token) or self._by_refresh.get(token)
            if record is None:
                return False
            self._revoke_family_locked(record.family)
            return True

    def take_fault(self, candidates: Iterable[str], *, after_commit: bool) -> str | None:
        """Fire the first armed fault among ``candidates`` and count it down.

        ``status`` fires only at the stage its ``status_after_consume`` setting names.
        """
        with self._lock:
            for name in candidates:
                if name == "status" and self.settings.status_after_consume != after_commit:
                    continue
                remaining = self._faults.get(name, 0)
                if not remaining:
                    continue
                if remaining == 1:
                    del self._faults[name]
                elif remaining > 1:
                    self._faults[name] = remaining - 1
                self._faults_fired[name] += 1
                return name
        return None

    # -- storage used by the grants -----------------------------------------------------------

    def note_refresh_request(self, refresh_token: str | None) -> None:
        """Count a refresh-grant request and its refresh token, whatever happens next."""
        with self._lock:
            self._counters["refresh_requests"] += 1
            if refresh_token:
                self._presentations[fingerprint(refresh_token)] += 1

    def save_code(self, code: AuthCode) -> None:
        code.expires_at = time.time() + self.config.code_ttl
        with self._lock:
            self._codes[code.code] = code

    def take_code(self, code: str, client_id: str) -> AuthCode | None:
        """Consume a code atomically (single use); a replayed code revokes what it issued."""
        with self._lock:
            record = self._codes.pop(code, None)
            if record is None:
                family = self._families.get(self._used_codes.get(code, ""))
                if family is not None:
                    log.info("authorization code replayed; token family revoked")
                    self._revoke_family_locked(family)
                return None
            self._used_codes[code] = record.family_id
            if record.client_id != client_id or time.time() > record.expires_at:
                return None
            return record

    def consume_refresh_token(self, refresh_token: str, client_id: str) -> TokenRecord:
        """The atomic check-and-consume: look up, check, mark used, all under the lock.

        Raises ``InvalidGrantError``; a used token outside the grace window revokes its family.
        """
        status = self.settings.invalid_grant_status
        fp = fingerprint(refresh_token)
        with self._lock:
            self._consume_attempts[fp] += 1
            record = self._by_refresh.get(refresh_token)
            description: str | None = None
            if record is None or record.client_id != client_id:
                description = "Unknown or invalid refresh token."
            elif self.settings.rotate and record.refresh_used_at is not None:
                age = time.time() - record.refresh_used_at
                if age <= self.settings.reuse_grace and not record.is_revoked():
                    self._counters["grace_reuses"] += 1
                    return record
                # Every presentation of a used token is a reuse; the family dies once.
                self._counters["reuse_detected"] += 1
                self._revoke_family_locked(record.family)
                log.info("refresh token %s reused; its token family is revoked", fp)
                description = "The refresh token was already used; the token family is revoked."
            elif record.is_revoked():
                description = "The refresh token was revoked."
            if description is not None:
                self._counters["invalid_grants"] += 1
                raise InvalidGrantError(description=description, status_code=status)
            assert record is not None
            if self.settings.rotate:
                record.refresh_used_at = time.time()
            return record

    def store_tokens(
        self,
        token: dict[str, Any],
        *,
        client_id: str,
        sub: str,
        family_id: str,
        kind: str,
    ) -> None:
        """Commit a token reply (``kind``: refresh, code or admin) and count it.

        Tokens issued into a family revoked meanwhile (a concurrent reuse) are born revoked.
        """
        token.setdefault("expires_in", 0)
        access_token = str(token["access_token"])
        refresh_token = token.get("refresh_token")
        with self._lock:
            family = self._families.get(family_id)
            if family is None:
                family = self._families[family_id] = Family(family_id)
            record = TokenRecord(
                access_token=access_token,
                refresh_token=refresh_token,
                client_id=client_id,
                sub=sub,
                scope=str(token.get("scope") or ""),
                expires_in=int(token["expires_in"]),
                family=family,
            )
            family.records.append(record)
            self._by_access[access_token] = record
            self._issued_access.append(access_token)
            if refresh_token:
                self._by_refresh[refresh_token] = record
                self._issued_refresh.append(refresh_token)
            self._counters[_ISSUE_COUNTERS[kind]] += 1

    def lookup_access_token(self, access_token: str) -> TokenRecord | None:
        with self._lock:
            return self._by_access.get(access_token)

    def issue(
        self,
        sub: str | None = None,
        expires_in: int | None = None,
        client_id: str | None = None,
        scope: str = "",
    ) -> dict[str, Any]:
        """Mint a token pair in a new family, as if ``sub`` had just logged in."""
        client_id = client_id or self.config.client_id
        if client_id not in self.clients:
            raise ValueError(f"unknown client_id {client_id!r}")
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": generate_token(42),
            "refresh_token": generate_token(48),
            "expires_in": self.settings.access_ttl if expires_in is None else int(expires_in),
        }
        if scope:
            token["scope"] = scope
        self.store_tokens(
            token,
            client_id=client_id,
            sub=sub or self.config.default_user,
            family_id=uuid.uuid4().hex,
            kind="admin",
        )
        return token

    def _revoke_family_locked(self, family: Family) -> None:
        if family.revoked:
            return
        family.revoked = True
        for record in family.records:
            record.revoked = True
        self._counters["families_revoked"] += 1


def _fault_count(name: str, value: Any) -> int | None:
    if value is None or value is False:
        return None
    if value is True:
        return _UNTIL_CLEARED
    if isinstance(value, int) and value >= _UNTIL_CLEARED:
        return value
    raise ValueError(f"fault {name!r} takes a count, True or None, not {value!r}")


def _coerce_setting(name: str, value: Any) -> Any:
    if name == "status_body":
        if value is None or isinstance(value, (str, dict)):
            return value
        raise ValueError("status_body must be a str, a dict or None")
    if name == "status_retry_after" and value is None:
        return None
    if name in {"rotate", "status_after_consume"}:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be a bool")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number")
    if name in {"access_ttl", "invalid_grant_status", "status_code", "status_retry_after"}:
        return int(value)
    return float(value)


# --------------------------------------------------------------------------------------------
# Authlib glue


class _Server(AuthorizationServer):  # type: ignore[misc]
    """Authlib's Flask server, with the state attached and a run-time ``access_ttl``."""

    def __init__(self, app: Flask, state: ProviderState) -> None:
        self.state = state
        super().__init__(app, query_client=state.clients.get, save_token=self._save)

    def create_bearer_token_generator(self, config: Mapping[str, Any]) -> Any:
        generator = super().create_bearer_token_generator(config)
        generator.expires_generator = lambda client, grant_type: self.state.settings.access_ttl
        return generator

    def _save(self, token: dict[str, Any], oauth_request: Any) -> None:
        grant_type = oauth_request.payload.grant_type
        if grant_type == _REFRESH_GRANT:
            family_id = oauth_request.refresh_token.family.family_id
            kind = "refresh"
        else:
            family_id = oauth_request.authorization_code.family_id
            kind = "code"
        self.state.store_tokens(
            token,
            client_id=oauth_request.client.get_client_id(),
            sub=oauth_request.user.sub,
            family_id=family_id,
            kind=kind,
        )


class _AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = _TOKEN_AUTH_METHODS

    def save_authorization_code(self, code: str, oauth_request: Any) -> None:
        data = oauth_request.payload.data
        self.server.state.save_code(
            AuthCode(
                code=code,
                client_id=oauth_request.client.get_client_id(),
                redirect_uri=oauth_request.payload.redirect_uri,
                scope=oauth_request.scope or "",
                sub=oauth_request.user.sub,
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
            )
        )

    def query_authorization_code(self, code: str, client: DemoClient) -> AuthCode | None:
        # Consumed here, not in delete_authorization_code: Authlib would let two concurrent
        # exchanges of one code both pass validation.
        return cast("AuthCode | None", self.server.state.take_code(code, client.get_client_id()))

    def delete_authorization_code(self, authorization_code: AuthCode) -> None:
        """Already consumed by :meth:`query_authorization_code`."""

    def authenticate_user(self, authorization_code: AuthCode) -> DemoUser:
        return DemoUser(authorization_code.sub)


class _RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = _TOKEN_AUTH_METHODS

    def __init__(self, oauth_request: Any, server: _Server) -> None:
        super().__init__(oauth_request, server)
        # Authlib issues no new refresh token unless this is true (a class attribute upstream).
        self.INCLUDE_NEW_REFRESH_TOKEN = server.state.settings.rotate

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRecord:
        # Authlib's grant has no lock and revokes the old token only after saving the new one,
        # so the whole check-and-consume happens here, atomically, before anything is issued.
        state: ProviderState = self.server.state
        try:
            return state.consume_refresh_token(refresh_token, self.request.client.get_client_id())
        finally:
            state.sleep(state.settings.refresh_delay)

    def authenticate_user(self, refresh_token: TokenRecord) -> DemoUser:
        return refresh_token.get_user()

    def revoke_old_credential(self, refresh_token: TokenRecord) -> None:
        """Nothing to do: the token was marked used by the check-and-consume."""


class _RequireS256(CodeChallenge):  # type: ignore[misc]
    """PKCE for every client. Authlib's ``required=True`` only binds public clients and
    accepts ``plain``; here a code_challenge with method S256 is mandatory."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge' (PKCE S256 is required).")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256.")
        super().validate_code_challenge(grant, redirect_uri)


class _BearerValidator(BearerTokenValidator):  # type: ignore[misc]
    def __init__(self, state: ProviderState) -> None:
        super().__init__()
        self.state = state

    def authenticate_token(self, token_string: str) -> TokenRecord | None:
        return self.state.lookup_access_token(token_string)


class _DropTokenDebugLines(logging.Filter):
    """Authlib logs every issued token dict at DEBUG ("Issue token %r to %r"): drop those
    lines, so that a test capturing every logger at DEBUG finds no token from the provider."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Issue token", "Grant token"))


_AUTHLIB_TOKEN_LOGGERS: Final = (
    "authlib.oauth2.rfc6749.grants.authorization_code",
    "authlib.oauth2.rfc6749.grants.refresh_token",
)


def _silence_authlib_token_logs() -> None:
    for name in _AUTHLIB_TOKEN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTokenDebugLines) for f in logger.filters):
            logger.addFilter(_DropTokenDebugLines())


# --------------------------------------------------------------------------------------------
# The app


def get_provider_state(app: Flask) -> ProviderState:
    """The :class:`ProviderState` of an app made by :func:`create_provider_app`."""
    return cast(ProviderState, app.extensions[EXTENSION_KEY])


def create_provider_app(config: ProviderConfig | None = None) -> Flask:
    """Build the provider's Flask app; its state is :func:`get_provider_state` (app)."""
    config = config or ProviderConfig()
    _silence_authlib_token_logs()
    app = Flask(__name__)
    app.config.update(
        OAUTH2_REFRESH_TOKEN_GENERATOR=True,
        OAUTH2_SCOPES_SUPPORTED=None,
    )
    state = ProviderState(config)
    app.extensions[EXTENSION_KEY] = state
    server = _Server(app, state)
    server.register_grant(_AuthorizationCodeGrant, [_RequireS256(required=True)])
    server.register_grant(_RefreshTokenGrant)
    require_oauth = ResourceProtector()
    require_oauth.register_token_validator(_BearerValidator(state))

    @app.get("/authorize")
    def authorize() -> Response:
        sub = request.args.get("login_hint") or request.args.get("user") or config.default_user
        user = DemoUser(sub)
        try:
            grant = server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            return cast(Response, server.handle_error_response(None, error))
        return cast(Response, server.create_authorization_response(grant_user=user, grant=grant))

    @app.post("/token")
    def token() -> Response:
        if request.form.get("grant_type") != _REFRESH_GRANT:
            return cast(Response, server.create_token_response())
        return _refresh(state, server)

    @app.get("/userinfo")
    def userinfo() -> Response:
        with require_oauth.acquire() as record:  # 401 for missing/unknown/expired/revoked
            user = record.get_user()
        return jsonify(
            sub=user.sub, name=user.name, token_fingerprint=fingerprint(record.access_token)
        )

    @app.get("/.well-known/oauth-authorization-server")
    def metadata() -> Response:
        base = request.host_url.rstrip("/")
        return jsonify(
            issuer=base,
            authorization_endpoint=f"{base}/authorize",
            token_endpoint=f"{base}/token",
            userinfo_endpoint=f"{base}/userinfo",
            response_types_supported=["code"],
            grant_types_supported=[_CODE_GRANT, _REFRESH_GRANT],
            token_endpoint_auth_methods_supported=_TOKEN_AUTH_METHODS,
            code_challenge_methods_supported=["S256"],
        )

    app.register_blueprint(_admin_blueprint(state))
    return app


def _refresh(state: ProviderState, server: _Server) -> Response:
    """A refresh grant request with its faults around Authlib's processing."""
    state.note_refresh_request(request.form.get("refresh_token"))
    fault = state.take_fault(_BEFORE_CONSUME, after_commit=False)
    if fault == "invalid_client":
        return _json({"error": "invalid_client"}, 401, {"WWW-Authenticate": 'Basic realm="demo"'})
    if fault == "unavailable_before":
        return _json({"error": "temporarily_unavailable"}, 503, {"Retry-After": "2"})
    if fault == "status":
        return _status_response(state.settings)
    response = cast(Response, server.create_token_response())
    if response.status_code != 200:
        return response
    # The refresh is committed: the old token is used, the new tokens are stored.
    if state.take_fault(("hang",), after_commit=True):
        state.sleep(state.settings.hang_seconds)
    fault = state.take_fault(_AFTER_COMMIT, after_commit=True)
    if fault == "drop_after_commit":
        _drop_connection()
    elif fault == "status":
        return _status_response(state.settings)
    elif fault == "garbage":
        return Response(_GARBAGE_BODY, 200, content_type="text/html; charset=utf-8")
    return response


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    response.headers["Cache-Control"] = "no-store"
    return response


def _status_response(settings: ProviderConfig) -> Response:
    body = settings.status_body
    headers = {}
    if settings.status_retry_after is not None:
        headers["Retry-After"] = str(settings.status_retry_after)
    if isinstance(body, dict):
        return _json(body, settings.status_code, headers)
    if body is None:
        body = f"<html><body><h1>{settings.status_code}</h1><p>Upstream error.</p></body></html>"
    return Response(body, settings.status_code, headers, content_type="text/html; charset=utf-8")


def _drop_connection() -> None:
    """Close the client's TCP connection now, so no HTTP response can ever reach it.

    The server's later attempt to write the response fails with a broken pipe, which both
    werkzeug and gunicorn treat as a client disconnect.
    """
    sock = request.environ.get("werkzeug.socket") or request.environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        raise RuntimeError("drop_after_commit needs werkzeug's or gunicorn's server")
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the client is already gone: the effect we wanted


def _admin_blueprint(state: ProviderState) -> Blueprint:
    """The ``/_admin/`` API: the test oracle and fault switches for other processes."""
    admin = Blueprint("demo_provider_admin", __name__, url_prefix="/_admin")

    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError("the JSON body must be an object")
        return data

    @admin.errorhandler(ValueError)
    def bad_request(error: ValueError) -> Response:
        return _json({"error": "invalid_request", "error_description": str(error)}, 400)

    @admin.get("/stats")
    def stats() -> Response:
        return jsonify(state.stats())

    @admin.get("/issued")
    def issued() -> Response:
        return jsonify(state.issued())

    @admin.route("/faults", methods=["GET", "POST"])
    def faults() -> Response:
        if request.method == "POST":
            state.set_faults(**body())
        current = state.stats()
        return jsonify(faults=current["faults"], settings=current["settings"])

    @admin.post("/reset")
    def reset() -> Response:
        state.reset(drop_tokens=bool(body().get("drop_tokens", False)))
        return jsonify(ok=True)

    @admin.post("/issue")
    def issue() -> Response:
        data = body()
        expires_in = data.get("expires_in")
        if expires_in is not None and type(expires_in) is not int:
            raise ValueError("expires_in must be an integer")
        token = state.issue(
            sub=data.get("sub"),
            expires_in=expires_in,
            client_id=data.get("client_id"),
            scope=str(data.get("scope") or ""),
        )
        return _json(token, 200)

    @admin.post("/revoke")
    def revoke() -> Response:
        if not state.revoke_family_of(str(body().get("token") or "")):
            return _json({"error": "not_found"}, 404)
        return jsonify(ok=True)

    return admin


# --------------------------------------------------------------------------------------------
# Running it


class _QuietRequestHandler(WSGIRequestHandler):
    """No access log lines: tests run thousands of requests; errors are still logged."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class ProviderServer:
    """The provider on werkzeug's threaded server in a background thread (port 0: a free one).

    Use as a context manager, or ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        config: ProviderConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        quiet: bool = True,
    ) -> None:
        self.config = config or ProviderConfig()
        self.app = create_provider_app(self.config)
        self.state = get_provider_state(self.app)
        self.host = host
        self._port = port
        self._quiet = quiet
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the provider server is not running")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:54321``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ProviderServer:
        if self._server is not None:
            raise RuntimeError("the provider server is already running")
        handler = _QuietRequestHandler if self._quiet else None
        server = make_server(
            self.host, self._port, self.app, threaded=True, request_handler=handler
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"demo-provider:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self.state.wake_sleepers()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> ProviderServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m flask_tokenguard.demo_provider``: serve the provider until Ctrl-C."""
    defaults = ProviderConfig()
    parser = argparse.ArgumentParser(
        prog="python -m flask_tokenguard.demo_provider", description=main.__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--access-ttl", type=int, default=defaults.access_ttl)
    parser.add_argument("--client-id", default=defaults.client_id)
    parser.add_argument("--client-secret", default=defaults.client_secret)
    parser.add_argument("--public-client-id", default=defaults.public_client_id)
    parser.add_argument(
        "--redirect-uri",
        action="append",
        dest="redirect_uris",
        help="registered redirect URI (repeatable); loopback URIs are accepted anyway",
    )
    parser.add_argument("--refresh-delay", type=float, default=defaults.refresh_delay)
    parser.add_argument("--reuse-grace", type=float, default=defaults.reuse_grace)
    parser.add_argument("--invalid-grant-status", type=int, choices=(400, 401, 403), default=400)
    parser.add_argument(
        "--no-rotate", action="store_true", help="keep refresh tokens valid (Google-style)"
    )
    args = parser.parse_args(argv)
    config = ProviderConfig(
        client_id=args.client_id,
        client_secret=args.client_secret,
        public_client_id=args.public_client_id,
        redirect_uris=tuple(args.redirect_uris or defaults.redirect_uris),
        access_ttl=args.access_ttl,
        rotate=not args.no_rotate,
        reuse_grace=args.reuse_grace,
        invalid_grant_status=args.invalid_grant_status,
        refresh_delay=args.refresh_delay,
    )
    if args.host not in {"127.0.0.1", "localhost", "::1"}:
        # Authlib refuses plain http except on loopback; this is a demo server.
        os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")
    server = ProviderServer(config, host=args.host, port=args.port, quiet=False).start()
    url = server.url
    print(
        f"demo OAuth provider on {url}\n"
        f"  authorize: {url}/authorize   token: {url}/token   userinfo: {url}/userinfo\n"
        f"  admin:     {url}/_admin/stats  (faults, reset, issue, issued, revoke)\n"
        f"  confidential client: {config.client_id} / {config.client_secret}\n"
        f"  public client:       {config.public_client_id} (PKCE S256 always required)\n"
        f"  access tokens live {config.access_ttl} s; refresh tokens rotate: {config.rotate}",
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
