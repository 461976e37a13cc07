"""Bad input gets a clear error and loses nothing; no secret ever reaches a log.

docs/design.md, "Outcome classes" (classification) and "Sealing and key names" (logs).
"""

from __future__ import annotations

import logging

import pytest
from flask import Flask, jsonify

from flask_tokenguard import TokenGuard, TokenState
from flask_tokenguard.errors import TokenError
from flask_tokenguard.token import accept, restore

from .fixtures.apps import make_app, new_client


@pytest.fixture
def app(provider, tmp_path) -> Flask:
    return make_app(provider, str(tmp_path))


@pytest.mark.parametrize(
    "value",
    [
        "a string",
        {"v": 1},
        {"v": 1, "exp": "soon", "fp": None, "st": "ok", "box": "tg1.x"},
        {"v": 1, "exp": 1.0, "fp": None, "st": "ok", "box": "not sealed"},
        {"v": 1, "exp": 1.0, "fp": None, "st": "weird", "box": "tg1.x"},
        {"v": 2, "exp": 1.0, "fp": None, "st": "ok", "box": "tg1.x"},
        ["a", "list"],
    ],
)
def test_a_malformed_session_token_is_no_token_not_a_500(app, value, caplog):
    caplog.set_level(logging.WARNING, logger="flask_tokenguard")
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["_tokenguard"] = value
        sess["other"] = "kept"
    reply = client.get("/api/profile")
    assert reply.status_code == 401
    assert reply.json["error"] == "unauthorized"
    with client.session_transaction() as sess:
        assert "_tokenguard" not in sess
        assert sess["other"] == "kept"  # nothing else is lost
    assert any("discarding the session's token" in r.getMessage() for r in caplog.records)
    # An unprotected view still runs.
    with client.session_transaction() as sess:
        sess["_tokenguard"] = value
    assert client.get("/plain").status_code == 200


def test_no_token_gets_401_json_and_an_unprotected_view_runs(app):
    client = app.test_client()
    reply = client.get("/api/profile")
    assert reply.status_code == 401
    assert reply.is_json
    assert client.get("/plain").status_code == 200


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("<html>", "not an object"),
        ({}, "no access_token"),
        ({"access_token": ""}, "no access_token"),
        ({"access_token": "a", "expires_in": "abc"}, "expires_in"),
        ({"access_token": "a", "expires_at": "later"}, "expires_at"),
        ({"access_token": "a", "refresh_token": 5}, "refresh_token"),
        ({"access_token": "a", "token_type": 1}, "token_type"),
    ],
)
def test_a_reply_that_is_not_a_token_is_a_clear_error(reply, message):
    with pytest.raises(TokenError, match=message):
        accept(reply)
    with pytest.raises(TokenError, match=message):
        restore(reply)


def test_a_reply_without_a_refresh_token_keeps_the_old_one_and_gets_an_expiry():
    token = accept(
        {"access_token": "a", "expires_in": 60}, previous_refresh_token="r", received_at=100
    )
    assert token["refresh_token"] == "r"
    assert token["expires_at"] == 160


def test_a_provider_that_does_not_rotate_keeps_working(provider, guarded):
    provider.set_faults(rotate=False, access_ttl=4)
    base = guarded(TOKENGUARD_LEEWAY=5)
    token = provider.issue(expires_in=0)
    http = new_client(base, token)
    for _ in range(3):
        reply = http.get(f"{base}/api/profile", timeout=5)
        assert reply.status_code == 200
        http.cookies.update(reply.cookies)
    current = http.get(f"{base}/_test/token", timeout=5).json()
    assert current["refresh_token"] == token["refresh_token"]


def test_options_passes_and_a_custom_unauthorized_handler_replaces_the_default(provider, tmp_path):
    app = make_app(provider, str(tmp_path))
    guard: TokenGuard = app.extensions["tokenguard_guard"]

    @guard.unauthorized_handler
    def please_sign_in():
        return jsonify(custom=True), 401

    client = app.test_client()
    assert client.options("/api/profile").status_code == 200
    assert client.get("/api/profile").json == {"custom": True}


def test_html_navigation_is_redirected_to_the_login_view_and_fetch_gets_json(provider, tmp_path):
    app = make_app(provider, str(tmp_path), TOKENGUARD_LOGIN_VIEW="logout")
    client = app.test_client()
    nav = client.get(
        "/api/profile", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    )
    assert nav.status_code == 302
    # The redirect carries where the navigation was going, as a path on this host.
    assert nav.headers["Location"].endswith("/logout?next=/api/profile")
    fetch = client.get("/api/profile", headers={"Accept": "*/*"})
    assert fetch.status_code == 401
    assert fetch.is_json


def test_with_auto_refresh_off_the_decorator_still_refreshes(provider, guarded):
    base = guarded(TOKENGUARD_AUTO_REFRESH=False)
    http = new_client(base, provider.issue(expires_in=0))
    assert http.get(f"{base}/plain", timeout=5).status_code == 200
    assert provider.stats()["refreshes"] == 0
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 200
    assert provider.stats()["refreshes"] == 1


def test_exempt_endpoints_are_skipped_by_the_hook(provider, guarded):
    base = guarded(TOKENGUARD_EXEMPT=["plain"])
    http = new_client(base, provider.issue(expires_in=0))
    assert http.get(f"{base}/plain", timeout=5).status_code == 200
    assert provider.stats()["refresh_requests"] == 0


def test_the_hook_marks_a_dead_token_whatever_view_runs(provider, guarded):
    base = guarded()
    token = provider.issue(expires_in=0)
    provider.revoke(token["refresh_token"])
    http = new_client(base, token)
    reply = http.get(f"{base}/plain", timeout=5)
    assert reply.status_code == 200
    assert "InvalidGrant" in reply.json()["error"]
    http.cookies.update(reply.cookies)
    assert http.get(f"{base}/_test/token", timeout=5).json()["record"] is None


def test_a_public_client_refreshes_with_client_id_in_the_body(provider, guarded):
    base = guarded(
        TOKENGUARD_CLIENT_ID=provider.public_client_id,
        TOKENGUARD_CLIENT_SECRET=None,
        TOKENGUARD_CLIENT_AUTH="none",
    )
    http = new_client(base, provider.issue(expires_in=0, client_id=provider.public_client_id))
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 200


def test_client_secret_post_works(provider, guarded):
    base = guarded(TOKENGUARD_CLIENT_AUTH="client_secret_post")
    http = new_client(base, provider.issue(expires_in=0))
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 200


def test_peek_reads_the_status_without_refreshing(provider, tmp_path):
    app = make_app(provider, str(tmp_path))
    guard = app.extensions["tokenguard_guard"]
    token = provider.issue(expires_in=0)
    with app.test_request_context():
        assert guard.peek() is None
        guard.login(token)
        assert guard.peek() == {"expires_at": token["expires_at"], "state": TokenState.OK}
    assert provider.stats()["refresh_requests"] == 0


def test_the_expiry_counts_from_when_the_request_was_sent():
    token = accept({"access_token": "a", "expires_in": 60, "expires_at": 999.6}, received_at=900.2)
    assert token["expires_at"] == 960.2


def test_guard_token_is_none_when_signed_out_and_the_token_after_login(provider, tmp_path):
    app = make_app(provider, str(tmp_path))
    guard = app.extensions["tokenguard_guard"]
    token = provider.issue(expires_in=3600)
    with app.test_request_context():
        assert guard.token is None
        guard.login(token)
        assert guard.token is not None
        assert guard.token["access_token"] == token["access_token"]
