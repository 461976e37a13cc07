"""Logout that ends the grant: RFC 7009 revocation, RP-initiated logout, and the logout mark
that no copy of the session and no refresh in flight can get past."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from flask_tokenguard.coordinator import Coordinator
from flask_tokenguard.deadline import Deadline
from flask_tokenguard.errors import InvalidGrant
from flask_tokenguard.stores.memory import MemoryStore

from .fixtures.apps import clone_cookies, make_app, new_client
from .fixtures.oidc_app import oidc_app
from .fixtures.provider import coordinator_for
from .fixtures.servers import serve, silent_server


def signed_in(base: str) -> tuple[requests.Session, dict[str, Any]]:
    """A browser signed in through the demo provider, and the tokens its session holds."""
    http = requests.Session()
    to_provider = http.get(f"{base}/login", allow_redirects=False, timeout=5)
    back = requests.get(to_provider.headers["Location"], allow_redirects=False, timeout=5)
    assert http.get(back.headers["Location"], timeout=5).status_code == 200
    return http, http.get(f"{base}/_test/token", timeout=5).json()


def test_logout_revokes_the_grant_at_the_provider(provider, tmp_path):
    with serve(oidc_app(provider, tmp_path)) as base:
        http, tokens = signed_in(base)
        assert provider.userinfo(tokens["access_token"]).status_code == 200
        assert http.get(f"{base}/logout", timeout=5).status_code == 200
        assert provider.refresh(tokens["refresh_token"]).json()["error"] == "invalid_grant"
        assert provider.userinfo(tokens["access_token"]).status_code == 401
        assert http.get(f"{base}/me", timeout=5).status_code == 401


def test_a_failed_revocation_is_logged_and_the_local_logout_happens(provider, tmp_path, caplog):
    with silent_server() as nowhere:
        app = oidc_app(
            provider,
            tmp_path,
            TOKENGUARD_REVOCATION_URL=f"{nowhere}/revoke",
            TOKENGUARD_PROVIDER_TIMEOUT=0.5,
            TOKENGUARD_CLAIM_TTL=1,
            TOKENGUARD_WAIT_TIMEOUT=2,
        )
        with serve(app) as base:
            http, tokens = signed_in(base)
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="flask_tokenguard"):
                assert http.get(f"{base}/logout", timeout=10).status_code == 200
            assert time.monotonic() - started < 2
            assert http.get(f"{base}/me", timeout=5).status_code == 401
            assert http.get(f"{base}/api/profile", timeout=5).status_code == 401
    assert "revoking" in caplog.text
    assert tokens["refresh_token"] not in caplog.text


def test_rp_initiated_logout_redirects_to_the_provider_with_the_hint(provider, tmp_path):
    with serve(oidc_app(provider, tmp_path)) as base:
        http, _ = signed_in(base)
        after = f"{base}/signed-out"
        reply = http.get(
            f"{base}/logout-everywhere",
            params={"post_logout_redirect_uri": after, "state": "s1"},
            allow_redirects=False,
            timeout=5,
        )
        assert reply.status_code == 302
        location = urlsplit(reply.headers["Location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == provider.end_session_url
        query = parse_qs(location.query)
        assert query["client_id"] == [provider.client_id]
        assert query["post_logout_redirect_uri"] == [after] and query["state"] == ["s1"]
        assert query["id_token_hint"][0].count(".") == 2
        assert http.get(f"{base}/me", timeout=5).status_code == 401  # signed out here already
        at_provider = requests.get(reply.headers["Location"], allow_redirects=False, timeout=5)
        assert at_provider.status_code == 302
        assert at_provider.headers["Location"] == f"{after}?state=s1"
        assert provider.stats()["end_sessions"] == 1


def test_a_cookie_copied_before_logout_never_refreshes_again(provider, tmp_path):
    # No revocation endpoint: only the logout mark stands between the copy and the provider.
    app = make_app(provider, str(tmp_path), TOKENGUARD_LEEWAY=5)
    with serve(app) as base:
        http = new_client(base, provider.issue(expires_in=6))
        copy = clone_cookies(http)
        assert http.get(f"{base}/logout", timeout=5).status_code == 200
        time.sleep(3.3)  # the copy's token is now due
        assert copy.get(f"{base}/api/profile", timeout=5).status_code == 401
        assert provider.stats()["refresh_requests"] == 0


def test_no_success_is_published_for_a_token_logged_out_meanwhile(provider):
    store = MemoryStore()

    def coordinator() -> Coordinator:
        return coordinator_for(provider, store)

    token = provider.issue(expires_in=0)
    provider.set_faults(refresh_delay=0.5)
    leader = coordinator()
    outcome: list[BaseException] = []

    def lead() -> None:
        try:
            leader.refresh(token, Deadline(5))
        except InvalidGrant as exc:
            outcome.append(exc)

    done = threading.Thread(target=lead)
    done.start()
    time.sleep(0.2)
    coordinator().revoke(token["refresh_token"])  # another process logs out meanwhile
    done.join()
    assert provider.stats()["refreshes"] == 1
    assert len(outcome) == 1  # the leader's own requests learn it too
    assert coordinator().newest(token["refresh_token"]) is None
    with pytest.raises(InvalidGrant):
        coordinator().refresh(token, Deadline(5))
    assert provider.stats()["refresh_requests"] == 1


def test_the_logout_mark_lives_as_long_as_a_session(provider, tmp_path):
    app = make_app(provider, str(tmp_path), PERMANENT_SESSION_LIFETIME=timedelta(days=3))
    coordinator = app.extensions["tokenguard"].rules.coordinator
    ttls: list[float] = []
    real = coordinator.store.publish

    def publish(key: str, value: str, ttl: float) -> None:
        ttls.append(ttl)
        real(key, value, ttl)

    coordinator.store.publish = publish
    coordinator.revoke("some-refresh-token")
    assert ttls == [3 * 24 * 3600]


def test_the_session_is_regenerated_at_sign_out(provider, tmp_path, redis_url, redis_prefix):
    app = oidc_app(provider, tmp_path, session_redis=f"{redis_url}|{redis_prefix}")

    @app.get("/_test/remember")
    def remember() -> Any:
        from flask import session

        session["theme"] = "dark"  # the app's own key keeps the session alive
        return {"ok": True}

    with serve(app) as base:
        http, _ = signed_in(base)
        http.get(f"{base}/_test/remember", timeout=5)
        before = http.cookies["session"]
        assert http.get(f"{base}/logout", timeout=5).status_code == 200
        assert http.cookies["session"] != before
        stale = requests.Session()
        stale.cookies.set("session", before)
        assert stale.get(f"{base}/me", timeout=5).status_code == 401
