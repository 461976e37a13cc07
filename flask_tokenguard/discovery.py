"""The provider's endpoints: set by hand, or discovered from its metadata.

``TOKENGUARD_SERVER_METADATA_URL`` points at an OpenID Connect discovery document
(``/.well-known/openid-configuration``) or RFC 8414 authorization server metadata. It is fetched
once per process, on first use (never at import or in ``init_app``, so an app starts while its
provider is down), under a lock, and kept for ``TOKENGUARD_METADATA_TTL`` seconds; a refetch that
fails keeps the endpoints already known. Every key set by hand wins over the document, and every
discovered URL passes the same https rule as a configured one.

Nothing here knows about Flask.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from .config import ConfigKeys as K
from .config import Settings, check_url
from .errors import ConfigurationError
from .provider import get_document

log = logging.getLogger("flask_tokenguard")

#: The largest metadata document read (a provider's is a few kilobytes).
MAX_METADATA_BYTES = 512 * 1024

#: (field of :class:`Endpoints`, metadata member, configuration key)
_FIELDS = (
    ("authorize_url", "authorization_endpoint", K.AUTHORIZE_URL),
    ("token_url", "token_endpoint", K.TOKEN_URL),
    ("userinfo_url", "userinfo_endpoint", K.USERINFO_URL),
    ("revocation_url", "revocation_endpoint", K.REVOCATION_URL),
    ("end_session_url", "end_session_endpoint", K.END_SESSION_URL),
    ("jwks_url", "jwks_uri", K.JWKS_URL),
)


@dataclass(frozen=True)
class Endpoints:
    """Where the provider's endpoints are, and what it says about itself."""

    issuer: str | None = None
    authorize_url: str | None = None
    token_url: str | None = None
    userinfo_url: str | None = None
    revocation_url: str | None = None
    end_session_url: str | None = None
    jwks_url: str | None = None
    #: RFC 9207: the authorization response carries ``iss``, and the client must check it
    iss_parameter: bool = False


class Discovery:
    """The endpoints of one app's provider, discovered lazily and cached (thread-safe)."""

    def __init__(
        self,
        *,
        metadata_url: str | None,
        configured: Endpoints,
        timeout: float,
        ttl: float = 3600.0,
        allow_insecure_loopback: bool = False,
    ) -> None:
        self.metadata_url = metadata_url
        self.configured = configured
        self.timeout = timeout
        self.ttl = ttl
        self.loopback = allow_insecure_loopback
        self._lock = threading.Lock()
        self._endpoints: Endpoints | None = None if metadata_url else configured
        self._fetched_at = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Discovery:
        return cls(
            metadata_url=settings.server_metadata_url,
            configured=Endpoints(
                issuer=settings.issuer,
                authorize_url=settings.authorize_url,
                token_url=settings.token_url,
                userinfo_url=settings.userinfo_url,
                revocation_url=settings.revocation_url,
                end_session_url=settings.end_session_url,
                jwks_url=settings.jwks_url,
            ),
            timeout=settings.provider_timeout,
            ttl=settings.metadata_ttl,
            allow_insecure_loopback=settings.allow_insecure_loopback,
        )

    def endpoints(self) -> Endpoints:
        """The endpoints; the first call (and one per ``ttl``) fetches the metadata.

        Raises :class:`ConfigurationError` naming ``TOKENGUARD_SERVER_METADATA_URL`` when the
        document cannot be had and nothing was known before.
        """
        known = self._endpoints
        if known is not None and (
            self.metadata_url is None or time.monotonic() - self._fetched_at < self.ttl
        ):
            return known  # the path every request takes: no lock, no I/O
        with self._lock:
            known = self._endpoints
            if known is not None and time.monotonic() - self._fetched_at < self.ttl:
                return known
            try:
                fresh = self._fetch()
            except ConfigurationError:
                if known is None:
                    raise
                log.warning(
                    "could not refresh the provider metadata (%s); keeping the endpoints known",
                    K.SERVER_METADATA_URL,
                    exc_info=True,
                )
                self._fetched_at = time.monotonic()  # try again after another ttl
                return known
            self._endpoints, self._fetched_at = fresh, time.monotonic()
            return fresh

    def token_url(self) -> str:
        url = self.endpoints().token_url
        if not url:
            raise ConfigurationError(
                f"{K.TOKEN_URL} is required (or a {K.SERVER_METADATA_URL} whose document names"
                " a token_endpoint)"
            )
        return url

    def _fetch(self) -> Endpoints:
        url = str(self.metadata_url)
        key = K.SERVER_METADATA_URL
        try:
            status, body = get_document(url, timeout=self.timeout, max_bytes=MAX_METADATA_BYTES)
        except (requests.RequestException, OSError) as exc:
            raise ConfigurationError(
                f"{key} {url} could not be fetched ({type(exc).__name__}): the provider's"
                " endpoints are unknown"
            ) from None
        if status != 200 or len(body) > MAX_METADATA_BYTES:
            raise ConfigurationError(f"{key} {url} answered {status}, not a metadata document")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            document = None
        if not isinstance(document, dict):
            raise ConfigurationError(f"{key} {url} did not answer a JSON object")
        return self._merge(document)

    def _merge(self, document: Mapping[str, Any]) -> Endpoints:
        """The configured endpoints, completed from ``document``; hand-set keys win."""
        key = K.SERVER_METADATA_URL
        values: dict[str, Any] = {}
        for name, member, config_key in _FIELDS:
            mine = getattr(self.configured, name)
            found = document.get(member)
            if mine:
                values[name] = mine
            elif found is None:
                values[name] = None
            elif not isinstance(found, str):
                raise ConfigurationError(f"{key}: {member} is not a string")
            else:
                where = f"{member} from {key} (set {config_key} to override)"
                values[name] = check_url(found, where, loopback=self.loopback)
        issuer = document.get("issuer")
        if issuer is not None and not isinstance(issuer, str):
            raise ConfigurationError(f"{key}: issuer is not a string")
        values["issuer"] = self.configured.issuer or issuer
        values["iss_parameter"] = (
            document.get("authorization_response_iss_parameter_supported") is True
        )
        return Endpoints(**values)
