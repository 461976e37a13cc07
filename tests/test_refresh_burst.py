"""A burst of one user's requests in one process refreshes exactly once.

docs/design.md, "Failure ways" (1. Duplicate refresh inside one process).

Real parts only: the strict provider over HTTP, the app on werkzeug's threaded server,
HTTP clients sharing one session cookie (the Flask test client cannot run requests in
parallel).
"""

from __future__ import annotations

import time
from typing import Any

import requests
from flask import Flask, jsonify, session
from requests_oauthlib import OAuth2Session

from flask_tokenguard import token_refreshed

from .fixtures.apps import burst, new_client
from .fixtures.servers import serve

N = 32


def test_a_burst_with_an_expired_token_refreshes_once(provider, guarded):
    provider.set_faults(refresh_delay=0.3, access_ttl=4)
    base = guarded(TOKENGUARD_LEEWAY=5)
    http = new_client(base, provider.issue(expires_in=0))

    result = burst(http, f"{base}/api/profile", N)

    stats = provider.stats()
    print(
        f"\none process, {N} concurrent requests: {result.count(200)} x 200,"
        f" {stats['refreshes']} refresh(es), max presentations {stats['max_presentations']}"
    )
    assert result.statuses == [200] * N
    assert stats["refreshes"] == 1
    assert stats["max_presentations"] == 1
    assert stats["reuse_detected"] == 0
    assert all(r.json()["profile"]["sub"] == "alice" for r in result.replies)
    # Every request used the same new access token.
    assert len({r.json()["profile"]["token_fingerprint"] for r in result.replies}) == 1


def test_five_rotations_in_a_row_keep_the_user_signed_in(provider, guarded):
    provider.set_faults(refresh_delay=0.2, access_ttl=2)
    base = guarded(TOKENGUARD_LEEWAY=5)  # longer than the token lives: due at half its life
    http = new_client(base, provider.issue(expires_in=0))

    for rotation in range(1, 6):
        if rotation > 1:
            time.sleep(1.1)  # the new token is due after half of its 2 s
        result = burst(http, f"{base}/api/profile", N)
        assert result.statuses == [200] * N, f"rotation {rotation}: {result.statuses}"
        stats = provider.stats()
        assert stats["refreshes"] == rotation
        assert stats["max_presentations"] == 1
    assert stats["families_revoked"] == 0
    assert http.get(f"{base}/api/profile", timeout=10).status_code == 200


def test_token_refreshed_is_sent_once_by_the_leader(provider, tmp_path):
    from .fixtures.apps import make_app

    provider.set_faults(refresh_delay=0.3)
    app = make_app(provider, str(tmp_path))
    seen: list[Any] = []

    def receiver(sender: Any, token: Any) -> None:
        seen.append((sender, token["refresh_token"]))

    token_refreshed.connect(receiver, app)
    try:
        with serve(app) as base:
            http = new_client(base, provider.issue(expires_in=0))
            assert burst(http, f"{base}/api/profile", 16).statuses == [200] * 16
    finally:
        token_refreshed.disconnect(receiver, app)
    assert len(seen) == 1
    assert seen[0][0] is app


def naive_app(provider: Any) -> Flask:
    """requests-oauthlib's documented auto-refresh, with no coordination at all."""
    app = Flask("naive")
    app.secret_key = "naive"

    @app.post("/seed")
    def seed() -> Any:
        from flask import request

        session["token"] = request.get_json()
        return jsonify(ok=True)

    @app.get("/api/profile")
    def profile() -> Any:
        def save(token: dict[str, Any]) -> None:
            session["token"] = token

        oauth = OAuth2Session(
            provider.client_id,
            token=session["token"],
            auto_refresh_url=provider.token_url,
            auto_refresh_kwargs={
                "client_id": provider.client_id,
                "client_secret": provider.client_secret,
            },
            token_updater=save,
        )
        try:
            reply = oauth.get(provider.userinfo_url, timeout=10)
        except Exception as exc:
            return jsonify(error=type(exc).__name__), 401
        finally:
            oauth.close()
        if reply.status_code != 200:
            return jsonify(error="userinfo refused"), 401
        return jsonify(profile=reply.json())

    return app


def test_the_naive_client_fails_the_same_burst(provider):
    """The control: without the extension the same burst breaks at the strict provider."""
    provider.set_faults(refresh_delay=0.3, access_ttl=4)
    with serve(naive_app(provider)) as base:
        http = requests.Session()
        http.post(f"{base}/seed", json=provider.issue(expires_in=0), timeout=5).raise_for_status()
        result = burst(http, f"{base}/api/profile", N)
    stats = provider.stats()
    print(
        f"\nnaive client, {N} concurrent requests: {result.count(200)} x 200,"
        f" {stats['refreshes']} refresh(es), max presentations {stats['max_presentations']},"
        f" reuse detected {stats['reuse_detected']}, families revoked {stats['families_revoked']}"
    )
    assert stats["max_presentations"] > 1
    assert stats["reuse_detected"] >= 1
    assert stats["families_revoked"] >= 1
    assert result.count(200) < N


def test_refresh_now_refreshes_a_fresh_token_once_for_a_whole_burst(provider, tmp_path):
    """After an API refused a token that still looks fresh, every request asks at once."""
    from flask import jsonify

    from .fixtures.apps import make_app

    provider.set_faults(refresh_delay=0.3)
    app = make_app(provider, str(tmp_path))
    guard = app.extensions["tokenguard_guard"]

    @app.get("/api/retry")
    @guard.token_required
    def retry():
        token = guard.refresh_now()
        if token is None:
            return jsonify(error=str(guard.error)), 401
        return jsonify(fingerprint=token["refresh_token"][:8])

    token = provider.issue(expires_in=3600)
    with serve(app) as base:
        http = new_client(base, token)
        result = burst(http, f"{base}/api/retry", 16)
        assert result.statuses == [200] * 16
        assert len({r.json()["fingerprint"] for r in result.replies}) == 1
        assert provider.stats()["refreshes"] == 1
        assert provider.stats()["max_presentations"] == 1
        anonymous = new_client(base)
        assert anonymous.get(f"{base}/api/retry", timeout=5).status_code == 401
