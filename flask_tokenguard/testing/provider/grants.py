"""Authlib glue: the authorization server, the two grants, strict PKCE, the bearer validator.

The grants hand every decision about tokens to :class:`ProviderState`, which takes it under its
lock; Authlib's own token debug lines are filtered out, so no token value is ever logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, cast

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Flask

from .config import REFRESH_GRANT, TOKEN_AUTH_METHODS
from .models import AuthCode, DemoClient, DemoUser, TokenRecord
from .state import ProviderState


class ProviderAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
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
        if grant_type == REFRESH_GRANT:
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


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS

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


class RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS

    def __init__(self, oauth_request: Any, server: ProviderAuthorizationServer) -> None:
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


class RequireS256(CodeChallenge):  # type: ignore[misc]
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


class BearerValidator(BearerTokenValidator):  # type: ignore[misc]
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


def silence_authlib_token_logs() -> None:
    for name in _AUTHLIB_TOKEN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTokenDebugLines) for f in logger.filters):
            logger.addFilter(_DropTokenDebugLines())
