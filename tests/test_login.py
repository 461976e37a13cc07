"""The login helpers: authorization code with PKCE (S256) and state, against the provider."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import jsonify

from flask_tokenguard import LoginError

from .fixtures.apps import make_app
from .fixtures.servers import serve


@pytest.fixture
def login_app(provider, tmp_path):
    app = make_app(provider, str(tmp_path))
    guard = app.extensions["tokenguard_guard"]

    @app.get("/login")
    @guard.exempt
    def login():
        return guard.authorize_redirect(f"{request_base()}/callback", login_hint="bob")

    @app.get("/callback")
    @guard.exempt
    def callback():
        try:
            guard.authorize_callback()
        except LoginError as exc:
            return jsonify(error=str(exc)), 400
        return jsonify(ok=True)

    def request_base() -> str:
        from flask import request

        return request.host_url.rstrip("/")

    return app


def test_login_with_pkce_then_a_protected_call(provider, login_app):
    with serve(login_app) as base:
        http = requests.Session()
        to_provider = http.get(f"{base}/login", allow_redirects=False, timeout=5)
        assert to_provider.status_code == 302
        query = parse_qs(urlsplit(to_provider.headers["Location"]).query)
        assert query["code_challenge_method"] == ["S256"]
        assert query["state"][0]
        back = http.get(to_provider.headers["Location"], allow_redirects=False, timeout=5)
        assert back.status_code == 302
        done = http.get(back.headers["Location"], timeout=5)
        assert done.json() == {"ok": True}
        profile = http.get(f"{base}/api/profile", timeout=5)
        assert profile.status_code == 200
        assert profile.json()["profile"]["sub"] == "bob"
        assert provider.stats()["code_exchanges"] == 1


def test_a_callback_with_the_wrong_state_is_refused(provider, login_app):
    with serve(login_app) as base:
        http = requests.Session()
        to_provider = http.get(f"{base}/login", allow_redirects=False, timeout=5)
        back = http.get(to_provider.headers["Location"], allow_redirects=False, timeout=5)
        forged = back.headers["Location"].replace("state=", "state=x")
        reply = http.get(forged, timeout=5)
        assert reply.status_code == 400
        assert "state" in reply.json()["error"]
        # A forged callback consumes nothing: the genuine one still completes, once.
        assert http.get(back.headers["Location"], timeout=5).status_code == 200
        assert http.get(back.headers["Location"], timeout=5).status_code == 400


def test_a_callback_without_a_login_in_progress_is_refused(login_app):
    client = login_app.test_client()
    reply = client.get("/callback?code=x&state=y")
    assert reply.status_code == 400


def test_logout_clears_the_token(provider, login_app):
    with serve(login_app) as base:
        http = requests.Session()
        http.get(f"{base}/login", timeout=5)
        assert http.get(f"{base}/api/profile", timeout=5).status_code == 200
        http.get(f"{base}/logout", timeout=5)
        assert http.get(f"{base}/api/profile", timeout=5).status_code == 401
