"""The provider's state: tokens, codes and families; the counters; the faults and settings.

All behind one lock, so that the check-and-consume of a refresh token is atomic; nothing here
knows Flask or HTTP.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.errors import InvalidGrantError

from .config import (
    FAULTS,
    ID_TOKEN_FAULTS,
    OPENID_SCOPE,
    SETTINGS,
    SIGNATURE_FAULTS,
    UNTIL_CLEARED,
    ProviderConfig,
    check_loopback_uri,
    fingerprint,
)
from .identity import SigningKeys, id_token_claims, logout_token_claims
from .models import AuthCode, DemoClient, DemoUser, Family, TokenRecord

__all__ = ["FoundToken", "ProviderState"]

log = logging.getLogger(__name__)

_ISSUE_COUNTERS: Final = {
    "refresh": "refreshes",
    "code": "code_exchanges",
    "admin": "admin_issued",
    "client_credentials": "client_credentials_issued",
}

#: The plain counters of :meth:`ProviderState.stats`, in the order they are listed.
COUNTERS: Final = (
    "refresh_requests",
    "refreshes",
    "reuse_detected",
    "grace_reuses",
    "families_revoked",
    "invalid_grants",
    "code_exchanges",
    "admin_issued",
    "client_credentials_requests",
    "client_credentials_issued",
    "id_tokens",
    "revocations",
    "introspections",
    "end_sessions",
    "sessions_ended",
    "backchannel_logouts",
    "backchannel_logout_failures",
)


@dataclass(frozen=True)
class FoundToken:
    """A token value looked up for revocation or introspection: which record, which of its two."""

    record: TokenRecord
    kind: str  # "access_token" or "refresh_token"

    def check_client(self, client: DemoClient) -> bool:
        return self.record.check_client(client)

    def is_expired(self) -> bool:
        """Refresh tokens do not expire here; access tokens after ``expires_in``."""
        return self.kind == "access_token" and self.record.is_expired()

    def is_revoked(self) -> bool:
        """Revoked, or (a rotated refresh token) already used: no longer accepted."""
        if self.kind == "access_token":
            return self.record.is_revoked()
        return self.record.refresh_revoked() or self.record.refresh_used_at is not None


class ProviderState:
    """All of the provider's storage, counters, faults and settings, behind one lock.

    Tests in the same process read and steer the provider through this object; the admin API
    exposes the same methods over HTTP.
    """

    def __init__(self, config: ProviderConfig) -> None:
        check_loopback_uri(config.backchannel_logout_uri, "backchannel_logout_uri")
        self.config = config
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.clients: dict[str, DemoClient] = {
            config.client_id: DemoClient(
                config.client_id,
                config.client_secret,
                config.redirect_uris,
                config.allow_loopback_redirects,
                config.post_logout_redirect_uris,
            ),
            config.public_client_id: DemoClient(
                config.public_client_id,
                None,
                config.redirect_uris,
                config.allow_loopback_redirects,
                config.post_logout_redirect_uris,
            ),
        }
        #: The signing keys of ID and logout tokens (a new RSA key per provider).
        self.keys = SigningKeys()
        #: The ``iss`` of every token; None until a server knows its URL (see ProviderConfig).
        self.issuer: str | None = config.issuer
        self.settings = dataclasses.replace(config)
        self._init_storage()
        self._init_counters()

    def _init_storage(self) -> None:
        self._codes: dict[str, AuthCode] = {}
        self._used_codes: dict[str, str] = {}
        self._families: dict[str, Family] = {}
        self._sessions: dict[str, Family] = {}  # by sid
        self._by_access: dict[str, TokenRecord] = {}
        self._by_refresh: dict[str, TokenRecord] = {}

    def _init_counters(self) -> None:
        self._counters: Counter[str] = Counter()
        self._presentations: Counter[str] = Counter()
        self._consume_attempts: Counter[str] = Counter()
        self._faults_fired: Counter[str] = Counter()
        self._faults: dict[str, int] = {}
        self._id_token_fault: str | None = None
        self._issued_access: list[str] = []
        self._issued_refresh: list[str] = []
        self._issued_id: list[str] = []

    # -- inspection ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The test oracle, as plain JSON-able data (refresh tokens named by fingerprint)."""
        with self._lock:
            faults: dict[str, Any] = dict(self._faults)
            if self._id_token_fault is not None:
                faults["id_token_fault"] = self._id_token_fault
            return {
                **{name: self._counters[name] for name in COUNTERS},
                "presentations": dict(self._presentations),
                "max_presentations": max(self._presentations.values(), default=0),
                "consume_attempts": dict(self._consume_attempts),
                "max_consume_attempts": max(self._consume_attempts.values(), default=0),
                "faults_fired": dict(self._faults_fired),
                "faults": faults,
                "settings": {name: getattr(self.settings, name) for name in SETTINGS},
            }

    def presentations(self, refresh_token: str) -> int:
        """How many times this refresh token arrived at the token endpoint."""
        with self._lock:
            return self._presentations[fingerprint(refresh_token)]

    def issued(self) -> dict[str, list[str]]:
        """Every token value issued since the last reset (ID tokens under ``id_tokens``)."""
        with self._lock:
            return {
                "access_tokens": list(self._issued_access),
                "refresh_tokens": list(self._issued_refresh),
                "id_tokens": list(self._issued_id),
            }

    # -- steering -----------------------------------------------------------------------------

    def set_faults(self, **kwargs: Any) -> None:
        """Arm faults (names in :data:`FAULTS`, with a count) and change run-time settings.

        ``id_token_fault`` (one of :data:`ID_TOKEN_FAULTS`, or None to clear it) spoils the next
        ID token issued, once. Unknown names raise ``ValueError``; settings keep their value
        until :meth:`reset`.
        """
        faults: dict[str, int | None] = {}
        settings: dict[str, Any] = {}
        id_token_fault: tuple[str | None] | None = None
        for name, value in kwargs.items():
            if name in FAULTS:
                faults[name] = _fault_count(name, value)
            elif name == "id_token_fault":
                if value is not None and value not in ID_TOKEN_FAULTS:
                    raise ValueError(
                        f"id_token_fault must be one of {', '.join(ID_TOKEN_FAULTS)} or None"
                    )
                id_token_fault = (value,)
            elif name in SETTINGS:
                settings[name] = _coerce_setting(name, value)
            else:
                raise ValueError(f"unknown fault or setting: {name!r}")
        with self._lock:
            for name, count in faults.items():
                if count:
                    self._faults[name] = count
                else:
                    self._faults.pop(name, None)
            if id_token_fault is not None:
                self._id_token_fault = id_token_fault[0]
            self.settings = dataclasses.replace(self.settings, **settings)

    def clear_faults(self) -> None:
        """Disarm every fault (settings stay)."""
        with self._lock:
            self._faults.clear()
            self._id_token_fault = None

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

    def count(self, name: str) -> None:
        """Add one to a counter of :data:`COUNTERS`."""
        if name not in COUNTERS:
            raise ValueError(f"unknown counter {name!r}")
        with self._lock:
            self._counters[name] += 1

    # -- revocation (RFC 7009) and sessions (OpenID Connect) ----------------------------------

    def find_token(self, token: str, hint: str | None = None) -> FoundToken | None:
        """Look an access or refresh token up, in the order ``hint`` suggests."""
        order = ("refresh_token", "access_token")
        if hint == "access_token":
            order = ("access_token", "refresh_token")
        with self._lock:
            for kind in order:
                table = self._by_access if kind == "access_token" else self._by_refresh
                record = table.get(token)
                if record is not None:
                    return FoundToken(record, kind)
        return None

    def revoke(self, found: FoundToken) -> None:
        """RFC 7009: a refresh token takes its whole family with it; an access token only itself."""
        with self._lock:
            if found.kind == "refresh_token":
                self._revoke_family_locked(found.record.family)
            else:
                found.record.access_revoked = True

    def end_sessions(self, *, sid: str | None = None, sub: str | None = None) -> list[Family]:
        """End the sessions with this ``sid`` and/or of this ``sub``: revoke their families.

        Returns the sessions whose end is news (not ended before), for back-channel logout.
        """
        if sid is None and sub is None:
            raise ValueError("give a sid, a sub or both")
        with self._lock:
            if sid is not None:
                family = self._sessions.get(sid)
                matched = [] if family is None else [family]
            else:
                matched = list(self._sessions.values())
            if sub is not None:
                matched = [family for family in matched if family.sub == sub]
            ended = []
            for family in matched:
                self._revoke_family_locked(family)
                if not family.ended:
                    family.ended = True
                    ended.append(family)
                    self._counters["sessions_ended"] += 1
            return ended

    def id_token(self, family: Family, issuer: str, *, nonce: str | None = None) -> str:
        """Sign an ID token for this session, spoilt by the armed ``id_token_fault`` if any."""
        with self._lock:
            fault, self._id_token_fault = self._id_token_fault, None
            if fault is not None:
                self._faults_fired["id_token_fault"] += 1
        user = DemoUser(family.sub)
        claims = id_token_claims(
            issuer=issuer,
            client_id=family.client_id,
            sub=family.sub,
            sid=family.sid,
            auth_time=family.auth_time,
            scopes=family.scopes,
            ttl=self.config.id_token_ttl,
            name=user.name,
            email=user.email,
            nonce=nonce,
            fault=None if fault in SIGNATURE_FAULTS else fault,
        )
        token = self.keys.sign(claims, fault=fault if fault in SIGNATURE_FAULTS else None)
        with self._lock:
            self._counters["id_tokens"] += 1
            self._issued_id.append(token)
        return token

    def logout_token(self, family: Family, issuer: str) -> str:
        """A signed Back-Channel Logout token for this session (``typ: logout+jwt``)."""
        claims = logout_token_claims(
            issuer=issuer, client_id=family.client_id, sub=family.sub, sid=family.sid
        )
        return self.keys.sign(claims, typ="logout+jwt")

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
                if age <= self.settings.reuse_grace and not record.refresh_revoked():
                    self._counters["grace_reuses"] += 1
                    return record
                # Every presentation of a used token is a reuse; the family dies once.
                self._counters["reuse_detected"] += 1
                self._revoke_family_locked(record.family)
                log.info("refresh token %s reused; its token family is revoked", fp)
                description = "The refresh token was already used; the token family is revoked."
            elif record.refresh_revoked():
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
        sid: str | None = None,
        auth_time: float | None = None,
    ) -> TokenRecord:
        """Commit a token reply (``kind``: refresh, code, admin or client_credentials), count it.

        The first tokens of a family start its session (``sid``, ``auth_time``: of the sign-in,
        new ones if not given). Tokens issued into a family revoked meanwhile (a concurrent
        reuse) are born revoked.
        """
        token.setdefault("expires_in", 0)
        access_token = str(token["access_token"])
        refresh_token = token.get("refresh_token")
        with self._lock:
            family = self._families.get(family_id)
            if family is None:
                family = Family(
                    family_id,
                    client_id=client_id,
                    sub=sub,
                    scope=str(token.get("scope") or ""),
                    auth_time=time.time() if auth_time is None else auth_time,
                )
                if sid is not None:
                    family.sid = sid
                self._families[family_id] = family
                self._sessions[family.sid] = family
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
            return record

    def lookup_access_token(self, access_token: str) -> TokenRecord | None:
        with self._lock:
            return self._by_access.get(access_token)

    def issue(
        self,
        sub: str | None = None,
        expires_in: int | None = None,
        client_id: str | None = None,
        scope: str = "",
        issuer: str | None = None,
    ) -> dict[str, Any]:
        """Mint a token pair in a new family, as if ``sub`` had just logged in.

        With ``openid`` in ``scope`` and an ``issuer``, the reply has an ``id_token`` too.
        """
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
        record = self.store_tokens(
            token,
            client_id=client_id,
            sub=sub or self.config.default_user,
            family_id=uuid.uuid4().hex,
            kind="admin",
        )
        if issuer is not None and OPENID_SCOPE in record.family.scopes:
            token["id_token"] = self.id_token(record.family, issuer)
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
        return UNTIL_CLEARED
    if isinstance(value, int) and value >= UNTIL_CLEARED:
        return value
    raise ValueError(f"fault {name!r} takes a count, True or None, not {value!r}")


def _coerce_setting(name: str, value: Any) -> Any:
    if name == "status_body":
        if value is None or isinstance(value, (str, dict)):
            return value
        raise ValueError("status_body must be a str, a dict or None")
    if name == "status_retry_after" and value is None:
        return None
    if name == "backchannel_logout_uri":
        return check_loopback_uri(value, name)
    if name in {"rotate", "status_after_consume"}:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be a bool")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number")
    if name in {
        "access_ttl",
        "access_token_size",
        "invalid_grant_status",
        "status_code",
        "status_retry_after",
    }:
        return int(value)
    return float(value)
