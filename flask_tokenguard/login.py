"""Authorization code flow with PKCE (S256), ``state`` and, for OpenID Connect, ``nonce``.

Each sign-in in flight is kept in the session under its ``state`` (the verifier, the nonce, the
redirect URI, where to go afterwards): requests-oauthlib's ``pkce="S256"`` keeps the verifier
on an object that does not survive between ``/login`` and ``/callback``. Several may be in
flight (two tabs, a retry while the provider's page is slow): at most :data:`MAX_PENDING`, the
oldest dropped, each for :data:`PENDING_TTL` seconds, each used once. ``state`` is checked
before anything else the callback says, so a forged or stray callback learns nothing and
consumes nothing but its own pending sign-in.

The code exchange runs in a helper thread under the same total deadline as a refresh, and
anything unexpected in it is a :class:`LoginError`, never a 500.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

from .config import ConfigKeys as K
from .discovery import Discovery
from .errors import ConfigurationError, IdTokenError, LoginError, TokenError
from .idtoken import IdTokens
from .provider import ClientCredentials, post_token_request
from .token import Token, accept

log = logging.getLogger("flask_tokenguard")

#: Sign-ins in flight per session; a new one beyond this drops the oldest.
MAX_PENDING = 5
#: Seconds a sign-in may take between the redirect to the provider and the callback.
PENDING_TTL = 600.0
#: The longest ``next`` path kept.
MAX_NEXT_CHARS = 2048
_OAUTH_ERROR = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def safe_next(value: Any) -> str | None:
    """``value`` if it is a path on this host (``/...``), else None.

    Refused: absolute URLs, scheme-relative ``//host``, backslashes (browsers read ``/\\host``
    as ``//host``), control characters and whitespace at the ends.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_NEXT_CHARS:
        return None
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or value != value.strip():
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    return value


@dataclass(frozen=True)
class SignIn:
    """A completed sign-in: the token, the ID token's claims (``{}`` without OpenID Connect),
    and the ``next`` path the sign-in started with."""

    token: Token = field(repr=False)
    claims: dict[str, Any] = field(default_factory=dict)
    next: str | None = None


def pkce_pair() -> tuple[str, str]:
    """A code verifier (RFC 7636: 43-128 characters) and its S256 challenge."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


class LoginFlow:
    def __init__(
        self,
        *,
        discovery: Discovery,
        credentials: ClientCredentials,
        scope: tuple[str, ...] | None,
        session_key: str,
        timeout: float,
        id_tokens: IdTokens | None = None,
        authorize_params: Mapping[str, str] | None = None,
    ) -> None:
        self.discovery = discovery
        self.credentials = credentials
        self.scope = scope
        self.state_key = f"{session_key}_login"
        self.timeout = timeout
        self.id_tokens = id_tokens
        self.authorize_params = dict(authorize_params or {})

    @property
    def openid(self) -> bool:
        """Whether sign-ins ask for an ID token (``openid`` in ``TOKENGUARD_SCOPE``)."""
        return self.scope is not None and "openid" in self.scope

    def begin(
        self,
        session: MutableMapping[str, Any],
        redirect_uri: str,
        *,
        next_path: str | None = None,
        **params: str,
    ) -> str:
        """The authorization URL to redirect to; remembers this sign-in in ``session``."""
        authorize_url = self.discovery.endpoints().authorize_url
        if not authorize_url:
            raise ConfigurationError(
                f"{K.AUTHORIZE_URL} (or {K.SERVER_METADATA_URL}) is required for the login helpers"
            )
        state = secrets.token_urlsafe(24)
        verifier, challenge = pkce_pair()
        entry: dict[str, Any] = {
            "verifier": verifier,
            "redirect_uri": redirect_uri,
            "at": time.time(),
        }
        query: dict[str, str] = {
            "response_type": "code",
            "client_id": self.credentials.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if self.openid:
            entry["nonce"] = query["nonce"] = secrets.token_urlsafe(24)
        if next_path is not None:
            entry["next"] = next_path
        if self.scope:
            query["scope"] = " ".join(self.scope)
        query.update(self.authorize_params)
        query.update(params)
        pending = self._pending(session)
        pending[state] = entry
        while len(pending) > MAX_PENDING:
            oldest = min(pending, key=lambda s: float(pending[s].get("at", 0)))
            del pending[oldest]
        session[self.state_key] = pending
        _modified(session)
        separator = "&" if "?" in authorize_url else "?"
        return f"{authorize_url}{separator}{urlencode(query)}"

    def complete(self, session: MutableMapping[str, Any], args: Mapping[str, str]) -> SignIn:
        """Exchange the callback's code for a token (ID token validated). Raises LoginError."""
        state = args.get("state")
        if not state or not state.isascii() or len(state) > 256:
            raise LoginError("the sign-in's state does not match")
        pending = self._pending(session)
        entry = pending.pop(state, None)  # this sign-in, and only this one, is used up
        if entry is None:
            if not pending:
                raise LoginError("no sign-in is in progress in this session")
            raise LoginError("the sign-in's state does not match")
        session[self.state_key] = pending
        _modified(session)
        endpoints = self.discovery.endpoints()
        if endpoints.iss_parameter or ("iss" in args and endpoints.issuer):
            # RFC 9207: which issuer answered, against mix-up attacks. Required when the
            # metadata promises it; checked whenever it comes and the issuer is known.
            if not endpoints.issuer or args.get("iss") != endpoints.issuer:
                raise LoginError("the authorization response comes from another issuer")
        if "error" in args:
            error = args.get("error", "")
            code = error if _OAUTH_ERROR.fullmatch(error) else "invalid"
            description = str(args.get("error_description", ""))[:200]
            log.warning(
                "the provider refused the sign-in: %s (%r)",
                code,
                description.encode("ascii", "replace"),
            )
            raise LoginError("the provider refused the sign-in")
        auth_code = args.get("code")
        if not auth_code:
            raise LoginError("the callback carries no code")
        form = {
            "grant_type": "authorization_code",
            "code": auth_code,
            "redirect_uri": str(entry.get("redirect_uri")),
            "code_verifier": str(entry.get("verifier")),
        }
        token = self._exchange(form)
        claims: dict[str, Any] = {}
        nonce = entry.get("nonce")
        if self.id_tokens is not None and (nonce is not None or "id_token" in token):
            try:
                claims = self.id_tokens.validate(
                    token.get("id_token"), nonce=nonce if isinstance(nonce, str) else None
                )
            except IdTokenError as exc:
                log.warning("the sign-in's ID token was refused: %s", exc)
                raise LoginError(f"the sign-in's ID token is not valid: {exc}") from None
        next_path = safe_next(entry.get("next"))
        return SignIn(token=token, claims=claims, next=next_path)

    def _exchange(self, form: dict[str, str]) -> Token:
        """The code exchange, under a total deadline of the provider timeout."""
        token_url = self.discovery.token_url()
        done = threading.Event()
        result: list[Token | LoginError] = []

        def run() -> None:
            try:
                result.append(self._post(token_url, form))
            except LoginError as exc:
                result.append(exc)
            except Exception as exc:  # whatever it is, a failed sign-in and never a 500
                result.append(LoginError(f"the code exchange failed ({type(exc).__name__})"))
            finally:
                done.set()

        threading.Thread(target=run, name="tokenguard-login", daemon=True).start()
        if not done.wait(self.timeout) or not result:
            raise LoginError(f"the code exchange did not finish within {self.timeout:g}s")
        outcome = result[0]
        if isinstance(outcome, LoginError):
            raise outcome
        return outcome

    def _post(self, token_url: str, form: dict[str, str]) -> Token:
        sent_at = time.time()
        try:
            response = post_token_request(token_url, form, self.credentials, timeout=self.timeout)
        except requests.RequestException as exc:
            raise LoginError(f"the code exchange failed ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise LoginError(
                f"the code exchange failed: the token endpoint answered {response.status_code}"
            )
        try:
            return accept(json.loads(response.text), received_at=sent_at)
        except (ValueError, TokenError, RecursionError, OverflowError) as exc:
            raise LoginError(f"the code exchange failed ({type(exc).__name__})") from None

    def _pending(self, session: MutableMapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The sign-ins in flight, without the expired or malformed ones."""
        raw = session.get(self.state_key)
        if not isinstance(raw, dict):
            return {}
        oldest = time.time() - PENDING_TTL
        return {
            state: entry
            for state, entry in raw.items()
            if isinstance(state, str)
            and isinstance(entry, dict)
            and isinstance(entry.get("at"), (int, float))
            and entry["at"] >= oldest
        }


def _modified(session: MutableMapping[str, Any]) -> None:
    if hasattr(session, "modified"):
        session.modified = True
