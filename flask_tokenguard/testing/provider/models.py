"""The provider's records: users, clients, token families, tokens and authorization codes.

Authlib's mixins are untyped, hence the ``type: ignore`` on the classes built on them.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin

from .config import CLIENT_CREDENTIALS_GRANT, CODE_GRANT, REFRESH_GRANT


@dataclass(frozen=True)
class DemoUser:
    """The resource owner: the demo has no passwords, only subjects."""

    sub: str

    @property
    def name(self) -> str:
        return self.sub.capitalize()

    @property
    def email(self) -> str:
        return f"{self.sub}@example.com"


@dataclass(frozen=True)
class DemoClient(ClientMixin):  # type: ignore[misc]
    """A registered client; ``client_secret is None`` makes it public (auth method ``none``)."""

    client_id: str
    client_secret: str | None = field(repr=False)  # Authlib logs clients with %r
    redirect_uris: tuple[str, ...]
    allow_loopback_redirects: bool
    post_logout_redirect_uris: tuple[str, ...] = ()

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""

    @property
    def is_confidential(self) -> bool:
        return self.client_secret is not None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris or self._is_loopback_uri(redirect_uri)

    def check_post_logout_redirect_uri(self, uri: str) -> bool:
        """RP-initiated logout: a registered URI, or a loopback one like the redirect URIs."""
        return uri in self.post_logout_redirect_uris or self._is_loopback_uri(uri)

    def _is_loopback_uri(self, uri: str) -> bool:
        if not self.allow_loopback_redirects:
            return False
        parts = urlsplit(uri)
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
        # The same at every endpoint that authenticates clients (token, revocation).
        if self.client_secret is None:
            return method == "none"
        return method in {"client_secret_basic", "client_secret_post"}

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type == CLIENT_CREDENTIALS_GRANT:
            return self.is_confidential
        return grant_type in {CODE_GRANT, REFRESH_GRANT}


@dataclass(eq=False)
class Family:
    """Every token descended from one login; reuse detection revokes all of them at once.

    A family is also the provider's session of that sign-in (OpenID Connect): ``sid`` names it
    in ID and logout tokens, ``scope`` is what the sign-in granted (``openid`` in it: every
    refresh returns an ID token too), and ``ended`` says its logout has been announced.
    """

    family_id: str
    client_id: str = ""
    sub: str = ""
    scope: str = ""
    sid: str = field(default_factory=lambda: uuid.uuid4().hex)
    auth_time: float = field(default_factory=time.time)
    revoked: bool = False
    ended: bool = False
    records: list[TokenRecord] = field(default_factory=list, repr=False)

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.scope.split())


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
    #: Revoked on its own (RFC 7009 revocation of the access token): the refresh token lives.
    access_revoked: bool = False
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
        """Is the access token revoked (what Authlib's bearer validator asks)?"""
        return self.access_revoked or self.refresh_revoked()

    def refresh_revoked(self) -> bool:
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
    nonce: str | None = None
    family_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    auth_time: float = field(default_factory=time.time)
    expires_at: float = 0.0

    def get_redirect_uri(self) -> str | None:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope
