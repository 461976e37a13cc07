"""The Flask glue: ``TokenGuard``, its hooks, the decorator and the handlers.

Every decision lives in plain classes (:class:`~flask_tokenguard.rules.TokenRules`, the
coordinator, the stores); this module wires them to an app and to the request cycle and maps
their verdicts to responses. Per-app state sits in ``app.extensions["tokenguard"]``,
per-request state on ``g``.

A request that carries no session cookie, or whose endpoint is exempt, never touches the
session here: no ``Vary: Cookie``, no ``Set-Cookie``, no session store round trip.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shlex
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import requests
from flask import (
    Blueprint,
    Flask,
    current_app,
    g,
    jsonify,
    redirect,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from werkzeug.routing import BuildError
from werkzeug.wrappers import Response as BaseResponse

from .apptoken import AppTokens
from .bearer import BearerSession
from .cli import tokenguard_cli
from .config import DEFAULTS, ConfigKeys, Settings, check_secret, unknown_keys
from .coordinator import Coordinator, Policy
from .errors import (
    ConfigurationError,
    RefreshError,
    StoreError,
    StoreUnavailable,
    TokenGuardError,
)
from .keys import KeyNames
from .login import LoginFlow
from .logs import install_redaction
from .provider import ClientCredentials, RefreshClient
from .records import RecordCodec
from .rules import Decision, RequestState, TokenHolder, TokenRules, Verdict
from .sealing import Sealer
from .session import SessionTokens
from .signals import token_refresh_failed, token_refreshed
from .stores.base import Store
from .stores.uri import store_from_uri
from .tickets import TicketTokens
from .token import Token

if TYPE_CHECKING:
    from .grants import GrantStore

log = logging.getLogger("flask_tokenguard")

F = TypeVar("F", bound=Callable[..., Any])
EXTENSION_KEY = "tokenguard"
_G = "_tokenguard"
_EXEMPT_ATTR = "_tokenguard_exempt"
_GRANT_STORE_LOCK = threading.Lock()

#: What clients are told; details (hosts, provider error text) go to the log only.
UNAUTHORIZED_MESSAGE = "sign-in required"
UNAVAILABLE_MESSAGE = "the sign-in could not be renewed just now; try again shortly"


@dataclass(eq=False)
class _AppState:
    """One app's wiring (``app.extensions["tokenguard"]``)."""

    guard: TokenGuard
    settings: Settings
    rules: TokenRules
    login: LoginFlow
    store: Store
    app_tokens: AppTokens
    #: endpoint -> whether the hook skips it (an endpoint's view and blueprints never change)
    exempt: dict[str | None, bool] = field(default_factory=dict)
    #: opened on first use (``TokenGuard.grant_store``)
    grant_store: GrantStore | None = None

    def __repr__(self) -> str:
        return f"<TokenGuard state client_id={self.settings.client_id!r} store={self.store!r}>"


class TokenGuard:
    """Keeps the session's OAuth token fresh, with one refresh per refresh token everywhere.

    ``TokenGuard(app)`` or ``guard = TokenGuard()`` then ``guard.init_app(app)`` in a factory.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._unauthorized: Callable[[], ResponseReturnValue] | None = None
        self._unavailable: Callable[[RefreshError | StoreError], ResponseReturnValue] | None = None
        self._exempt_blueprints: set[str] = set()
        if app is not None:
            self.init_app(app)

    # -- setup -----------------------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "TokenGuard is already registered on this app: call init_app once per app"
                " (a second registration would refresh every token twice)."
            )
        for line in unknown_keys(app.config):
            log.warning("%s", line)
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        settings = Settings.from_config(app.config)
        secrets = self._secrets(app, settings)
        keys = KeyNames(settings.client_id, settings.key_prefix)
        store = store_from_uri(settings.cache_url, instance_path=app.instance_path)
        credentials = ClientCredentials(
            settings.client_id, settings.client_secret, settings.client_auth
        )
        client = RefreshClient(
            settings.token_url, credentials, default_retry_after=settings.retry_after
        )
        codec = RecordCodec(Sealer(secrets, "store"))
        coordinator = Coordinator(client, store, keys, codec, Policy.from_settings(settings))
        tokens: TokenHolder
        if settings.token_storage == "store":  # noqa: S105 - a storage mode
            tokens = TicketTokens(
                settings.session_key,
                store,
                keys,
                secrets,
                settings.leeway,
                lifetime=app.permanent_session_lifetime.total_seconds(),
            )
        else:
            tokens = SessionTokens(
                settings.session_key, Sealer(secrets, "session"), keys, settings.leeway
            )
        state = app.extensions[EXTENSION_KEY] = _AppState(
            guard=self,
            settings=settings,
            rules=TokenRules(tokens, coordinator, settings.wait_timeout),
            login=LoginFlow(
                authorize_url=settings.authorize_url,
                token_url=settings.token_url,
                credentials=credentials,
                scope=settings.scope,
                session_key=settings.session_key,
                timeout=settings.provider_timeout,
            ),
            store=store,
            app_tokens=AppTokens(
                coordinator,
                client,
                store,
                keys,
                codec,
                leeway=settings.leeway,
                wait_timeout=settings.wait_timeout,
                min_renew_interval=settings.retry_after,
                confidential=settings.client_auth != "none",
            ),
        )
        install_redaction()
        self._check_store(store)
        # The hooks get this app's state bound in: no lookup through current_app per request.
        app.before_request(functools.partial(self._before_request, state))
        app.after_request(functools.partial(self._after_request, state))
        app.cli.add_command(tokenguard_cli)

    @staticmethod
    def _secrets(app: Flask, settings: Settings) -> list[str | bytes]:
        if settings.secret is not None:
            return [settings.secret, *settings.secret_fallbacks]
        secret_key = check_secret(app.config.get("SECRET_KEY"), "SECRET_KEY")
        if secret_key is None:
            raise ConfigurationError(
                f"{ConfigKeys.SECRET} or SECRET_KEY is required: tokens are sealed at rest"
            )
        flask_fallbacks = app.config.get("SECRET_KEY_FALLBACKS") or []
        return [secret_key, *settings.secret_fallbacks, *flask_fallbacks]

    @staticmethod
    def _check_store(store: Store) -> None:
        if not store.shared and _workers() > 1:
            log.warning(
                "%s=simple:// coordinates the threads of one process only, and this server"
                " runs several: use file:// (one host) or redis:// (several hosts)",
                ConfigKeys.CACHE_URL,
            )
        try:
            store.ping()
        except StoreUnavailable as exc:
            log.warning(
                "the shared store %r (%s) cannot be reached now (%s): requests that need a"
                " refresh will wait for it",
                store,
                ConfigKeys.CACHE_URL,
                type(exc.__cause__ or exc).__name__,
            )

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
        """The "sign-in needed" answer: the handler's, else 401 JSON or a login redirect."""
        if self._unauthorized is not None:
            return cast(ResponseReturnValue, current_app.ensure_sync(self._unauthorized)())
        login_view = self._state().settings.login_view
        if login_view and request.accept_mimetypes.best == "text/html":
            try:
                return redirect(url_for(login_view))
            except BuildError:
                raise ConfigurationError(
                    f"{ConfigKeys.LOGIN_VIEW} {login_view!r} is not an endpoint of this app"
                    " (use the endpoint name, e.g. 'login' or 'auth.login')"
                ) from None
        error = self.error
        outcome = error.outcome.value if isinstance(error, RefreshError) else None
        response = jsonify(error="unauthorized", outcome=outcome, message=UNAUTHORIZED_MESSAGE)
        response.status_code = 401
        return response

    def unavailable(self, error: RefreshError | StoreError) -> ResponseReturnValue:
        """The "try again later" answer: the handler's, else 503 JSON with ``Retry-After``."""
        if self._unavailable is not None:
            return cast(ResponseReturnValue, current_app.ensure_sync(self._unavailable)(error))
        retry = getattr(error, "retry_after", None) or self._state().settings.retry_after
        outcome = error.outcome.value if isinstance(error, RefreshError) else "store"
        response = jsonify(
            error="temporarily_unavailable", outcome=outcome, message=UNAVAILABLE_MESSAGE
        )
        response.status_code = 503
        response.headers["Retry-After"] = str(max(1, math.ceil(retry)))
        return response

    def _answer(self, verdict: Verdict) -> ResponseReturnValue | None:
        if verdict.decision is Decision.SERVE:
            return None
        if verdict.decision is Decision.UNAVAILABLE:
            return self.unavailable(cast("RefreshError | StoreError", verdict.error))
        return self.unauthorized()

    # -- views -----------------------------------------------------------------------------

    def exempt(self, obj: F) -> F:
        """Skip the ``before_request`` hook for a view or a whole blueprint.

        For login, callback and logout views, health checks, public blueprints.
        """
        if isinstance(obj, Blueprint):
            self._exempt_blueprints.add(obj.name)
        else:
            setattr(obj, _EXEMPT_ATTR, True)
        return obj

    def token_required(self, view: F) -> F:
        """Protect a view: a fresh token, or the unauthorized (401) or unavailable (503) answer."""

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if request.method == "OPTIONS":
                return current_app.ensure_sync(view)(*args, **kwargs)
            state = self._state()
            if not self._has_cookie(state):
                return self.unauthorized()
            request_state = self._check(state)
            denied = self._answer(state.rules.verdict(session, request_state))
            if denied is not None:
                return denied
            return current_app.ensure_sync(view)(*args, **kwargs)

        return cast(F, wrapper)

    @property
    def token(self) -> Token | None:
        """The current request's token (refreshed if due), or None when there is none.

        The natural check works: ``if guard.token is None: ...``. Raises nothing for a signed
        out request; ``guard.error`` says why there is no token.
        """
        state = self._state()
        if not self._has_cookie(state):
            return None
        return state.rules.open(session, self._check(state))

    def peek(self) -> dict[str, Any] | None:
        """The token's status without opening or refreshing it: for status pages.

        ``{"expires_at": <epoch seconds or None>, "state": TokenState}``, or None.
        """
        state = self._state()
        if not self._has_cookie(state):
            return None
        try:
            record = state.rules.tokens.peek(session)
        except TokenGuardError:
            return None
        return None if record is None else {"expires_at": record.exp, "state": record.state}

    @property
    def error(self) -> TokenGuardError | None:
        """Why this request has no usable token, if it has none."""
        request_state = g.get(_G)
        return request_state.error if isinstance(request_state, RequestState) else None

    def requests_session(self) -> requests.Session:
        """A ``requests.Session`` that sends the current access token as a bearer token.

        A 401 from an API called through it refreshes the token once (:meth:`refresh_now`,
        shared with every request that needs it) and retries the call once. Use it inside
        the request that made it.
        """
        token = self.token
        current = {"access_token": token["access_token"] if token is not None else None}

        def renew(refused: str) -> str | None:
            if current["access_token"] == refused:
                new = self.refresh_now()
                current["access_token"] = new["access_token"] if new is not None else None
            return current["access_token"]

        return BearerSession(lambda: current["access_token"], renew)

    def client_token(self, scope: str | Sequence[str] | None = None) -> Token:
        """The app's own token (client-credentials grant) for ``scope``, fresh.

        Shared by every thread, worker and host through the store, sealed; fetched once
        everywhere when it nears expiry. Needs an app context, not a request. Raises a
        :class:`~flask_tokenguard.errors.RefreshError` when none can be had.
        """
        return self._state().app_tokens.get(scope)

    def client_session(self, scope: str | Sequence[str] | None = None) -> requests.Session:
        """A ``requests.Session`` that sends the app's own token (see :meth:`client_token`).

        A 401 from an API called through it fetches a new app token once (shared by every
        request that saw the same token refused) and retries the call once. Made in an app
        context, it may then be used anywhere (a background thread, say).
        """
        app_tokens = self._state().app_tokens
        scopes = scope if isinstance(scope, str) or scope is None else tuple(scope)
        return BearerSession(
            lambda: str(app_tokens.get(scopes)["access_token"]),
            lambda refused: str(app_tokens.renew(scopes, refused)["access_token"]),
        )

    def refresh_if_needed(self) -> RequestState:
        """Bring the session's token up to date, once per request (the hook calls this)."""
        return self._check(self._state())

    def refresh_now(self) -> Token | None:
        """Refresh whatever the expiry says: the API refused the access token, or the provider
        gives no expiry. Shares the refresh with every request that needs it, like the hook.

        The new token, or None (``guard.error`` says why; the session reflects the outcome).
        """
        state = self._state()
        request_state = self._request_state()
        return state.rules.refresh_now(session, request_state, self._announcer())

    def grant_store(self) -> GrantStore:
        """The durable grant store of ``TOKENGUARD_GRANT_STORE_URL``, opened on first use.

        Needs the ``sql`` extra (an ImportError names it) and an app context.
        """
        state = self._state()
        with _GRANT_STORE_LOCK:
            if state.grant_store is None:
                target = state.settings.grant_store_url
                if target is None:
                    raise ConfigurationError(
                        f"{ConfigKeys.GRANT_STORE_URL} is not set: the grant store needs a"
                        " database (postgresql://... or sqlite:///...)"
                    )
                from .grants import open_grant_store

                state.grant_store = open_grant_store(
                    target,
                    client_id=state.settings.client_id,
                    sealing_secrets=self._secrets(current_app, state.settings),
                )
            return state.grant_store

    # -- sign-in and sign-out --------------------------------------------------------------

    def authorize_redirect(self, redirect_uri: str, **params: str) -> BaseResponse:
        """Redirect to the provider's authorization endpoint (code flow, PKCE S256, state)."""
        url = self._state().login.begin(session, redirect_uri, **params)
        return redirect(url)

    def authorize_callback(self) -> Token:
        """Exchange the callback's code and sign the session in; raises :class:`LoginError`."""
        token = self._state().login.complete(session, request.args)
        return self.login(token)

    def login(self, token: Token, subject: str | None = None) -> Token:
        """Sign the session in with ``token`` (after a code exchange of your own, say).

        The token is checked and normalised like every token that enters (``expires_in`` is
        counted from now); raises :class:`~flask_tokenguard.errors.TokenError` if unusable.
        ``subject`` (the user's id) lets :meth:`logout_all` end this session later.
        """
        return self._state().rules.login(session, self._request_state(), token, subject)

    def logout_all(self, subject: str) -> int:
        """End every session of ``subject``, on every device; how many there were.

        Their records are deleted from the shared store, so each of those sessions gets the
        unauthorized answer at its next protected request (needs token storage ``"store"``).
        """
        return self._state().rules.logout_all(subject)

    def logout(self) -> None:
        """Remove the token; a refresh still in flight elsewhere will not bring it back."""
        self._state().rules.logout(session, self._request_state())

    # -- the request cycle -----------------------------------------------------------------

    def _request_state(self) -> RequestState:
        request_state = g.get(_G)
        if not isinstance(request_state, RequestState):
            request_state = RequestState()
            setattr(g, _G, request_state)
        return request_state

    @staticmethod
    def _has_cookie(state: _AppState) -> bool:
        """Whether the request can have a token: it carries a session cookie, or this request
        already put a token in its session."""
        return _session_cookie() in request.cookies or isinstance(g.get(_G), RequestState)

    def _is_exempt(self, state: _AppState) -> bool:
        endpoint = request.endpoint
        exempt = state.exempt.get(endpoint)
        if exempt is None:
            view = current_app.view_functions.get(endpoint) if endpoint else None
            skipped = state.settings.exempt | self._exempt_blueprints
            exempt = state.exempt[endpoint] = (
                endpoint is None
                or endpoint == "static"
                or endpoint.endswith(".static")
                or endpoint in state.settings.exempt
                or any(bp in skipped for bp in request.blueprints)
                or bool(getattr(view, _EXEMPT_ATTR, False))
            )
        return exempt

    def _before_request(self, state: _AppState) -> None:
        if (
            state.settings.auto_refresh
            and _session_cookie() in request.cookies
            and not self._is_exempt(state)
        ):
            self._check(state)

    def _check(self, state: _AppState) -> RequestState:
        request_state = self._request_state()
        if not request_state.checked:
            state.rules.check(session, request_state, on_outcome=self._announcer())
        return request_state

    @staticmethod
    def _after_request(state: _AppState, response: BaseResponse) -> BaseResponse:
        """The lost-update guard, for the requests that can need it (see ``TokenRules.guard``).

        Reads only ``g``: a request that never looked at its token costs a dictionary lookup.
        """
        request_state = g.get(_G)
        if isinstance(request_state, RequestState) and state.rules.needs_guard(request_state):
            state.rules.guard(session, request_state)
        return response

    @staticmethod
    def _announcer() -> Callable[[Token | None, RefreshError | None], None]:
        app = current_app._get_current_object()  # type: ignore[attr-defined]

        def announce(new: Token | None, error: RefreshError | None) -> None:
            if new is not None:
                token_refreshed.send(app, token=new)
            else:
                token_refresh_failed.send(app, error=error)

        return announce


def _session_cookie() -> str:
    app = current_app
    return app.session_interface.get_cookie_name(app)


def _workers() -> int:
    """How many worker processes serve this app, as far as the command line tells.

    gunicorn's ``-w``/``--workers`` (or ``WEB_CONCURRENCY``, its default), uWSGI's
    ``-p``/``--processes``; 1 when nothing says otherwise.
    """
    argv = sys.argv
    program = os.path.basename(argv[0]) if argv else ""
    args = list(argv[1:])
    if "gunicorn" in program:
        args = shlex.split(os.environ.get("GUNICORN_CMD_ARGS", "")) + args
        flags = ("-w", "--workers")
        default = os.environ.get("WEB_CONCURRENCY", "1")
    elif "uwsgi" in program:
        flags, default = ("-p", "--processes"), "1"
    else:
        return 1
    count = default
    short, long = flags
    for i, arg in enumerate(args):
        if arg in flags and i + 1 < len(args):
            count = args[i + 1]
        elif arg.startswith(long + "="):
            count = arg.partition("=")[2]
        elif arg.startswith(short) and arg[len(short) :].isdigit():
            count = arg[len(short) :]
    return int(count) if count.isdigit() else 1


def _app_state() -> _AppState:
    try:
        return cast(_AppState, current_app.extensions[EXTENSION_KEY])
    except KeyError:
        raise RuntimeError(
            "TokenGuard is not registered on this app. Did you forget to call init_app?"
        ) from None
