"""Authlib glue: the authorization server, the grants, strict PKCE, revocation, bearer tokens.

The grants hand every decision about tokens to :class:`ProviderState`, which takes it under its
lock; Authlib's own token debug lines are filtered out, so no token value is ever logged. The
ID tokens are added to the token replies here, signed by the state's keys (joserfc).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any, Final, cast

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError, UnsupportedTokenTypeError
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint
from flask import Flask, request

from .config import (
    CLIENT_CREDENTIALS_GRANT,
    OPENID_SCOPE,
    REFRESH_GRANT,
    TOKEN_AUTH_METHODS,
)
from .models import AuthCode, DemoClient, DemoUser, TokenRecord
from .state import FoundToken, ProviderState


def issuer_of(state: ProviderState) -> str:
    """The provider's issuer: the configured or served base URL, else this request's."""
    return state.issuer or request.host_url.rstrip("/")


class ProviderAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """Authlib's Flask server, with the state attached and a run-time ``access_ttl``."""

    def __init__(self, app: Flask, state: ProviderState) -> None:
        self.state = state
        super().__init__(app, query_client=state.clients.get, save_token=self._save)

    def create_bearer_token_generator(self, config: Mapping[str, Any]) -> Any:
        generator = super().create_bearer_token_generator(config)
        generator.expires_generator = lambda client, grant_type: self.state.settings.access_ttl
        default_access = generator.access_token_generator

        def access_token(client: Any, grant_type: str, user: Any, scope: str) -> str:
            size = self.state.settings.access_token_size
            if size <= 0:
                return str(default_access(client, grant_type, user, scope))
            return str(generate_token(size))

        generator.access_token_generator = access_token
        return generator

    def _save(self, token: dict[str, Any], oauth_request: Any) -> None:
        """Store the tokens; a session that signed in with ``openid`` gets an ID token too."""
        grant_type = oauth_request.payload.grant_type
        client_id = oauth_request.client.get_client_id()
        nonce: str | None = None
        if grant_type == CLIENT_CREDENTIALS_GRANT:
            # No user and no session: the client acts for itself.
            self.state.store_tokens(
                token,
                client_id=client_id,
                sub=client_id,
                family_id=uuid.uuid4().hex,
                kind="client_credentials",
            )
            return
        if grant_type == REFRESH_GRANT:
            record = self.state.store_tokens(
                token,
                client_id=client_id,
                sub=oauth_request.user.sub,
                family_id=oauth_request.refresh_token.family.family_id,
                kind="refresh",
            )
        else:
            code: AuthCode = oauth_request.authorization_code
            nonce = code.nonce
            record = self.state.store_tokens(
                token,
                client_id=client_id,
                sub=oauth_request.user.sub,
                family_id=code.family_id,
                kind="code",
                auth_time=code.auth_time,
            )
        if OPENID_SCOPE in record.family.scopes:
            token["id_token"] = self.state.id_token(
                record.family, issuer_of(self.state), nonce=nonce
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
                nonce=data.get("nonce") or None,
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


class ClientCredentialsGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    """For the confidential client only (``DemoClient.check_grant_type``); no refresh token."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class RevocationEndpoint(_RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009, client-authenticated like the token endpoint; 200 for an unknown token.

    A refresh token takes its whole family with it; an access token only itself.
    """

    CLIENT_AUTH_METHODS = TOKEN_AUTH_METHODS

    def check_params(self, oauth_request: Any, client: DemoClient) -> None:
        try:
            super().check_params(oauth_request, client)
        except UnsupportedTokenTypeError as error:
            # RFC 7009 2.2.1 errors are RFC 6749 5.2 errors: 400 (Authlib answers 401).
            error.status_code = 400
            raise

    def query_token(self, token_string: str, token_type_hint: str | None) -> FoundToken | None:
        state: ProviderState = self.server.state
        return state.find_token(token_string, token_type_hint)

    def revoke_token(self, token: FoundToken, oauth_request: Any) -> None:
        self.server.state.revoke(token)

    def create_endpoint_response(self, oauth_request: Any) -> Any:
        reply = super().create_endpoint_response(oauth_request)
        self.server.state.count("revocations")  # answered 200, known token or not
        return reply


class IntrospectionEndpoint(_IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662, client-authenticated like the token endpoint; a client sees its own tokens only.

    ``active`` is false for an unknown, expired, revoked or (rotated) used token, or another
    client's. Introspecting a refresh token does not count as a presentation.
    """

    CLIENT_AUTH_METHODS = TOKEN_AUTH_METHODS

    def check_params(self, oauth_request: Any, client: DemoClient) -> None:
        try:
            super().check_params(oauth_request, client)
        except UnsupportedTokenTypeError as error:
            error.status_code = 400  # as for revocation
            raise

    def query_token(self, token_string: str, token_type_hint: str | None) -> FoundToken | None:
        state: ProviderState = self.server.state
        return state.find_token(token_string, token_type_hint)

    def check_permission(self, token: FoundToken, client: DemoClient, oauth_request: Any) -> bool:
        return token.check_client(client)

    def introspect_token(self, token: FoundToken) -> dict[str, Any]:
        record = token.record
        payload: dict[str, Any] = {
            "active": True,
            "client_id": record.client_id,
            "token_type": "Bearer" if token.kind == "access_token" else "refresh_token",
            "scope": record.scope,
            "sub": record.sub,
            "aud": record.client_id,
            "iss": issuer_of(self.server.state),
            "iat": int(record.issued_at),
        }
        if token.kind == "access_token":
            payload["exp"] = int(record.issued_at + record.expires_in)
        return payload

    def create_endpoint_response(self, oauth_request: Any) -> Any:
        reply = super().create_endpoint_response(oauth_request)
        self.server.state.count("introspections")
        return reply


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
    "authlib.oauth2.rfc6749.grants.client_credentials",
)


def silence_authlib_token_logs() -> None:
    for name in _AUTHLIB_TOKEN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTokenDebugLines) for f in logger.filters):
            logger.addFilter(_DropTokenDebugLines())
