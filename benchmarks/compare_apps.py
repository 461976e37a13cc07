"""The three apps ``compare.py`` puts side by side, as WSGI apps for gunicorn.

``BENCH_PEER`` picks one: ``tokenguard``, ``requests-oauthlib`` or ``authlib``. Each is written
the way its own documentation shows it, with the same routes:

* ``GET /api/profile`` calls the provider's ``/userinfo`` with the bearer token and answers
  200 with the profile, 502 if the provider refused the access token (any exception: 500);
* ``POST /_bench/seed`` puts the posted token in the session (no browser flow);
* ``GET /_bench/ping`` (readiness) and, for flask-tokenguard only, ``GET /_bench/flights``:
  the number of refreshes in flight in this worker's single-flight map (a benchmark-only route).

Sessions live in Flask's signed cookie for all three, as the quick starts of all three show it.
The peers get no locking of their own: what they do under a burst is what their docs give.
flask-tokenguard shares its state through Redis (``BENCH_REDIS_URL``, keys under
``BENCH_PREFIX``). Environment: ``BENCH_PROVIDER_URL``, ``BENCH_SECRET_KEY``, and the client
credentials of the demo provider (``demo-client`` / ``demo-secret``).
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify, request, session

CLIENT_ID = "demo-client"
CLIENT_SECRET = "demo-secret"  # the demo provider's published credential


def _profile_reply(status: int, body: Any) -> Any:
    if status != 200:
        return jsonify(error="userinfo refused the token", status=status), 502
    return jsonify(profile=body)


def _base_app(peer: str) -> Flask:
    app = Flask(f"bench_{peer.replace('-', '_')}")
    app.secret_key = os.environ["BENCH_SECRET_KEY"]

    @app.get("/_bench/ping")
    def ping() -> Any:
        return jsonify(peer=peer, pid=os.getpid())

    return app


def tokenguard_app(provider: str) -> Flask:
    """flask-tokenguard as its README's quick start shows it, the store in Redis."""
    from flask_tokenguard import TokenGuard

    app = _base_app("tokenguard")
    app.config.update(
        TOKENGUARD_CLIENT_ID=CLIENT_ID,
        TOKENGUARD_CLIENT_SECRET=CLIENT_SECRET,
        TOKENGUARD_AUTHORIZE_URL=f"{provider}/authorize",
        TOKENGUARD_TOKEN_URL=f"{provider}/token",
        TOKENGUARD_CACHE_URL=os.environ["BENCH_REDIS_URL"],
        TOKENGUARD_KEY_PREFIX=os.environ["BENCH_PREFIX"] + "tg",
        TOKENGUARD_LEEWAY=5,
        TOKENGUARD_ALLOW_INSECURE_LOOPBACK=True,
    )
    guard = TokenGuard(app)
    userinfo_url = f"{provider}/userinfo"

    @app.get("/api/profile")
    @guard.token_required
    def profile() -> Any:
        with guard.requests_session() as http:
            reply = http.get(userinfo_url, timeout=10)
        return _profile_reply(reply.status_code, reply.json())

    @app.post("/_bench/seed")
    @guard.exempt
    def seed() -> Any:
        guard.login(request.get_json())
        return jsonify(ok=True)

    @app.get("/_bench/flights")
    @guard.exempt
    def flights() -> Any:
        coordinator = app.extensions["tokenguard"].rules.coordinator
        return jsonify(flights=len(coordinator.flights), pid=os.getpid())

    return app


def requests_oauthlib_app(provider: str) -> Flask:
    """requests-oauthlib's "Refreshing tokens" recipe: automatic refresh, token in the session."""
    from requests_oauthlib import OAuth2Session

    app = _base_app("requests-oauthlib")
    token_url = f"{provider}/token"
    userinfo_url = f"{provider}/userinfo"

    @app.get("/api/profile")
    def profile() -> Any:
        token = session.get("oauth_token")
        if token is None:
            return jsonify(error="not signed in"), 401

        def token_saver(new_token: dict[str, Any]) -> None:
            session["oauth_token"] = new_token

        extra = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        client = OAuth2Session(
            CLIENT_ID,
            token=token,
            auto_refresh_url=token_url,
            auto_refresh_kwargs=extra,
            token_updater=token_saver,
        )
        reply = client.get(userinfo_url, timeout=10)
        return _profile_reply(reply.status_code, reply.json())

    @app.post("/_bench/seed")
    def seed() -> Any:
        session["oauth_token"] = request.get_json()
        return jsonify(ok=True)

    return app


def authlib_app(provider: str) -> Flask:
    """Authlib's Flask client: ``register`` with ``fetch_token``/``update_token`` callbacks."""
    from authlib.integrations.flask_client import OAuth

    app = _base_app("authlib")

    def fetch_token(name: str) -> Any:
        return session.get(f"{name}_token")

    def update_token(
        name: str, token: dict[str, Any], refresh_token: str | None = None, access_token: Any = None
    ) -> None:
        session[f"{name}_token"] = dict(token)

    oauth = OAuth(app, fetch_token=fetch_token, update_token=update_token)
    oauth.register(
        "demo",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        access_token_url=f"{provider}/token",
        authorize_url=f"{provider}/authorize",
    )
    userinfo_url = f"{provider}/userinfo"

    @app.get("/api/profile")
    def profile() -> Any:
        token = fetch_token("demo")
        if token is None:
            return jsonify(error="not signed in"), 401
        reply = oauth.demo.get(userinfo_url, token=token, timeout=10)
        return _profile_reply(reply.status_code, reply.json())

    @app.post("/_bench/seed")
    def seed() -> Any:
        session["demo_token"] = request.get_json()
        return jsonify(ok=True)

    return app


BUILDERS = {
    "tokenguard": tokenguard_app,
    "requests-oauthlib": requests_oauthlib_app,
    "authlib": authlib_app,
}


def build() -> Flask:
    return BUILDERS[os.environ["BENCH_PEER"]](os.environ["BENCH_PROVIDER_URL"].rstrip("/"))


if os.environ.get("BENCH_PEER"):
    app = build()
