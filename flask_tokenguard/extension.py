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
import importlib.util
import inspect
import logging
import math
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlencode

import requests
from flask import (
    Blueprint,
    Flask,
    abort,
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
from .discovery import Discovery, Endpoints
from .errors import (
    ConfigurationError,
    IdTokenError,
    RefreshError,
    StoreError,
    StoreUnavailable,
    TokenGuardError,
)
from .idtoken import LOGOUT_TOKEN_MAX_AGE, IdTokens, user_claims
from .keys import KeyNames
from .login import LoginFlow, SignIn, safe_next
from .logs import install_redaction
from .offline import OfflineGrants
from .provider import ClientCredentials, RefreshClient, fetch_userinfo, revoke_tokens
from .records import RecordCodec
from .rules import Decision, RequestState, TokenHolder, TokenRules, Verdict
from .sealing import Sealer
from .session import SessionTokens
from .signals import token_refresh_failed, token_refreshed, user_signed_in
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
_G_NEXT = "_tokenguard_next"
_GRANT_STORE_LOCK = threading.Lock()

#: What clients are told; details (hosts, provider error text) go to the log only.
UNAUTHORIZED_MESSAGE = "sign-in required"
UNAVAILABLE_MESSAGE = "the sign-in could not be renewed just now; try again shortly"


def _exempt(view: F) -> F:
    """Mark a view the ``before_request`` hook skips (as ``guard.exempt`` does)."""
    setattr(view, _EXEMPT_ATTR, True)
    return view


@dataclass(eq=False)
class _AppState:
    """One app's wiring (``app.extensions["tokenguard"]``)."""

    guard: TokenGuard
    settings: Settings
    rules: TokenRules
    login: LoginFlow
    store: Store
    discovery: Discovery
    credentials: ClientCredentials
    app_tokens: AppTokens
    #: seals the grant store's rows (opened on first use): the app's secrets, its own purpose
    grant_sealer: Sealer = field(repr=False)
    #: endpoint -> whether the hook skips it (an endpoint's view and blueprints never change)
    exempt: dict[str | None, bool] = field(default_factory=dict)
    #: the session cookie's name, from the app's session interface at the first request
    cookie_name: str | None = None
    #: opened on first use (``TokenGuard.grant_store``)
    grant_store: GrantStore | None = None
    #: when the grant store last failed to open, and why
    grant_store_failed: tuple[float, StoreUnavailable] | None = None
    #: with ``TOKENGUARD_OFFLINE_GRANTS``
    offline: OfflineGrants | None = None

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
        discovery = Discovery.from_settings(settings)
        id_tokens = (
            IdTokens(
                discovery,
                settings.client_id,
                algorithms=settings.id_token_algorithms,
                timeout=settings.provider_timeout,
            )
            if settings.server_metadata_url or settings.issuer
            else None
        )
        if id_tokens is None and settings.scope and "openid" in settings.scope:
            log.warning(
                "%s asks for openid, but ID tokens cannot be validated without %s (or %s and"
                " %s): guard.user stays None",
                ConfigKeys.SCOPE,
                ConfigKeys.SERVER_METADATA_URL,
                ConfigKeys.ISSUER,
                ConfigKeys.JWKS_URL,
            )
        # A logout's tombstone lasts as long as a session can (a copied cookie included).
        session_lifetime = app.permanent_session_lifetime.total_seconds()
        client = RefreshClient(
            settings.token_url or discovery.token_url,
            credentials,
            default_retry_after=settings.retry_after,
        )
        codec = RecordCodec(Sealer(secrets, "store"))
        coordinator = Coordinator(
            client,
            store,
            keys,
            codec,
            replace(
                Policy.from_settings(settings),
                revoked_ttl=max(settings.result_ttl, session_lifetime),
            ),
            vetter=id_tokens,
        )
        tokens: TokenHolder
        if settings.token_storage == "store":  # noqa: S105 - a storage mode
            tokens = TicketTokens(
                settings.session_key,
                store,
                keys,
                secrets,
                settings.leeway,
                lifetime=session_lifetime,
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
                discovery=discovery,
                credentials=credentials,
                scope=settings.scope,
                session_key=settings.session_key,
                timeout=settings.provider_timeout,
                id_tokens=id_tokens,
                authorize_params=dict(settings.authorize_params),
            ),
            store=store,
            discovery=discovery,
            credentials=credentials,
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
            grant_sealer=Sealer(secrets, "grants"),
        )
        if settings.offline_grants:
            if importlib.util.find_spec("sqlalchemy") is None:
                raise ConfigurationError(
                    f"{ConfigKeys.OFFLINE_GRANTS} keeps grants in a database through"
                    " SQLAlchemy: pip install 'flask-tokenguard[sql]'"
                )
            state.offline = OfflineGrants(state.rules, functools.partial(_grant_store, state))
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
            query = request.query_string.decode("latin-1")
            here = safe_next(f"{request.path}?{query}" if query else request.path)
            try:
                return redirect(url_for(login_view, next=here))
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
            _exempt(obj)
        return obj

    def token_required(self, view: F) -> F:
        """Protect a view: a fresh token, or the unauthorized (401) or unavailable (503) answer."""

        # Decided once: Flask's ensure_sync inspects the view on every call.
        is_async = inspect.iscoroutinefunction(view)

        def run(*args: Any, **kwargs: Any) -> Any:
            return (
                current_app.ensure_sync(view)(*args, **kwargs)
                if is_async
                else view(*args, **kwargs)
            )

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if request.method == "OPTIONS":
                return run(*args, **kwargs)
            state = self._state()
            request_state = g.get(_G)
            if not isinstance(request_state, RequestState):  # the hook did not run
                if _session_cookie(state) not in request.cookies:
                    return self.unauthorized()
                request_state = self._check(state)
            elif not request_state.checked:
                request_state = self._check(state)
            denied = self._answer(state.rules.verdict(session, request_state))
            if denied is not None:
                return denied
            request_state.protected = True
            return run(*args, **kwargs)

        return cast(F, wrapper)

    @property
    def token(self) -> Token | None:
        """The current request's token (refreshed if due), or None when there is none.

        The natural check works: ``if guard.token is None: ...``; ``guard.error`` says why there
        is none. Inside a ``token_required`` view the token is there: one that fails to open
        there (tampered, or signed out meanwhile) ends the request with the unauthorized answer.
        """
        state = self._state()
        if not self._has_cookie(state):
            return None
        request_state = self._check(state)
        token = state.rules.open(session, request_state)
        if token is None and request_state.protected:
            denied = self._answer(state.rules.verdict(session, request_state))
            abort(current_app.make_response(denied or self.unauthorized()))
        return token

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
        return state.rules.refresh_now(session, request_state, _announce)

    def grant_store(self) -> GrantStore:
        """The durable grant store of ``TOKENGUARD_GRANT_STORE_URL``, opened on first use.

        Needs the ``sql`` extra (an ImportError names it) and an app context.
        """
        return _grant_store(self._state())

    def token_for(self, subject: str) -> Token:
        """A fresh token of ``subject`` for work done on their behalf without a request.

        Needs ``TOKENGUARD_OFFLINE_GRANTS`` and an app context. The token comes from the
        subject's most recently used grant (each sign-in leaves one) and is refreshed through
        the same coordinator as their browsers' requests: never both presenting one refresh
        token, each healing from the other's result. Raises
        :class:`~flask_tokenguard.errors.InvalidGrant` when the subject has no usable grant
        (signed out, or refused by the provider: they must sign in again), another
        :class:`~flask_tokenguard.errors.RefreshError` or a
        :class:`~flask_tokenguard.errors.StoreError` when it cannot be had just now.
        """
        offline = self._state().offline
        if offline is None:
            raise ConfigurationError(
                f"guard.token_for needs {ConfigKeys.OFFLINE_GRANTS} = True (and"
                f" {ConfigKeys.GRANT_STORE_URL})"
            )
        return offline.token_for(subject, _announce)

    # -- sign-in and sign-out --------------------------------------------------------------

    def authorize_redirect(self, redirect_uri: str, **params: str) -> BaseResponse:
        """Redirect to the provider's authorization endpoint (code flow, PKCE S256, state,
        and a nonce when ``openid`` is in the scope).

        ``params`` are added to the request (over ``TOKENGUARD_AUTHORIZE_PARAMS``). A safe
        ``next`` in this request's query (a path on this host) is kept for
        :meth:`next_url` after the callback.
        """
        next_path = safe_next(request.args.get("next"))
        url = self._state().login.begin(session, redirect_uri, next_path=next_path, **params)
        return redirect(url)

    def authorize_callback(self) -> Token:
        """Exchange the callback's code and sign the session in; raises :class:`LoginError`.

        The ID token (OpenID Connect) is validated, its claims become :attr:`user`, the session
        is regenerated, and ``user_signed_in`` is sent.
        """
        state = self._state()
        sign_in = state.login.complete(session, request.args)
        setattr(g, _G_NEXT, sign_in.next)
        return self._sign_in(state, sign_in)

    def _sign_in(self, state: _AppState, sign_in: SignIn) -> Token:
        tokens = state.rules.tokens
        claims = dict(sign_in.claims)
        token = sign_in.token
        if state.settings.fetch_userinfo:
            claims.update(self._userinfo(state, token, claims))
        if not token.get("refresh_token"):
            log.warning(
                "the sign-in brought no refresh token: the session ends when the access token"
                " expires. Usually the provider wants to be asked: node-oidc-provider drops"
                " offline_access unless the request carries prompt=consent, Google wants"
                " access_type=offline, Auth0 and Entra ID want the offline_access scope (see"
                " %s and %s)",
                ConfigKeys.SCOPE,
                ConfigKeys.AUTHORIZE_PARAMS,
            )
        # Nothing of the session before sign-in carries over into the signed-in one: a
        # session id planted before it is worthless after it, and a token it held is marked
        # logged out (a copy of the old cookie never refreshes it again).
        if tokens.key in session:
            state.rules.logout(session, self._request_state())
        for key in (tokens.key, tokens.sid_key, tokens.user_key):
            session.pop(key, None)
        subject, sid = (claims.get("sub"), claims.get("sid")) if claims else (None, None)
        token = state.rules.login(
            session,
            self._request_state(),
            token,
            subject if isinstance(subject, str) else None,
            sid if isinstance(sid, str) else None,
        )
        if claims:
            session[tokens.user_key] = user_claims(claims)
        if isinstance(subject, str):
            self._record_grant(state, token, subject, sid if isinstance(sid, str) else None)
        self._regenerate()
        user_signed_in.send(
            current_app._get_current_object(),  # type: ignore[attr-defined]
            token=token,
            claims=self.user,
        )
        return token

    def _userinfo(self, state: _AppState, token: Token, claims: dict[str, Any]) -> dict[str, Any]:
        url = state.discovery.endpoints().userinfo_url
        if not url:
            log.warning(
                "%s is on but the provider's userinfo endpoint is unknown (set %s)",
                ConfigKeys.FETCH_USERINFO,
                ConfigKeys.USERINFO_URL,
            )
            return {}
        try:
            info = fetch_userinfo(
                url, str(token["access_token"]), timeout=state.settings.provider_timeout
            )
        except (requests.RequestException, ValueError, RecursionError) as exc:
            log.warning("the userinfo request failed (%s); signing in without it", exc)
            return {}
        if "sub" in claims and info.get("sub") != claims["sub"]:
            log.warning("the userinfo answer names another subject; ignored")
            return {}
        return info

    @staticmethod
    def _regenerate() -> None:
        """A new session id: Flask-Session's ``regenerate`` where the interface has it.

        Flask's cookie session has no server-side id; there the extension's own id (which its
        seals are bound to) was replaced above.
        """
        regenerate = getattr(current_app.session_interface, "regenerate", None)
        if callable(regenerate) and session:
            regenerate(session)

    def endpoints(self) -> Endpoints:
        """The provider's endpoints: the configured ones, completed by discovery (fetched on
        first use). Raises :class:`ConfigurationError` when the metadata cannot be had."""
        return self._state().discovery.endpoints()

    @property
    def user(self) -> dict[str, Any] | None:
        """The signed-in user's claims (ID token, merged with userinfo where configured), or
        None when nobody is signed in. Read from the session: no token opened, no I/O."""
        state = self._state()
        if not self._has_cookie(state):
            return None
        tokens = state.rules.tokens
        claims = session.get(tokens.user_key)
        if tokens.key not in session or not isinstance(claims, dict):
            return None
        return claims

    def next_url(self, default: str = "/") -> str:
        """Where to go after sign-in: the ``next`` path the sign-in started with (a path on
        this host, checked), else this request's own ``next`` if safe, else ``default``."""
        kept = g.get(_G_NEXT)
        if isinstance(kept, str):
            return kept
        return safe_next(request.args.get("next")) or default

    def login(self, token: Token, subject: str | None = None) -> Token:
        """Sign the session in with ``token`` (after a code exchange of your own, say).

        The token is checked and normalised like every token that enters (``expires_in`` is
        counted from now); raises :class:`~flask_tokenguard.errors.TokenError` if unusable.
        ``subject`` (the user's id) lets :meth:`logout_all` end this session later.
        """
        state = self._state()
        token = state.rules.login(session, self._request_state(), token, subject)
        if subject is not None:
            self._record_grant(state, token, subject, None)
        return token

    @staticmethod
    def _record_grant(state: _AppState, token: Token, subject: str, sid: str | None) -> None:
        """With ``TOKENGUARD_OFFLINE_GRANTS``, leave the sign-in's grant for jobs."""
        if state.offline is None:
            return
        try:
            state.offline.record(session, token, subject, sid)
        except Exception as exc:  # the sign-in stands; jobs wait for the next
            log.error(
                "the sign-in's grant could not be stored for background jobs (%s): the session"
                " works, guard.token_for finds it after the next sign-in",
                type(exc).__name__,
            )

    def logout_all(self, subject: str) -> int:
        """End every session of ``subject``, on every device; how many there were.

        Their records are deleted from the shared store, so each of those sessions gets the
        unauthorized answer at its next protected request (needs token storage ``"store"``).
        With ``TOKENGUARD_OFFLINE_GRANTS`` their grants are deleted too: jobs stop with them.
        """
        state = self._state()
        ended = state.rules.logout_all(subject)
        if state.offline is not None:
            _grant_store(state).delete_subject(subject)  # grants whose records had expired
        return ended

    def revoke_grant(self, grant_id: str) -> bool:
        """End one stored grant: its row, the session signed in with it, and the refresh token
        at the provider (RFC 7009, where it has a revocation endpoint). Whether it existed."""
        state = self._state()
        store = _grant_store(state)
        grant = store.get(grant_id)
        if not store.delete(grant_id):
            return False
        if grant is None:
            return True  # a row that did not open: deleted, nothing more known
        # The record may hold a newer token than the row (a rotation not written through).
        newest = (state.offline.current(grant) if state.offline else None) or grant.token
        if grant.link is not None:
            state.store.forget(state.rules.tokens.keys.ticket(grant.link.ticket_id))
        for token in (grant.token, newest):
            refresh_token = token.get("refresh_token")
            if isinstance(refresh_token, str):
                state.rules.coordinator.revoke(refresh_token)
        self._revoke_at_provider(state, newest)
        return True

    @_exempt
    def backchannel_logout(self) -> ResponseReturnValue:
        """The view an OpenID Provider POSTs logout tokens to (Back-Channel Logout 1.0).

        Register it on a path you give the provider as the client's
        ``backchannel_logout_uri``::

            app.add_url_rule("/backchannel-logout", view_func=guard.backchannel_logout,
                             methods=["POST"])

        The logout token is validated (signature, ``iss``, ``aud``, ``iat``, the logout event,
        ``sid`` or ``sub``, no ``nonce``, a ``jti`` not seen before); then the sessions it names
        (by ``sid``, else every session of the ``sub``) lose their tokens at once. 200 on
        success, 400 for a token that does not validate (the reason goes to the log), 501 with
        ``TOKENGUARD_TOKEN_STORAGE = "session"`` (the tokens travel in the sessions).
        """
        state = self._state()
        headers = {"Cache-Control": "no-store"}
        id_tokens = state.login.id_tokens
        if id_tokens is None or state.settings.token_storage != "store":  # noqa: S105
            log.error(
                "a back-channel logout arrived, but it needs ID token validation (%s) and"
                " tokens kept in the store (%s = 'store')",
                ConfigKeys.SERVER_METADATA_URL,
                ConfigKeys.TOKEN_STORAGE,
            )
            return jsonify(error="not_implemented"), 501, headers
        try:
            claims = id_tokens.validate_logout_token(request.form.get("logout_token"))
            fresh = state.store.swap(
                state.rules.tokens.keys.logout_token(claims["jti"]),
                None,
                "used",
                LOGOUT_TOKEN_MAX_AGE * 2,
            )
            if not fresh:
                raise IdTokenError("the logout token was used before")
            sid, sub = claims.get("sid"), claims.get("sub")
            if isinstance(sid, str) and sid:
                ended = state.rules.logout_provider_session(sid)
            else:
                ended = self.logout_all(str(sub))
        except (IdTokenError, ConfigurationError) as exc:
            log.warning("a back-channel logout was refused: %s", exc)
            return jsonify(error="invalid_request"), 400, headers
        except StoreError as exc:
            log.error("a back-channel logout could not be carried out: %s", exc)
            return jsonify(error="temporarily_unavailable"), 503, headers
        log.info("back-channel logout: %d session(s) ended", ended)
        return "", 200, headers

    def logout(self) -> None:
        """Sign out: remove the token (a refresh still in flight elsewhere will not bring it
        back), end the grant at the provider (RFC 7009, where it has a revocation endpoint),
        and regenerate the session."""
        self._logout()

    def logout_redirect(
        self, post_logout_redirect_uri: str | None = None, state: str | None = None
    ) -> BaseResponse:
        """Sign out here, then at the provider (OpenID Connect RP-initiated logout).

        Redirects to the provider's ``end_session_endpoint`` with ``id_token_hint``,
        ``client_id``, ``post_logout_redirect_uri`` and ``state``; without one, straight to
        ``post_logout_redirect_uri`` (or ``/``).
        """
        app_state = self._state()
        token = self._logout()
        try:
            end_session = app_state.discovery.endpoints().end_session_url
        except ConfigurationError as exc:
            log.warning("RP-initiated logout skipped: %s", exc)
            end_session = None
        if not end_session:
            return redirect(post_logout_redirect_uri or "/")
        params = {"client_id": app_state.settings.client_id}
        id_token = token.get("id_token") if token is not None else None
        if isinstance(id_token, str) and id_token:
            params["id_token_hint"] = id_token
        if post_logout_redirect_uri:
            params["post_logout_redirect_uri"] = post_logout_redirect_uri
        if state:
            params["state"] = state
        separator = "&" if "?" in end_session else "?"
        return redirect(f"{end_session}{separator}{urlencode(params)}")

    def _logout(self) -> Token | None:
        state = self._state()
        token = state.rules.logout(session, self._request_state())
        tokens = state.rules.tokens
        for key in (tokens.sid_key, tokens.user_key):
            session.pop(key, None)
        if token is not None:
            self._revoke_at_provider(state, token)
        self._regenerate()
        return token

    @staticmethod
    def _revoke_at_provider(state: _AppState, token: Token) -> None:
        try:
            url = state.settings.revocation_url or state.discovery.endpoints().revocation_url
        except ConfigurationError as exc:
            log.warning("the tokens were not revoked at the provider: %s", exc)
            return
        if not url:
            return
        pairs = [
            (str(token[name]), hint)
            for name, hint in (
                ("refresh_token", "refresh_token"),
                ("access_token", "access_token"),
            )
            if token.get(name)
        ]
        revoke_tokens(url, pairs, state.credentials, timeout=state.settings.provider_timeout)

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
        return _session_cookie(state) in request.cookies or isinstance(g.get(_G), RequestState)

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
            and _session_cookie(state) in request.cookies
            and not self._is_exempt(state)
        ):
            self._check(state)

    def _check(self, state: _AppState) -> RequestState:
        request_state = self._request_state()
        if not request_state.checked:
            state.rules.check(session, request_state, on_outcome=_announce)
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


def _grant_store(state: _AppState) -> GrantStore:
    """The app's grant store, opened on first use; a database that could not be reached is
    not tried again for ``TOKENGUARD_RETRY_AFTER`` seconds (requests that write grants must
    not each wait for it)."""
    with _GRANT_STORE_LOCK:
        if state.grant_store is None:
            target = state.settings.grant_store_url
            if target is None:
                raise ConfigurationError(
                    f"{ConfigKeys.GRANT_STORE_URL} is not set: the grant store needs a"
                    " database (postgresql://... or sqlite:///...)"
                )
            failed = state.grant_store_failed
            if failed is not None and time.monotonic() - failed[0] < state.settings.retry_after:
                raise StoreUnavailable(f"{failed[1]}; not tried again yet")
            from .grants import open_grant_store

            try:
                state.grant_store = open_grant_store(
                    target, client_id=state.settings.client_id, sealer=state.grant_sealer
                )
            except StoreUnavailable as exc:
                state.grant_store_failed = (time.monotonic(), exc)
                raise
        return state.grant_store


def _announce(new: Token | None, error: RefreshError | None) -> None:
    """The signals of a provider call, sent by the request whose thread made it."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if new is not None:
        token_refreshed.send(app, token=new)
    else:
        token_refresh_failed.send(app, error=error)


def _session_cookie(state: _AppState) -> str:
    """The session cookie's name, read from the app at its first request (then kept)."""
    name = state.cookie_name
    if name is None:
        app = current_app
        name = state.cookie_name = app.session_interface.get_cookie_name(app)
    return name


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
