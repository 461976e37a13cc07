"""The flask-tokenguard example: a page that fires parallel requests at an expiring token.

``python example_app.py`` serves http://127.0.0.1:5000 (``PORT`` overrides) with no
configuration: it starts the bundled strict demo provider on another local port, keeps the
extension's shared store and the sessions in files under the instance folder, and creates a
secret key there. ``gunicorn example_app:app`` serves the same app from the environment, with
a provider that runs on its own; see the README.

Two routes call the same protected API: ``/api/profile`` through the extension (one refresh
per refresh token, however many requests race), and ``/api/profile-naive`` (in
``example_naive.py``), which refreshes the way requests-oauthlib's documentation shows, so a
burst of it presents one refresh token many times and the strict provider revokes the whole
token family.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Flask, current_app, jsonify, redirect, render_template, session, url_for
from flask.typing import ResponseReturnValue
from werkzeug.serving import WSGIRequestHandler

import example_naive
from flask_tokenguard import ConfigurationError, LoginError, TokenGuard
from flask_tokenguard.sessions import REDIS_SCHEMES, init_sessions

#: Configuration keys without which the app cannot work, as ``from_prefixed_env`` names them,
#: unless TOKENGUARD_SERVER_METADATA_URL is set: then discovery supplies the endpoints, and the
#: API defaults to the provider's userinfo endpoint.
REQUIRED = ("TOKENGUARD_TOKEN_URL", "TOKENGUARD_AUTHORIZE_URL", "EXAMPLE_API_URL")
METADATA_URL = "TOKENGUARD_SERVER_METADATA_URL"
ENV_PREFIX = "FLASK_"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

DEFAULTS: Mapping[str, Any] = {
    # The demo provider's published client; a real provider needs FLASK_TOKENGUARD_CLIENT_*.
    "TOKENGUARD_CLIENT_ID": "demo-client",
    "TOKENGUARD_CLIENT_SECRET": "demo-secret",
    # OpenID Connect: who signed in (guard.user), and a refresh token (offline_access).
    "TOKENGUARD_SCOPE": "openid profile email offline_access",
    # The extension's default (60 s) is longer than the demo's 20 s tokens.
    "TOKENGUARD_LEEWAY": 5,
    # Plain http:// only to 127.0.0.1, ::1 and localhost (the demo provider); https anywhere.
    "TOKENGUARD_ALLOW_INSECURE_LOOPBACK": True,
    # Requests whose Host header names another host get 400: a page on another site cannot
    # reach this one through DNS rebinding. Served elsewhere, list its names here.
    "TRUSTED_HOSTS": ["127.0.0.1", "localhost", "::1"],
    # The provider's counters: None derives <provider>/_admin/stats for a demo provider on
    # this host; "" turns them off.
    "EXAMPLE_PROVIDER_STATS_URL": None,
    # How many parallel requests the page's burst buttons send, by default.
    "EXAMPLE_BURST": 20,
    "EXAMPLE_API_TIMEOUT": 10,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "SESSION_KEY_PREFIX": "tokenguard-example:session:",
}

#: The provider counters the page shows (``/_admin/stats`` of the demo provider).
STAT_KEYS = (
    "refresh_requests",
    "refreshes",
    "max_presentations",
    "reuse_detected",
    "families_revoked",
    "invalid_grants",
    "code_exchanges",
)

#: The example's own session key (the extension keeps its token under its own key).
USER_KEY = "example_user"

guard = TokenGuard()


# -- the app ------------------------------------------------------------------------------------


def create_app(
    config: Mapping[str, Any] | None = None, *, instance_path: str | None = None
) -> Flask:
    """Build the app from ``FLASK_*`` environment variables, then ``config`` on top.

    Raises :class:`ConfigurationError` naming every required variable that is missing.
    ``instance_path`` (or ``EXAMPLE_INSTANCE_PATH``) is where the secret key, the shared store
    and the sessions live; by default the ``instance/`` folder next to this file.
    """
    instance_path = instance_path or os.environ.get("EXAMPLE_INSTANCE_PATH") or None
    app = Flask(
        __name__,
        instance_path=os.path.abspath(instance_path) if instance_path else None,
        template_folder="example_templates",
    )
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env()  # FLASK_<KEY> -> <KEY>
    app.config.update(config or {})
    missing = [] if app.config.get(METADATA_URL) else [k for k in REQUIRED if not app.config.get(k)]
    if missing:
        names = ", ".join(ENV_PREFIX + key for key in missing)
        raise ConfigurationError(
            f"example_app needs {names} (or {ENV_PREFIX}{METADATA_URL}): the provider's"
            " endpoints and the API to call. Run"
            " `python example_app.py` for the bundled demo provider, or start one with"
            " `python -m flask_tokenguard.demo_provider --port 5001` (see the README)."
        )
    os.makedirs(app.instance_path, mode=0o700, exist_ok=True)
    _secret_key(app)
    if app.config["EXAMPLE_PROVIDER_STATS_URL"] is None:
        app.config["EXAMPLE_PROVIDER_STATS_URL"] = _demo_stats_url(app.config)
    # Sessions beside the extension's store in Redis, else in files under the instance folder;
    # never unpickled either way.
    cache_url = str(app.config.get("TOKENGUARD_CACHE_URL") or "")
    init_sessions(app, cache_url if cache_url.startswith(REDIS_SCHEMES) else None)
    guard.init_app(app)
    for rule, view in (
        ("/", index),
        ("/login", login),
        ("/callback", callback),
        ("/logout", logout),
        ("/api/profile", profile),
        ("/api/me", me),
        ("/api/status", status),
        ("/api/provider-stats", provider_stats),
    ):
        app.add_url_rule(rule, view_func=view)
    app.register_blueprint(example_naive.blueprint(guard))  # /api/profile-naive
    return app


def _secret_key(app: Flask) -> None:
    """Without FLASK_SECRET_KEY, one kept in the instance folder: workers on this host agree.

    Created under a temporary name and hard-linked into place, so concurrent workers never
    read a half-written file and exactly one key wins.
    """
    key = app.config.get("SECRET_KEY")
    if key:
        if not isinstance(key, (str, bytes)):
            app.config["SECRET_KEY"] = str(key)  # FLASK_SECRET_KEY=1234 arrives as an int
        return
    path = os.path.join(app.instance_path, "secret_key")
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=app.instance_path, prefix=".secret_key.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            os.link(tmp, path)
        except FileExistsError:
            pass  # another worker won; use its key
        finally:
            os.unlink(tmp)
    with open(path) as f:
        app.config["SECRET_KEY"] = f.read().strip()


def _demo_stats_url(config: Mapping[str, Any]) -> str:
    """``<provider>/_admin/stats`` when the token endpoint (or the metadata) is a demo
    provider's on this host."""
    url = config.get("TOKENGUARD_TOKEN_URL") or config.get(METADATA_URL) or ""
    parts = urlsplit(str(url))
    paths = ("/token", "/.well-known/openid-configuration")
    if parts.scheme != "http" or parts.hostname not in LOOPBACK or parts.path not in paths:
        return ""
    return f"http://{parts.netloc}/_admin/stats"


# -- views --------------------------------------------------------------------------------------


def index() -> ResponseReturnValue:
    """The page; reading the token here refreshes it if due, like any view of the app."""
    token = _current_token()
    return render_template("index.html", page=_page_state(token))


@guard.exempt
def login() -> ResponseReturnValue:
    return guard.authorize_redirect(url_for("callback", _external=True))


@guard.exempt
def callback() -> ResponseReturnValue:
    try:
        token = guard.authorize_callback()
    except LoginError as exc:
        page = _page_state(_current_token(), error=f"Sign-in failed: {exc}")
        return render_template("index.html", page=page), 400
    example_naive.follow(token)
    # Who signed in comes from the validated ID token (guard.user): no API call here.
    claims = guard.user or {}
    names = ("name", "preferred_username", "login", "email", "sub")
    session[USER_KEY] = next((str(claims[k]) for k in names if claims.get(k)), "you")
    return redirect(url_for("index"))


@guard.exempt
def logout() -> ResponseReturnValue:
    guard.logout()
    _forget()
    return redirect(url_for("index"))


@guard.token_required
def profile() -> ResponseReturnValue:
    """The protected API call: the extension has made sure the token is fresh.

    An API that refuses the token answers 502 here, not 401: 401 means "sign in again",
    and only the extension decides that (a revoked token fails at its next refresh).
    """
    _current_token()
    with guard.requests_session() as http:
        try:
            return jsonify(profile=_call_api(http))
        except ApiError as exc:
            return jsonify(error=str(exc)), 502


def me() -> ResponseReturnValue:
    """Who is signed in: the validated ID token's claims (and userinfo, where configured)."""
    user = guard.user
    if user is None or _current_token() is None:
        return jsonify(error="nobody is signed in"), 401
    return jsonify(sub=user.get("sub"), claims=user)


def status() -> ResponseReturnValue:
    """Signed in?, the access token's expiry (never the token), the provider's counters.

    Like any view here, it goes through the extension's hook, which refreshes a due token.
    """
    token = _current_token()
    return jsonify(_page_state(token))


@guard.exempt
def provider_stats() -> ResponseReturnValue:
    """The counters alone, without touching the token (the page reads them before a burst)."""
    return jsonify(provider=_provider_stats())


# -- helpers ------------------------------------------------------------------------------------


class ApiError(Exception):
    """The protected API did not answer with JSON; ``status`` is its HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _call_api(http: requests.Session) -> Any:
    """GET EXAMPLE_API_URL with ``http`` (which carries the bearer token); its JSON body."""
    config = current_app.config
    try:
        reply = http.get(example_naive.api_url(), timeout=config["EXAMPLE_API_TIMEOUT"])
    except requests.RequestException as exc:
        raise ApiError(f"the API did not answer ({type(exc).__name__})") from None
    if reply.status_code == 401:
        raise ApiError("the API rejected the access token", 401)
    if reply.status_code != 200:
        raise ApiError(f"the API answered {reply.status_code}", reply.status_code)
    try:
        return reply.json()
    except ValueError:
        raise ApiError("the API did not answer JSON") from None


def _current_token() -> dict[str, Any] | None:
    """The extension's token for this request; the naive route's copy follows it."""
    token = guard.token
    if token is None:
        _forget()
    else:
        example_naive.follow(token)
    return token


def _forget() -> None:
    session.pop(USER_KEY, None)
    example_naive.forget()


def _page_state(token: Mapping[str, Any] | None, error: str | None = None) -> dict[str, Any]:
    """What the page and /api/status show; no token value ever leaves the server."""
    config = current_app.config
    if error is None and guard.error is not None:
        error = f"The last refresh failed: {guard.error}"
    return {
        "logged_in": token is not None,
        "user": session.get(USER_KEY) if token is not None else None,
        "expires_at": token.get("expires_at") if token is not None else None,
        "now": time.time(),
        "leeway": float(config["TOKENGUARD_LEEWAY"]),
        "error": error,
        "burst": int(config["EXAMPLE_BURST"]),
        "api_url": config.get("EXAMPLE_API_URL"),
        "provider": _provider_stats(),
    }


def _provider_stats() -> dict[str, Any] | None:
    url = current_app.config["EXAMPLE_PROVIDER_STATS_URL"]
    if not url:
        return None
    try:
        reply = requests.get(url, timeout=2)
        reply.raise_for_status()
        data = reply.json()
    except (requests.RequestException, ValueError):
        return None
    return {key: data.get(key) for key in STAT_KEYS} if isinstance(data, dict) else None


# -- `gunicorn example_app:app` and `python example_app.py` ---------------------------------------

app: Flask  # built on first access, from the environment (PEP 562), so importing never fails


def __getattr__(name: str) -> Any:
    if name == "app":
        built = globals()["app"] = _ready_to_serve(create_app())
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _ready_to_serve(app: Flask) -> Flask:
    """What only a process entry point does, once, before serving: never in the factory.

    requests-oauthlib (the naive route) reads ``OAUTHLIB_INSECURE_TRANSPORT`` from the
    process environment on every call; it is set here, and only when the app talks plain
    http to this host alone (``example_naive.allow_loopback_http``).
    """
    if not example_naive.allow_loopback_http(app.config):
        for key in ("TOKENGUARD_TOKEN_URL", "EXAMPLE_API_URL"):
            if str(app.config.get(key, "")).startswith("http://"):
                app.logger.warning(
                    "%s is plain http://, which requests-oauthlib refuses: the example allows"
                    " it only to this host, with TOKENGUARD_ALLOW_INSECURE_LOOPBACK",
                    key,
                )
    return app


class _AccessLog(WSGIRequestHandler):
    """The development server's access log without query strings (/callback carries a code)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path, self.path = self.path, self.path.split("?", 1)[0]
        try:
            super().log_request(code, size)
        finally:
            self.path = path


def main() -> None:
    """Serve on 127.0.0.1:$PORT; without FLASK_TOKENGUARD_TOKEN_URL, with the demo provider."""
    port = int(os.environ.get("PORT", "5000"))
    config: dict[str, Any] = {}
    provider = None
    if not (
        os.environ.get(ENV_PREFIX + "TOKENGUARD_TOKEN_URL")
        or os.environ.get(ENV_PREFIX + METADATA_URL)
    ):
        from flask_tokenguard.demo_provider import ProviderConfig, ProviderServer

        ttl = int(os.environ.get("EXAMPLE_ACCESS_TTL", "20"))
        provider = ProviderServer(
            ProviderConfig(
                access_ttl=ttl,
                # A real provider takes a moment to answer a refresh; so does this one, which
                # makes the naive burst's race as likely here as it is in production.
                refresh_delay=float(os.environ.get("EXAMPLE_REFRESH_DELAY", "0.2")),
                redirect_uris=(f"http://127.0.0.1:{port}/callback",),
            )
        ).start()
        config = {
            "TOKENGUARD_CLIENT_ID": provider.config.client_id,
            "TOKENGUARD_CLIENT_SECRET": provider.config.client_secret,
            METADATA_URL: f"{provider.url}/.well-known/openid-configuration",
            "EXAMPLE_API_URL": f"{provider.url}/userinfo",
            "EXAMPLE_PROVIDER_STATS_URL": f"{provider.url}/_admin/stats",
        }
        if not os.environ.get(ENV_PREFIX + "TOKENGUARD_LEEWAY"):
            config["TOKENGUARD_LEEWAY"] = min(5.0, ttl / 4)
        print(
            f"demo provider on {provider.url}: access tokens live {ttl} s, refresh tokens"
            " rotate, a reused one revokes its family",
            flush=True,
        )
    try:
        _ready_to_serve(create_app(config)).run(
            host="127.0.0.1", port=port, threaded=True, request_handler=_AccessLog
        )
    finally:
        if provider is not None:
            provider.stop()


if __name__ == "__main__":
    main()
