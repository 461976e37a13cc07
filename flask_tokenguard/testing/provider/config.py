"""The provider's configuration, fault names and token fingerprints (nothing from Authlib)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from ...keys import digest

#: Fault switches, in the order they are checked.
FAULTS: Final = (
    "invalid_client",
    "unavailable_before",
    "status",
    "hang",
    "drop_after_commit",
    "garbage",
)
#: ``n > 0`` fires a fault for the next ``n`` requests; this value fires it until cleared.
UNTIL_CLEARED: Final = -1

#: The ways :meth:`ProviderState.set_faults` can spoil the next ID token (``id_token_fault``).
ID_TOKEN_FAULTS: Final = (
    "wrong_sub",
    "wrong_iss",
    "wrong_aud",
    "wrong_nonce",
    "expired",
    "bad_signature",
    "alg_none",
    "unknown_kid",
)
#: The defects among :data:`ID_TOKEN_FAULTS` that spoil the signature, not a claim.
SIGNATURE_FAULTS: Final = frozenset({"bad_signature", "alg_none", "unknown_kid"})

REFRESH_GRANT: Final = "refresh_token"
CODE_GRANT: Final = "authorization_code"
CLIENT_CREDENTIALS_GRANT: Final = "client_credentials"
TOKEN_AUTH_METHODS: Final = ["client_secret_basic", "client_secret_post", "none"]

ID_TOKEN_ALG: Final = "RS256"  # noqa: S105 (an algorithm name)
OPENID_SCOPE: Final = "openid"
SCOPES_SUPPORTED: Final = ["openid", "profile", "email", "offline_access"]
CLAIMS_SUPPORTED: Final = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "sid",
    "azp",
    "name",
    "email",
]
BACKCHANNEL_LOGOUT_EVENT: Final = "http://schemas.openid.net/event/backchannel-logout"

#: The host names a loopback-only provider answers to (its ``TRUSTED_HOSTS``).
LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "::1")


def fingerprint(token: str) -> str:
    """Name a token in logs, stats and userinfo without revealing it: 8 hex digits."""
    return digest("demo-provider", token)[:8]


def check_loopback_uri(uri: str | None, what: str) -> str | None:
    """``uri`` if it is an ``http(s)`` URL on a loopback host (or None); ValueError otherwise."""
    if uri is None:
        return None
    if not isinstance(uri, str):
        raise ValueError(f"{what} must be a string or None")
    parts = urlsplit(uri)
    if parts.scheme not in {"http", "https"} or not is_loopback(parts.hostname):
        raise ValueError(f"{what} must be an http(s) URL on a loopback host, not {uri!r}")
    return uri


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``, mapped IPv4)."""
    if not host:
        return False
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


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
    #: Where RP-initiated logout may send the browser back to (both clients; loopback ones are
    #: accepted anyway when ``allow_loopback_redirects``).
    post_logout_redirect_uris: tuple[str, ...] = ()
    default_user: str = "alice"
    code_ttl: int = 600
    #: The ``iss`` of ID and logout tokens and of discovery; None: the server's base URL
    #: (:class:`ProviderServer` sets it once it listens; an app on its own uses the request's).
    issuer: str | None = None
    #: Seconds an ID token is valid (its ``exp - iat``).
    id_token_ttl: int = 300
    #: Seconds a back-channel logout delivery may take, connection and answer together.
    backchannel_logout_timeout: float = 2.0
    # --- run-time settings (ProviderState.set_faults can change them; reset restores them) ---
    access_ttl: int = 20
    #: Characters in an access token (0: Authlib's default, 42): real providers' JWT access
    #: tokens run to several KB, which is what a cookie cannot hold.
    access_token_size: int = 0
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
    #: The clients' back-channel logout URI (OpenID Connect Back-Channel Logout 1.0); loopback
    #: URLs only. None: no client wants logout tokens.
    backchannel_logout_uri: str | None = None


#: The ProviderConfig fields that can change at run time.
SETTINGS: Final = (
    "access_ttl",
    "access_token_size",
    "rotate",
    "reuse_grace",
    "invalid_grant_status",
    "refresh_delay",
    "hang_seconds",
    "status_code",
    "status_body",
    "status_after_consume",
    "status_retry_after",
    "backchannel_logout_uri",
)
