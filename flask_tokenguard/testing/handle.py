"""A running demo provider as a test sees it: its URLs, credentials, oracle and switches.

Everything goes over HTTP (the ``/_admin/`` API for the oracle and switches), so the handle works
the same for a provider in this process, in another process, or started from the command line:

    provider = ProviderHandle("http://127.0.0.1:5001")
    token = provider.issue(expires_in=0)          # an already expired access token
    ...                                           # drive the app under test
    assert provider.stats()["max_presentations"] == 1

For OpenID Connect: ``discovery_url``/``metadata()``, ``jwks()``, ``rotate_keys()``,
``set_faults(id_token_fault="wrong_aud")``, ``logout(sub=..., sid=...)``, ``end_session_url``,
``revoke_token()`` (RFC 7009), ``introspect()`` (RFC 7662) and ``client_credentials()``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import requests

from ..login import pkce_pair
from .provider.config import FAULTS, ProviderConfig, fingerprint

#: What :meth:`ProviderHandle.clear_faults` disarms: the counted faults and the ID token one.
_ALL_FAULTS = (*FAULTS, "id_token_fault")

__all__ = ["DEFAULT_REDIRECT_URI", "ProviderHandle", "with_expires_at"]

#: Any loopback redirect URI is accepted by the demo provider; nothing needs to listen there.
DEFAULT_REDIRECT_URI = "http://127.0.0.1:9/callback"

_DEFAULTS = ProviderConfig()


class _ServerLike(Protocol):
    """What the handle reads of a :class:`~flask_tokenguard.testing.ProviderServer`."""

    @property
    def url(self) -> str: ...

    config: ProviderConfig


def with_expires_at(token: dict[str, Any]) -> dict[str, Any]:
    """Add ``expires_at`` as a client would on receipt (floor, so 0 s is already expired)."""
    if "expires_in" in token:
        token["expires_at"] = int(time.time()) + int(token["expires_in"])
    return token


class ProviderHandle:
    """Drive a running demo provider over HTTP.

    ``ProviderHandle(server)`` takes a :class:`~flask_tokenguard.testing.ProviderServer` (URL and
    client credentials from it); ``ProviderHandle(url, client_id=..., ...)`` a provider
    elsewhere, with the command line's defaults for the credentials. The admin API answers
    loopback clients only, so the oracle and switches work from the provider's machine.
    """

    def __init__(
        self,
        server: _ServerLike | str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        public_client_id: str | None = None,
        timeout: float = 10,
    ) -> None:
        if isinstance(server, str):
            url, config = server.rstrip("/"), _DEFAULTS
        else:
            url, config = server.url, server.config
        self.url = url
        self.token_url = f"{url}/token"
        self.authorize_url = f"{url}/authorize"
        self.userinfo_url = f"{url}/userinfo"
        self.revocation_url = f"{url}/revoke"
        self.introspection_url = f"{url}/introspect"
        self.end_session_url = f"{url}/end_session"
        self.jwks_url = f"{url}/jwks"
        self.discovery_url = f"{url}/.well-known/openid-configuration"
        self.client_id = client_id or config.client_id
        self.client_secret = client_secret or config.client_secret
        self.public_client_id = public_client_id or config.public_client_id
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<ProviderHandle {self.url}>"

    def _admin(self, method: str, path: str, json: Any = None) -> Any:
        reply = requests.request(
            method, f"{self.url}/_admin/{path}", json=json, timeout=self.timeout
        )
        if reply.status_code >= 400:
            raise AssertionError(f"/_admin/{path}: {reply.status_code} {reply.text}")
        return reply.json()

    # -- the oracle -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The counters (``max_presentations``, ``refreshes``, ``reuse_detected``, ...)."""
        return dict(self._admin("GET", "stats"))

    def presentations(self, refresh_token: str) -> int:
        """How many times this refresh token reached the token endpoint."""
        return int(self.stats()["presentations"].get(fingerprint(refresh_token), 0))

    def issued(self) -> dict[str, list[str]]:
        """``{"access_tokens": [...], "refresh_tokens": [...]}`` issued since the last reset."""
        return dict(self._admin("GET", "issued"))

    def issued_tokens(self) -> list[str]:
        """Every access and refresh token value issued since the last reset, in one list."""
        issued = self.issued()
        return [*issued["access_tokens"], *issued["refresh_tokens"]]

    # -- the switches -----------------------------------------------------------------------

    def set_faults(self, **kwargs: Any) -> dict[str, Any]:
        """Arm faults / change settings (``ProviderState.set_faults``); returns the new state."""
        return dict(self._admin("POST", "faults", kwargs))

    def clear_faults(self) -> None:
        self.set_faults(**dict.fromkeys(_ALL_FAULTS))

    def reset(self, *, drop_tokens: bool = False) -> None:
        """Counters, faults, issued list and settings back to the start (tokens stay valid)."""
        self._admin("POST", "reset", {"drop_tokens": drop_tokens})

    def revoke(self, token: str) -> None:
        """Revoke the family of an access or refresh token (a provider-side logout)."""
        self._admin("POST", "revoke", {"token": token})

    def rotate_keys(self, *, keep_old: bool = True) -> dict[str, Any]:
        """Sign ID tokens with a new key; the old ones stay in the JWKS if ``keep_old``.

        Returns ``{"kid": <the new key's>, "kids": [<every published kid>]}``.
        """
        return dict(self._admin("POST", "keys/rotate", {"keep_old": keep_old}))

    def logout(self, *, sub: str | None = None, sid: str | None = None) -> dict[str, Any]:
        """End sessions at the provider (a sid, every one of a sub, or both must match).

        Their families are revoked and back-channel logout tokens sent. Returns ``{"ended": n,
        "sids": [...], "delivered": m}``.
        """
        return dict(self._admin("POST", "logout", {"sub": sub, "sid": sid}))

    # -- OpenID Connect ---------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """The discovery document (``/.well-known/openid-configuration``)."""
        reply = requests.get(self.discovery_url, timeout=self.timeout)
        reply.raise_for_status()
        return dict(reply.json())

    def jwks(self) -> dict[str, Any]:
        """The published JWK Set (``/jwks``)."""
        reply = requests.get(self.jwks_url, timeout=self.timeout)
        reply.raise_for_status()
        return dict(reply.json())

    # -- tokens -----------------------------------------------------------------------------

    def issue(
        self,
        sub: str = "alice",
        expires_in: int = 0,
        *,
        client_id: str | None = None,
        scope: str = "",
    ) -> dict[str, Any]:
        """Mint a token pair without the browser flow; ``expires_in=0``: already expired."""
        token = self._admin(
            "POST",
            "issue",
            {"sub": sub, "expires_in": expires_in, "client_id": client_id, "scope": scope},
        )
        return with_expires_at(dict(token))

    def login(
        self,
        sub: str = "alice",
        *,
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        public: bool = False,
        scope: str | None = None,
        nonce: str | None = None,
    ) -> dict[str, Any]:
        """The authorization code flow with PKCE, redirect followed by hand; the token reply.

        With ``openid`` in ``scope`` the reply carries an ``id_token`` (with ``nonce``, if given).
        """
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(16)
        client_id = self.public_client_id if public else self.client_id
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "login_hint": sub,
        }
        if scope:
            params["scope"] = scope
        if nonce:
            params["nonce"] = nonce
        reply = requests.get(
            self.authorize_url, params=params, allow_redirects=False, timeout=self.timeout
        )
        if reply.status_code != 302:
            raise AssertionError(f"/authorize: {reply.status_code} {reply.text}")
        query = parse_qs(urlsplit(reply.headers["Location"]).query)
        if query.get("state") != [state]:
            raise AssertionError("/authorize: the state did not come back")
        form = {
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        auth: tuple[str, str] | None = None
        if public:
            form["client_id"] = client_id
        else:
            auth = (self.client_id, self.client_secret)
        reply = requests.post(self.token_url, data=form, auth=auth, timeout=self.timeout)
        if reply.status_code != 200:
            raise AssertionError(f"/token: {reply.status_code} {reply.text}")
        return with_expires_at(reply.json())

    def refresh(
        self,
        refresh_token: str,
        *,
        method: str = "client_secret_basic",
        timeout: float | None = None,
    ) -> requests.Response:
        """One raw refresh request on a fresh connection; the response whatever it is.

        ``method``: ``client_secret_basic``, ``client_secret_post`` or ``none`` (public client).
        """
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return self._client_post(self.token_url, form, method, timeout)

    def client_credentials(
        self,
        scope: str | None = None,
        *,
        method: str = "client_secret_basic",
        timeout: float | None = None,
    ) -> requests.Response:
        """A raw ``client_credentials`` grant request; the response whatever it is."""
        form = {"grant_type": "client_credentials"}
        if scope:
            form["scope"] = scope
        return self._client_post(self.token_url, form, method, timeout)

    def revoke_token(
        self,
        token: str,
        token_type_hint: str | None = None,
        *,
        method: str = "client_secret_basic",
    ) -> requests.Response:
        """RFC 7009 revocation at ``/revoke``, authenticated as the client; the raw response."""
        return self._token_post(self.revocation_url, token, token_type_hint, method)

    def introspect(
        self,
        token: str,
        token_type_hint: str | None = None,
        *,
        method: str = "client_secret_basic",
    ) -> requests.Response:
        """RFC 7662 introspection at ``/introspect``, authenticated as the client."""
        return self._token_post(self.introspection_url, token, token_type_hint, method)

    def _token_post(
        self, url: str, token: str, token_type_hint: str | None, method: str
    ) -> requests.Response:
        form = {"token": token}
        if token_type_hint:
            form["token_type_hint"] = token_type_hint
        return self._client_post(url, form, method, None)

    def _client_post(
        self, url: str, form: dict[str, str], method: str, timeout: float | None
    ) -> requests.Response:
        """POST ``form`` with client authentication ``method``, on a fresh connection.

        ``method``: ``client_secret_basic``, ``client_secret_post`` or ``none`` (public client).
        """
        form = dict(form)
        auth: tuple[str, str] | None = None
        if method == "client_secret_basic":
            auth = (self.client_id, self.client_secret)
        elif method == "client_secret_post":
            form.update(client_id=self.client_id, client_secret=self.client_secret)
        elif method == "none":
            form["client_id"] = self.public_client_id
        else:
            raise ValueError(f"unknown client auth method {method!r}")
        return requests.post(url, data=form, auth=auth, timeout=timeout or self.timeout)

    def userinfo(self, access_token: str) -> requests.Response:
        """GET /userinfo with the bearer token (200 JSON, or 401 if expired/revoked/unknown)."""
        return requests.get(
            self.userinfo_url,
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=self.timeout,
        )
