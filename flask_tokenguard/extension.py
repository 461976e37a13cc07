"""The Flask glue: ``TokenGuard``, its hooks, the decorator and the handlers.

Everything that decides anything lives in plain classes (``Coordinator``, ``SessionTokens``,
the stores); this module wires them to an app and to the request cycle. Per-app state sits
in ``app.extensions["tokenguard"]``; per-request state on ``g``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import requests
from flask import Flask, Response, current_app, g, jsonify, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from werkzeug.local import LocalProxy
from werkzeug.wrappers import Response as BaseResponse

from .config import DEFAULTS, ConfigKeys, Settings
from .coordinator import Coordinator, Policy
from .deadline import Deadline
from .errors import (
    ConfigurationError,
    ProviderConfigurationError,
    RefreshAmbiguous,
    RefreshDefinitive,
    RefreshError,
    StoreError,
    TokenError,
    TokenGuardError,
)
from .keys import KeyNames
from .login import LoginFlow
from .logs import install_redaction
from .provider import ClientCredentials, RefreshClient
from .records import RecordCodec
from .sealing import Sealer
from .session import STATE_AMBIGUOUS, STATE_OK, Record, SessionTokens
from .signals import token_refresh_failed, token_refreshed
from .stores.base import Store
from .stores.uri import store_from_uri
from .token import Token, is_due, is_expired

log = logging.getLogger("flask_tokenguard")

F = TypeVar("F", bound=Callable[..., Any])
EXTENSION_KEY = "tokenguard"
_G = "_tokenguard"
_EXEMPT_ATTR = "_tokenguard_exempt"


@dataclass(slots=True)
class RequestState:
    """What this request learned about its token (kept on ``g``)."""

    record: Record | None = None
    token: Token | None = None
    #: the refresh token the request started with, once opened
    initial_refresh_token: str | None = None
    error: TokenGuardError | None = None
    refreshed: bool = False
    checked: bool = False
    deadline: Deadline | None = field(default=None, repr=False)


@dataclass
class _AppState:
    settings: Settings
    tokens: SessionTokens
    coordinator: Coordinator
    login: LoginFlow
    store: Store
    guard: TokenGuard
    #: endpoint -> whether the hook skips it (an endpoint's view and blueprints never change)
    exempt: dict[str | None, bool] = field(default_factory=dict)


class TokenGuard:
    """Keeps the session's OAuth token fresh, with one refresh per refresh token everywhere.

    ``TokenGuard(app)`` or ``guard = TokenGuard()`` then ``guard.init_app(app)`` in a factory.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._unauthorized: Callable[[], ResponseReturnValue] | None = None
        self._unavailable: Callable[[RefreshError | StoreError], ResponseReturnValue] | None = None
        if app is not None:
            self.init_app(app)

    # -- setup -----------------------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "TokenGuard is already registered on this app: call init_app once per app"
                " (a second registration would refresh every token twice)."
            )
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        settings = Settings.from_config(app.config)
        secrets = self._secrets(app, settings)
        keys = KeyNames(settings.client_id, settings.key_prefix)
        store = store_from_uri(settings.cache_url, instance_path=app.instance_path)
        credentials = ClientCredentials(
            settings.client_id, settings.client_secret, settings.client_auth
        )
        coordinator = Coordinator(
            RefreshClient(
                settings.token_url, credentials, default_retry_after=settings.retry_after
            ),
            store,
            keys,
            RecordCodec(Sealer(secrets, "store")),
            Policy.from_settings(settings),
        )
        state = app.extensions[EXTENSION_KEY] = _AppState(
            guard=self,
            settings=settings,
            tokens=SessionTokens(settings.session_key, Sealer(secrets, "session"), keys),
            coordinator=coordinator,
            login=LoginFlow(
                authorize_url=settings.authorize_url,
                token_url=settings.token_url,
                credentials=credentials,
                scope=settings.scope,
                session_key=settings.session_key,
                timeout=settings.provider_timeout,
            ),
            store=store,
        )
        install_redaction()
        if not store.shared and _looks_multiprocess():
            log.warning(
                "%s=simple:// coordinates the threads of one process only, and this server"
                " runs several: use file:// (one host) or redis:// (several hosts)",
                ConfigKeys.CACHE_URL,
            )
        # The hooks get this app's state bound in: no lookup through current_app per request.
        app.before_request(functools.partial(self._before_request, state))
        app.after_request(functools.partial(self._after_request, state))

    @staticmethod
    def _secrets(app: Flask, settings: Settings) -> list[str | bytes]:
        if settings.secret is not None:
            return [settings.secret, *settings.secret_fallbacks]
        if not app.secret_key:
            raise ConfigurationError(
                f"{ConfigKeys.SECRET} or SECRET_KEY is required: tokens are sealed at rest"
            )
        flask_fallbacks = app.config.get("SECRET_KEY_FALLBACKS") or []
        return [app.secret_key, *settings.secret_fallbacks, *flask_fallbacks]

    @staticmethod
    def _state() -> _AppState:
        return _app_state()

    # -- handlers --------------------------------------------------------------------------

    def unauthorized_handler(
        self, callback: Callable[[], ResponseReturnValue]
    ) -> Callable[[], ResponseReturnValue]:
        """Replace the response for "sign-in needed" (as Flask-Login's ``unauthorized_handler``)."""
        self._unauthorized = callback
        return callback

    def unavailable_handler(
        self, callback: Callable[[RefreshError | StoreError], ResponseReturnValue]
    ) -> Callable[[RefreshError | StoreError], ResponseReturnValue]:
        """Replace the 503 response for "try again later" (transient, timeout, store down)."""
        self._unavailable = callback
        return callback

    def unauthorized(self) -> ResponseReturnValue:
        if self._unauthorized is not None:
            return cast(ResponseReturnValue, current_app.ensure_sync(self._unauthorized)())
        settings = self._state().settings
        error = self.error
        message = str(error) if isinstance(error, TokenGuardError) else "sign-in required"
        if settings.login_view and request.accept_mimetypes.best == "text/html":
            return redirect(url_for(settings.login_view))
        response = jsonify(error="unauthorized", message=message)
        response.status_code = 401
        return response

    def unavailable(self, error: RefreshError | StoreError) -> ResponseReturnValue:
        if self._unavailable is not None:
            return cast(ResponseReturnValue, current_app.ensure_sync(self._unavailable)(error))
        retry = getattr(error, "retry_after", None) or self._state().settings.retry_after
        outcome = getattr(error, "outcome", "store")
        response = jsonify(error="temporarily_unavailable", outcome=outcome, message=str(error))
        response.status_code = 503
        response.headers["Retry-After"] = str(max(1, math.ceil(retry)))
        return response

    # -- views -----------------------------------------------------------------------------

    def exempt(self, view: F) -> F:
        """Mark a view so the ``before_request`` hook skips it (login, callback, health checks)."""
        setattr(view, _EXEMPT_ATTR, True)
        return view

    def token_required(self, view: F) -> F:
        """Protect a view: a fresh token, or the unauthorized (401) or unavailable (503) answer."""

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if request.method == "OPTIONS":
                return current_app.ensure_sync(view)(*args, **kwargs)
            state = self._state()
            request_state = self._refresh(state)
            if request_state.token is None and request_state.record is not None:
                self._open(state, request_state)  # a blob that does not open is no token
            denied = self._verdict(state, request_state)
            if denied is not None:
                return denied
            return current_app.ensure_sync(view)(*args, **kwargs)

        return cast(F, wrapper)

    @property
    def token(self) -> Token | None:
        """The current request's token (opened from the session), or None."""
        state = self._state()
        request_state = self._refresh(state)
        if request_state.token is None and request_state.record is not None:
            self._open(state, request_state)
        return request_state.token

    def peek(self) -> dict[str, Any] | None:
        """The session token's status without opening or refreshing it: for status pages.

        ``{"expires_at": <epoch seconds or None>, "state": "ok" | "ambiguous"}``, or None.
        """
        try:
            record = self._state().tokens.peek(session)
        except TokenError:
            return None
        return None if record is None else {"expires_at": record.exp, "state": record.state}

    @property
    def error(self) -> TokenGuardError | None:
        """Why this request has no usable token, if it has none."""
        state = g.get(_G)
        return state.error if isinstance(state, RequestState) else None

    def requests_session(self) -> requests.Session:
        """A ``requests.Session`` that sends the current access token as a bearer token."""
        token = self.token
        http = requests.Session()
        if token is not None:
            http.headers["Authorization"] = f"Bearer {token['access_token']}"
        return http

    # -- login helpers ---------------------------------------------------------------------

    def authorize_redirect(self, redirect_uri: str, **params: str) -> BaseResponse:
        """Redirect to the provider's authorization endpoint (code flow, PKCE S256, state)."""
        url = self._state().login.begin(session, redirect_uri, **params)
        return redirect(url)

    def authorize_callback(self) -> Token:
        """Exchange the callback's code and store the token; raises :class:`LoginError`."""
        token = self._state().login.complete(session, request.args)
        self.store_token(token)
        return token

    def store_token(self, token: Token) -> None:
        """Put a token in the session (after a login of your own, for instance)."""
        request_state = self._request_state()
        self._keep(self._state(), request_state, token)
        request_state.error = None
        request_state.initial_refresh_token = token.get("refresh_token")

    def logout(self) -> None:
        """Remove the token; a refresh still in flight elsewhere will not bring it back."""
        state = self._state()
        request_state = self._request_state()
        try:
            record = state.tokens.peek(session)
        except TokenError:
            record = None
        if record != request_state.record:
            request_state.record, request_state.token = record, None
        token = self._open(state, request_state)
        current = token.get("refresh_token") if token is not None else None
        for refresh_token in {request_state.initial_refresh_token, current}:
            if refresh_token:
                state.coordinator.revoke(refresh_token)
        state.tokens.clear(session)
        request_state.record = request_state.token = request_state.initial_refresh_token = None

    # -- the request cycle -----------------------------------------------------------------

    def _request_state(self) -> RequestState:
        state = g.get(_G)
        if not isinstance(state, RequestState):
            state = RequestState()
            setattr(g, _G, state)
        return state

    @staticmethod
    def _is_exempt(state: _AppState) -> bool:
        endpoint = request.endpoint
        exempt = state.exempt.get(endpoint)
        if exempt is None:
            view = current_app.view_functions.get(endpoint) if endpoint else None
            exempt = state.exempt[endpoint] = (
                endpoint is None
                or endpoint == "static"
                or endpoint.endswith(".static")
                or endpoint in state.settings.exempt
                or any(bp in state.settings.exempt for bp in request.blueprints)
                or bool(getattr(view, _EXEMPT_ATTR, False))
            )
        return exempt

    def _before_request(self, state: _AppState) -> None:
        if state.settings.auto_refresh and not self._is_exempt(state):
            self._refresh(state)

    def refresh_if_needed(self) -> RequestState:
        """Bring the session's token up to date, once per request (the hook calls this)."""
        return self._refresh(self._state())

    def refresh_now(self) -> Token | None:
        """Refresh whatever the expiry says: the API refused the access token, or the provider
        gives no expiry. Shares the refresh with every request that needs it, like the hook.

        The new token, or None (``guard.error`` says why; the session reflects the outcome).
        """
        request_state = self._request_state()
        request_state.checked, request_state.refreshed, request_state.error = False, False, None
        self._refresh(self._state(), force=True)
        if request_state.refreshed:
            return request_state.token
        if request_state.error is None:
            record = request_state.record
            request_state.error = (
                RefreshDefinitive("there is no token to refresh")
                if record is None
                else RefreshAmbiguous("this refresh token may have been used: sign in again")
                if record.state == STATE_AMBIGUOUS
                else RefreshDefinitive("the token has no refresh token")
            )
        return None

    def _refresh(self, state: _AppState, *, force: bool = False) -> RequestState:
        request_state = self._request_state()
        if request_state.checked:
            return request_state
        request_state.checked = True
        try:
            record = request_state.record = state.tokens.peek(session)
        except TokenError as exc:
            self._drop(state, request_state, exc)
            return request_state
        if record is None or not (force or is_due(record.exp, state.settings.leeway)):
            return request_state  # the fast path: no I/O, nothing opened
        if record.state == STATE_AMBIGUOUS:
            return request_state  # never presented again; the access token serves until expiry
        token = self._open(state, request_state)
        if token is None:
            return request_state
        request_state.initial_refresh_token = token.get("refresh_token")
        if not request_state.initial_refresh_token:
            return request_state  # nothing to refresh with; the decorator decides
        request_state.deadline = Deadline(state.settings.wait_timeout)
        app = current_app._get_current_object()  # type: ignore[attr-defined]

        def announce(new: Token | None, error: RefreshError | None) -> None:
            if new is not None:
                token_refreshed.send(app, token=new)
            else:
                token_refresh_failed.send(app, error=error)

        try:
            new, _called = state.coordinator.refresh(token, request_state.deadline, announce)
        except RefreshDefinitive as exc:
            self._drop(state, request_state, exc)
        except RefreshAmbiguous as exc:
            log.warning("refresh outcome unknown (%s): this refresh token is not used again", exc)
            self._keep(state, request_state, token, STATE_AMBIGUOUS)
            request_state.error = exc
        except ProviderConfigurationError as exc:
            log.error("the provider refused this client (%s): check the client settings", exc)
            request_state.error = exc
        except (RefreshError, StoreError) as exc:
            log.warning("refresh not done (%s); the token is kept", exc)
            request_state.error = exc
        else:
            if state.coordinator.is_revoked(token["refresh_token"]):
                self._drop(state, request_state, RefreshDefinitive("signed out during the refresh"))
                return request_state
            self._keep(state, request_state, new)
            request_state.refreshed = True
        return request_state

    def _after_request(self, state: _AppState, response: Response) -> Response:
        """The lost-update guard: never let this response store a token older than the newest.

        Costs I/O only when the session's token is inside its refresh window (only then can
        someone else have refreshed it) or when this request refreshed.
        """
        raw = session.get(state.tokens.key)
        if raw is None:
            return response
        request_state = g.get(_G)
        refreshed = isinstance(request_state, RequestState) and request_state.refreshed
        exp = raw.get("exp") if isinstance(raw, dict) else None
        if (
            not refreshed
            and isinstance(exp, (int, float))
            and not is_due(exp, state.settings.leeway)
        ):
            return response
        try:
            record = state.tokens.peek(session)
            if record is None or record.state == STATE_AMBIGUOUS:
                return response
            known = isinstance(request_state, RequestState) and request_state.record == record
            token = (
                request_state.token
                if known and request_state.token is not None
                else state.tokens.open(session, record)
            )
        except TokenError:
            return response  # the next request discards it, with a log line
        current = token.get("refresh_token")
        if not isinstance(current, str):
            return response
        candidates = {current}
        if isinstance(request_state, RequestState) and request_state.initial_refresh_token:
            candidates.add(request_state.initial_refresh_token)
        if any(state.coordinator.is_revoked(rt) for rt in candidates):
            state.tokens.clear(session)
            return response
        newest = state.coordinator.newest(current)
        if newest is not None and newest.get("refresh_token") != current:
            state.tokens.save(session, newest)
        return response

    def _open(self, state: _AppState, request_state: RequestState) -> Token | None:
        """Open the session's token (once per request); a blob that does not open is dropped."""
        if request_state.token is None and request_state.record is not None:
            try:
                request_state.token = state.tokens.open(session, request_state.record)
            except TokenError as exc:
                self._drop(state, request_state, exc)
        return request_state.token

    @staticmethod
    def _keep(
        state: _AppState, request_state: RequestState, token: Token, mark: str = STATE_OK
    ) -> None:
        state.tokens.save(session, token, state=mark)
        request_state.token = token
        request_state.record = state.tokens.peek(session)

    @staticmethod
    def _drop(state: _AppState, request_state: RequestState, error: TokenGuardError) -> None:
        if isinstance(error, TokenError):
            log.warning("discarding the session's token: %s", error)
        state.tokens.clear(session)
        request_state.error = error
        request_state.record = request_state.token = None

    def _verdict(self, state: _AppState, request_state: RequestState) -> ResponseReturnValue | None:
        """None when the view may run; else the response that ends the request."""
        record = request_state.record
        error = request_state.error
        if record is None:
            return self.unauthorized()
        expired = is_expired(record.exp)
        if record.state == STATE_AMBIGUOUS:
            if expired:
                self._drop(
                    state, request_state, error or RefreshAmbiguous("sign-in required again")
                )
                return self.unauthorized()
            return None
        if expired and isinstance(error, (RefreshError, StoreError)):
            return self.unavailable(error)
        if expired:
            # Nothing could refresh it (there is no refresh token): sign in again.
            self._drop(state, request_state, RefreshDefinitive("the access token expired"))
            return self.unauthorized()
        return None


def _looks_multiprocess() -> bool:
    """A best guess that this app is served by several worker processes."""
    argv0 = sys.argv[0] if sys.argv else ""
    workers = os.environ.get("WEB_CONCURRENCY", "")
    return any(name in argv0 for name in ("gunicorn", "uwsgi")) or (
        workers.isdigit() and int(workers) > 1
    )


def _app_state() -> _AppState:
    try:
        return cast(_AppState, current_app.extensions[EXTENSION_KEY])
    except KeyError:
        raise RuntimeError(
            "TokenGuard is not registered on this app. Did you forget to call init_app?"
        ) from None


def _current_token() -> Token | None:
    return _app_state().guard.token


#: The current request's token dict (or None), like ``guard.token`` without the guard at hand.
current_token: Token | None = cast("Token | None", LocalProxy(_current_token))
