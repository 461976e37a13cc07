"""A Flask test client signed in with a token, for testing apps that use the extension.

Like Flask-Login's ``FlaskLoginClient``::

    from flask_tokenguard.testing import TokenGuardClient

    app.test_client_class = TokenGuardClient
    client = app.test_client(token={"access_token": "...", "refresh_token": "...",
                                    "expires_in": 3600})
    client.get("/api/profile")   # the view sees guard.token

The token is put in the session exactly as a sign-in does (checked, normalised, sealed), with
whatever session interface the app uses (cookie or Flask-Session).
"""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from ..extension import EXTENSION_KEY
from ..rules import RequestState
from ..token import Token


class TokenGuardClient(FlaskClient):
    """``app.test_client(token=...)`` signs the client in; ``client.login(token)`` later."""

    def __init__(self, *args: Any, token: Token | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if token is not None:
            self.login(token)

    def login(self, token: Token, subject: str | None = None) -> Token:
        """Sign this client's session in with ``token``; the normalised token."""
        state = self.application.extensions.get(EXTENSION_KEY)
        if state is None:
            raise RuntimeError("TokenGuard is not registered on this app: call init_app first")
        with self.session_transaction() as session:
            return state.rules.login(session, RequestState(), token, subject)  # type: ignore[no-any-return]

    def logout(self) -> None:
        """Sign this client's session out (as ``guard.logout()`` does)."""
        state = self.application.extensions[EXTENSION_KEY]
        with self.session_transaction() as session:
            state.rules.logout(session, RequestState())
