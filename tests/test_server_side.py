"""Tokens kept server-side: a small ticket in the session, the token record in the shared store.

docs/design.md, "Where tokens live". The default ``TOKENGUARD_TOKEN_STORAGE = "store"``: the
cookie stays small whatever the tokens weigh, a cookie copied before logout is dead after it,
``logout_all`` ends every session of a user, and what rests in the store opens for nobody
without the ticket and the app's secret.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from flask import jsonify, request

from .fixtures.apps import burst, clone_cookies, make_app, new_client
from .fixtures.oidc_app import add_sign_in_routes
from .fixtures.servers import serve

N = 16


def signin_app(provider: Any, tmp_path: Any, **config: Any) -> Any:
    app = make_app(provider, str(tmp_path / "instance"), **config)
    guard = app.extensions["tokenguard_guard"]
    add_sign_in_routes(app)

    @app.post("/_test/logout-all")
    @guard.exempt
    def logout_all() -> Any:
        return jsonify(ended=guard.logout_all(request.get_json()["subject"]))

    return app


def sign_in(http: requests.Session, base: str) -> list[str]:
    """The browser's sign-in; every Set-Cookie header it received on the way."""
    headers = []
    reply = http.get(f"{base}/login", allow_redirects=False, timeout=5)
    headers += reply.raw.headers.getlist("Set-Cookie")
    reply = http.get(reply.headers["Location"], allow_redirects=False, timeout=5)
    reply = http.get(reply.headers["Location"], allow_redirects=False, timeout=10)
    headers += reply.raw.headers.getlist("Set-Cookie")
    assert reply.status_code == 200, reply.text
    return headers


@pytest.mark.parametrize("size", [3000, 8000])
def test_real_sized_tokens_keep_the_cookie_small_and_survive_a_burst(provider, tmp_path, size):
    provider.set_faults(access_token_size=size, access_ttl=2, refresh_delay=0.2)
    with serve(signin_app(provider, tmp_path)) as base:
        http = requests.Session()
        headers = sign_in(http, base)
        assert headers and max(len(h) for h in headers) < 4096
        time.sleep(1.1)  # due after half of its 2 s
        result = burst(http, f"{base}/api/profile", N)
        assert result.statuses == [200] * N
        for reply in result.replies:
            assert all(len(h) < 4096 for h in reply.raw.headers.getlist("Set-Cookie"))
        stats = provider.stats()
        assert stats["refreshes"] == 1 and stats["max_presentations"] == 1
        cookie = http.cookies.get("session")
        assert cookie is not None and len(cookie) < 1024


def test_in_session_storage_cannot_hold_real_sized_tokens(provider, tmp_path):
    """Why the store is the default: the same sign-in with tokens in the cookie breaks it."""
    provider.set_faults(access_token_size=8000)
    app = signin_app(provider, tmp_path, TOKENGUARD_TOKEN_STORAGE="session")
    with serve(app) as base, pytest.warns(UserWarning, match="cookie is too large"):
        headers = sign_in(requests.Session(), base)
    assert max(len(h) for h in headers) > 4096


@pytest.mark.parametrize("sessions", ["cookie", "redis"])
def test_a_cookie_copied_before_logout_is_dead_after_it(provider, guarded, sessions, request):
    extra: dict[str, Any] = {}
    if sessions == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        extra["session_redis"] = f"{url}|{prefix}session:"
    base = guarded(**extra)
    http = new_client(base, provider.issue(expires_in=3600))
    copy = clone_cookies(http)
    assert copy.get(f"{base}/api/profile", timeout=5).status_code == 200
    assert http.get(f"{base}/logout", timeout=5).status_code == 200
    reply = copy.get(f"{base}/api/profile", timeout=5)
    assert reply.status_code == 401
    assert provider.stats()["refresh_requests"] == 0


def test_logout_all_ends_every_device_of_the_subject_only(provider, tmp_path):
    app = signin_app(provider, tmp_path)
    guard = app.extensions["tokenguard_guard"]

    @app.post("/_test/seed-as")
    @guard.exempt
    def seed_as() -> Any:
        body = request.get_json()
        guard.login(body["token"], subject=body["subject"])
        return jsonify(ok=True)

    with serve(app) as base:
        devices = []
        for sub in ("alice", "alice", "bob"):
            http = requests.Session()
            token = provider.issue(sub, expires_in=3600)
            http.post(f"{base}/_test/seed-as", json={"token": token, "subject": sub}, timeout=5)
            assert http.get(f"{base}/api/profile", timeout=5).status_code == 200
            devices.append(http)
        ended = devices[0].post(f"{base}/_test/logout-all", json={"subject": "alice"}, timeout=5)
        assert ended.json() == {"ended": 2}
        assert [d.get(f"{base}/api/profile", timeout=5).status_code for d in devices] == [
            401,
            401,
            200,
        ]


def test_every_request_of_the_session_sees_the_newest_token_without_the_cookie(provider, guarded):
    """A tab whose cookie predates a refresh reads the record: no second provider call."""
    provider.set_faults(access_ttl=2)
    base = guarded(TOKENGUARD_LEEWAY=5)
    http = new_client(base, provider.issue(expires_in=0))
    stale_tab = clone_cookies(http)  # the cookie before the refresh
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 200
    assert provider.stats()["refreshes"] == 1
    reply = stale_tab.get(f"{base}/api/profile", timeout=5)
    assert reply.status_code == 200
    assert provider.stats()["refreshes"] == 1
    newest = http.get(f"{base}/_test/token", timeout=5).json()["access_token"]
    assert stale_tab.get(f"{base}/_test/token", timeout=5).json()["access_token"] == newest


def test_the_record_lives_as_long_as_the_session(provider, tmp_path):
    """PERMANENT_SESSION_LIFETIME bounds the record too; using the session renews both."""
    app = make_app(provider, str(tmp_path), PERMANENT_SESSION_LIFETIME=3)

    @app.before_request
    def permanent() -> None:
        from flask import session

        session.permanent = True  # the cookie is renewed on every response

    with serve(app) as base:
        check_lifetime(provider, base)
    store = app.extensions["tokenguard"].store
    tickets = [key for key in list(store._values) if ":ticket:" in key]
    assert tickets and all(store.read(key) is None for key in tickets)  # expired in the store


def check_lifetime(provider: Any, base: str) -> None:
    http = new_client(base, provider.issue(expires_in=3600))
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 200
    # (Flask's cookie signatures count whole seconds: the gaps leave a second to spare.)
    time.sleep(1.6)  # past half its life: opening it renews it
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 200
    time.sleep(1.6)
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 200
    idle = clone_cookies(http)
    time.sleep(3.5)  # unused for longer than the session lives
    assert idle.get(f"{base}/api/profile", timeout=5).status_code == 401


@pytest.mark.parametrize("backend", ["redis", "file"])
def test_what_rests_in_the_store_and_in_the_cookie_opens_for_nobody(
    provider, guarded, backend, tmp_path, request
):
    provider.set_faults(access_ttl=2)
    if backend == "redis":
        redis_url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        config = {"TOKENGUARD_CACHE_URL": redis_url, "TOKENGUARD_KEY_PREFIX": prefix + "tg"}
    else:
        config = {"TOKENGUARD_CACHE_URL": f"file://{tmp_path / 'store'}"}
    base = guarded(TOKENGUARD_LEEWAY=5, **config)
    http = new_client(base, provider.issue(expires_in=0))
    assert burst(http, f"{base}/api/profile", 8).statuses == [200] * 8
    if backend == "redis":
        import redis

        client = redis.Redis.from_url(redis_url)
        try:
            stored = [client.get(k) or b"" for k in client.scan_iter(match=prefix + "*")]
        finally:
            client.close()
    else:
        stored = [p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert any(b"tg1." in value for value in stored)  # the sealed records are there
    everything = b"".join(stored) + json.dumps(dict(http.cookies)).encode()
    secrets = provider.issued_tokens()
    assert len(secrets) >= 4
    for secret in secrets:
        assert secret.encode() not in everything


def test_a_tampered_ticket_is_no_token(provider, tmp_path):
    app = make_app(provider, str(tmp_path))
    client = app.test_client()
    client.post("/_test/seed", json=provider.issue(expires_in=3600))
    with client.session_transaction() as session:
        ticket = dict(session["_tokenguard"])
        ticket["k"] = ticket["k"][::-1]
        session["_tokenguard"] = ticket
    assert client.get("/api/profile").status_code == 401
    assert provider.stats()["refresh_requests"] == 0


def test_a_token_not_due_costs_no_io_and_opening_it_one_store_read():
    from flask_tokenguard.coordinator import Coordinator
    from flask_tokenguard.keys import KeyNames
    from flask_tokenguard.records import RecordCodec
    from flask_tokenguard.rules import Decision, RequestState, TokenRules
    from flask_tokenguard.sealing import Sealer
    from flask_tokenguard.tickets import TicketTokens

    from .test_rules import SECRET, CountingStore, ScriptedProvider, token

    store = CountingStore()
    keys = KeyNames("client")
    tickets = TicketTokens("_tg", store, keys, [SECRET], leeway=60, lifetime=3600)
    coordinator = Coordinator(
        ScriptedProvider(),  # type: ignore[arg-type]
        store,
        keys,
        RecordCodec(Sealer([SECRET], "store")),
    )
    rules = TokenRules(tickets, coordinator, wait_timeout=5)
    session: dict[str, Any] = {}
    rules.login(session, RequestState(), token(expires_in=3600))
    assert "access_token" not in json.dumps(session)  # a ticket, no token
    store.calls = 0
    opened: list[str] = []
    open_text = tickets._open_text
    tickets._open_text = lambda *args: opened.append("open") or open_text(*args)  # type: ignore[method-assign]
    state = rules.check(session, RequestState())
    assert store.calls == 0  # the fast path
    assert rules.verdict(session, state).decision is Decision.SERVE
    assert store.calls == 1 and opened == []  # the protected view's one read, nothing decrypted
    assert rules.open(session, state) is not None
    assert store.calls == 1 and opened == ["open"]  # guard.token opens what that read returned
