"""Authorization code flow with PKCE (S256) and ``state``.

requests-oauthlib's ``pkce="S256"`` keeps the verifier on the ``OAuth2Session`` object,
which does not survive from ``/login`` to ``/callback``; here the verifier and the state
live in the Flask session between the two requests, and are used once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import urlencode

import requests
from oauthlib.oauth2 import OAuth2Error, WebApplicationClient
from requests_oauthlib import OAuth2Session

from .errors import ConfigurationError, LoginError, TokenError
from .provider import ClientCredentials
from .token import Token, normalize


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
        if "error" in args:
            raise LoginError(f"the provider refused the sign-in: {args.get('error')}")
        if not isinstance(pending, dict):
            raise LoginError("no sign-in is in progress in this session")
        state = args.get("state")
        if not state or not hmac.compare_digest(str(state), str(pending.get("state"))):
            raise LoginError("the sign-in's state does not match")
        code = args.get("code")
        if not code:
            raise LoginError("the callback carries no code")
        creds = self.credentials
        oauth = OAuth2Session(
            client=WebApplicationClient(creds.client_id),
            redirect_uri=str(pending.get("redirect_uri")),
        )
        sent_at = time.time()
        try:
            reply = oauth.fetch_token(
                self.token_url,
                code=code,
                code_verifier=str(pending.get("verifier")),
                auth=creds.auth(),
                include_client_id=creds.method != "client_secret_basic",
                client_secret=creds.client_secret if creds.method == "client_secret_post" else None,
                timeout=self.timeout,
            )
            return normalize(reply, now=sent_at, received=True)
        except (OAuth2Error, requests.RequestException, TokenError, ValueError, Warning) as exc:
            raise LoginError(f"the code exchange failed ({type(exc).__name__})") from None
        finally:
            oauth.close()
