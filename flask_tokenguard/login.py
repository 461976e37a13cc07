"""Authorization code flow with PKCE (S256) and ``state``.

The verifier and the state live in the Flask session between ``/login`` and ``/callback``
(requests-oauthlib's ``pkce="S256"`` keeps the verifier on an object that does not survive
between the two requests), and are used once. ``state`` is checked before anything else the
callback says, so a forged callback learns nothing and consumes only the pending sign-in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import urlencode

import requests

from .errors import ConfigurationError, LoginError, TokenError
from .provider import ClientCredentials, post_token_request
from .token import Token, accept


def pkce_pair() -> tuple[str, str]:
    """A code verifier (RFC 7636: 43-128 characters) and its S256 challenge."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


class LoginFlow:
    def __init__(
        self,
        *,
        authorize_url: str | None,
        token_url: str,
        credentials: ClientCredentials,
        scope: tuple[str, ...] | None,
        session_key: str,
        timeout: float,
    ) -> None:
        self.authorize_url = authorize_url
        self.token_url = token_url
        self.credentials = credentials
        self.scope = scope
        self.state_key = f"{session_key}_login"
        self.timeout = timeout

    def begin(self, session: MutableMapping[str, Any], redirect_uri: str, **params: str) -> str:
        """The authorization URL to redirect to; remembers state and verifier in ``session``."""
        if not self.authorize_url:
            raise ConfigurationError("TOKENGUARD_AUTHORIZE_URL is required for the login helpers")
        state = secrets.token_urlsafe(24)
        verifier, challenge = pkce_pair()
        session[self.state_key] = {
            "state": state,
            "verifier": verifier,
            "redirect_uri": redirect_uri,
        }
        query: dict[str, str] = {
            "response_type": "code",
            "client_id": self.credentials.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if self.scope:
            query["scope"] = " ".join(self.scope)
        query.update(params)
        separator = "&" if "?" in self.authorize_url else "?"
        return f"{self.authorize_url}{separator}{urlencode(query)}"

    def complete(self, session: MutableMapping[str, Any], args: Mapping[str, str]) -> Token:
        """Exchange the callback's code for a token. Raises :class:`LoginError`."""
        pending = session.pop(self.state_key, None)
        if hasattr(session, "modified"):
            session.modified = True
        if not isinstance(pending, dict):
            raise LoginError("no sign-in is in progress in this session")
        state = args.get("state")
        expected = str(pending.get("state"))
        if not state or not hmac.compare_digest(
            state.encode("utf-8", "surrogatepass"), expected.encode("utf-8")
        ):
            raise LoginError("the sign-in's state does not match")
        if "error" in args:
            raise LoginError("the provider refused the sign-in")
        code = args.get("code")
        if not code:
            raise LoginError("the callback carries no code")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": str(pending.get("redirect_uri")),
            "code_verifier": str(pending.get("verifier")),
        }
        sent_at = time.time()
        try:
            response = post_token_request(
                self.token_url, form, self.credentials, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise LoginError(f"the code exchange failed ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise LoginError(
                f"the code exchange failed: the token endpoint answered {response.status_code}"
            )
        try:
            return accept(json.loads(response.text), received_at=sent_at)
        except (ValueError, TokenError, RecursionError) as exc:
            raise LoginError(f"the code exchange failed ({type(exc).__name__})") from None
