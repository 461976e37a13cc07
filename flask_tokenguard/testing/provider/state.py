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
from typing import Any, Final

from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.errors import InvalidGrantError

from .config import FAULTS, SETTINGS, UNTIL_CLEARED, ProviderConfig, fingerprint
from .models import AuthCode, DemoClient, Family, TokenRecord

__all__ = ["ProviderState"]

log = logging.getLogger(__name__)

_ISSUE_COUNTERS: Final = {"refresh": "refreshes", "code": "code_exchanges", "admin": "admin_issued"}


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
                "settings": {name: getattr(self.settings, name) for name in SETTINGS},
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
    if name in {"rotate", "status_after_consume"}:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be a bool")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number")
    if name in {"access_ttl", "invalid_grant_status", "status_code", "status_retry_after"}:
        return int(value)
    return float(value)
