"""The app's own token (client-credentials grant): one fetch per expiry across the fleet.

The demo provider over HTTP counts every client-credentials request; the real Redis is the
shared store; gunicorn runs 4 workers x 8 threads, and two servers share one Redis.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask import Flask

from flask_tokenguard import TokenGuard
from flask_tokenguard.apptoken import normalise_scope
from flask_tokenguard.errors import ProviderError, ProviderUnavailable

from .fixtures.apps import make_app

ROUNDS = 5


def cc_requests(provider: Any) -> int:
    return int(provider.stats()["client_credentials_requests"])


def redis_app(provider: Any, tmp_path: Path, redis_url: str, prefix: str, **config: Any) -> Flask:
    return make_app(
        provider,
        str(tmp_path / "instance"),
        TOKENGUARD_CACHE_URL=redis_url,
        TOKENGUARD_KEY_PREFIX=prefix + "tg",
        **config,
    )


def guard_of(app: Flask) -> TokenGuard:
    guard = app.extensions["tokenguard_guard"]
    assert isinstance(guard, TokenGuard)
    return guard


def all_at_once(n: int, fn: Any) -> list[Any]:
    barrier = threading.Barrier(n)

    def one(i: int) -> Any:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def test_scope_is_normalised() -> None:
    assert normalise_scope(None) == ""
    assert normalise_scope("b a  a") == "a b"
    assert normalise_scope(["b", "a c"]) == "a b c"


def test_threads_share_one_fetch_and_the_store_keeps_it_sealed(
    provider, tmp_path, redis_url, redis_prefix
):
    provider.set_faults(refresh_delay=0.3)
    app = redis_app(provider, tmp_path, redis_url, redis_prefix)
    guard = guard_of(app)

    def ask() -> str:
        with app.app_context():  # no request: a background thread or a CLI command
            return str(guard.client_token()["access_token"])

    tokens = all_at_once(16, lambda _: ask())
    assert len(set(tokens)) == 1
    assert cc_requests(provider) == 1
    assert provider.userinfo(tokens[0]).status_code == 200

    # Another process (a fresh app on the same store) adopts it without a request.
    other = redis_app(provider, tmp_path, redis_url, redis_prefix)
    with other.app_context():
        assert guard_of(other).client_token()["access_token"] == tokens[0]
    assert cc_requests(provider) == 1

    assert_nothing_in_clear(provider, redis_url, redis_prefix)


def assert_nothing_in_clear(provider: Any, redis_url: str, prefix: str) -> None:
    """No key name or value under ``prefix`` holds a token or the client secret in clear."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        assert keys
        secrets = [*provider.issued_tokens(), provider.client_secret]
        for key in keys:
            value = client.get(key) or b""
            for secret in secrets:
                assert secret.encode() not in key
                assert secret.encode() not in value
    finally:
        client.close()


def test_a_refused_token_is_replaced_once_and_the_call_retried(
    provider, tmp_path, redis_url, redis_prefix
):
    provider.set_faults(refresh_delay=0.3)
    app = redis_app(provider, tmp_path, redis_url, redis_prefix, TOKENGUARD_RETRY_AFTER=0.5)
    guard = guard_of(app)
    with app.app_context():
        http = guard.client_session()
    statuses: list[int] = []
    http.hooks["response"].append(lambda reply, **_: statuses.append(reply.status_code))
    assert http.get(provider.userinfo_url, timeout=5).status_code == 200
    assert cc_requests(provider) == 1
    with app.app_context():
        dead = guard.client_token()["access_token"]
    provider.revoke(dead)  # the provider's admin API: the app token dies before its expiry
    statuses.clear()
    time.sleep(0.6)  # a token refused right after its fetch is not replaced (see below)

    # Eight calls at once on the session, outside any app context: each is refused once.
    replies = all_at_once(8, lambda _: http.get(provider.userinfo_url, timeout=10))
    assert [r.status_code for r in replies] == [200] * 8
    assert statuses.count(401) == 8 and statuses.count(200) == 8
    assert cc_requests(provider) == 2  # one shared fetch for every call that saw the 401
    with app.app_context():
        fresh = guard.client_token()["access_token"]
    assert fresh != dead

    # Refused again at once (an API that refuses every token): no new fetch, the 401 is returned.
    provider.revoke(fresh)
    statuses.clear()
    assert http.get(provider.userinfo_url, timeout=5).status_code == 401
    assert statuses == [401]
    assert cc_requests(provider) == 2
    time.sleep(0.6)  # TOKENGUARD_RETRY_AFTER later, it is replaced
    assert http.get(provider.userinfo_url, timeout=5).status_code == 200
    assert cc_requests(provider) == 3
    http.close()


def test_an_ambiguous_fetch_is_transient_and_tried_again(
    provider, tmp_path, redis_url, redis_prefix
):
    app = redis_app(provider, tmp_path, redis_url, redis_prefix, TOKENGUARD_RETRY_AFTER=0.5)
    guard = guard_of(app)
    provider.set_faults(drop_after_commit=1)
    with app.app_context(), pytest.raises(ProviderUnavailable):
        guard.client_token()
    time.sleep(0.6)  # the failure is held briefly, then the next call fetches again
    with app.app_context():
        token = guard.client_token()
    assert provider.userinfo(token["access_token"]).status_code == 200
    assert cc_requests(provider) == 2


def test_a_refused_client_is_a_configuration_error(provider, tmp_path, redis_url, redis_prefix):
    app = redis_app(provider, tmp_path, redis_url, redis_prefix)
    provider.set_faults(invalid_client=1)
    with app.app_context(), pytest.raises(ProviderError):
        guard_of(app).client_token()


@pytest.mark.parametrize("storage", ["store", "session"])
def test_the_users_session_refreshes_once_on_a_401_and_retries(provider, guarded, storage):
    base = guarded(TOKENGUARD_TOKEN_STORAGE=storage)
    token = provider.issue(expires_in=600)
    http = requests.Session()
    http.post(f"{base}/_test/seed", json=token, timeout=5).raise_for_status()
    # RFC 7009: the access token alone dies; the refresh token still works.
    assert provider.revoke_token(token["access_token"], "access_token").status_code == 200
    reply = http.get(f"{base}/api/profile", timeout=10)
    assert reply.status_code == 200, reply.text
    assert provider.stats()["refreshes"] == 1
    assert provider.stats()["max_presentations"] == 1


# -- across processes and hosts -----------------------------------------------------------


def app_token_rounds(provider: Any, urls: list[str], n: int = 32) -> list[tuple[int, int, int]]:
    """``ROUNDS`` bursts of ``n`` requests for the app token, each after the last one is due.

    Returns (round, client-credentials requests in the round, distinct tokens served).
    """
    figures = []
    before = cc_requests(provider)
    for number in range(1, ROUNDS + 1):
        if number > 1:
            time.sleep(2.1)  # a 4 s token is due after half its life (leeway 5 s is longer)
        replies = all_at_once(n, lambda i: requests.get(urls[i % len(urls)], timeout=30))
        assert [r.status_code for r in replies] == [200] * n
        served = {r.json()["access_token"] for r in replies}
        after = cc_requests(provider)
        figures.append((number, after - before, len(served)))
        before = after
    print(f"\napp token figures (round, client-credentials requests, tokens served): {figures}")
    assert [f[1] for f in figures] == [1] * ROUNDS, figures
    assert [f[2] for f in figures] == [1] * ROUNDS, figures
    return figures


@pytest.mark.slow
def test_four_workers_fetch_the_app_token_once_per_expiry(
    provider, gunicorn, redis_url, redis_prefix
):
    provider.set_faults(refresh_delay=0.3, access_ttl=4)
    config = json.dumps({"TOKENGUARD_KEY_PREFIX": redis_prefix + "tg"})
    server = gunicorn(redis_url, workers=4, threads=8, TG_CONFIG=config)
    app_token_rounds(provider, [f"{server.url}/_test/app-token"])
    assert_nothing_in_clear(provider, redis_url, redis_prefix)


@pytest.mark.slow
def test_two_servers_fetch_the_app_token_once_per_expiry(
    provider, gunicorn, redis_url, redis_prefix
):
    provider.set_faults(refresh_delay=0.3, access_ttl=4)
    config = json.dumps({"TOKENGUARD_KEY_PREFIX": redis_prefix + "tg"})
    one = gunicorn(redis_url, workers=2, threads=8, TG_CONFIG=config)
    two = gunicorn(redis_url, workers=2, threads=8, TG_CONFIG=config)
    app_token_rounds(provider, [f"{one.url}/_test/app-token", f"{two.url}/_test/app-token"])


@pytest.mark.slow
def test_workers_share_one_fetch_after_the_api_refuses_the_app_token(
    provider, gunicorn, redis_url, redis_prefix
):
    provider.set_faults(refresh_delay=0.3)
    config = json.dumps(
        {"TOKENGUARD_KEY_PREFIX": redis_prefix + "tg", "TOKENGUARD_RETRY_AFTER": 0.5}
    )
    server = gunicorn(redis_url, workers=4, threads=8, TG_CONFIG=config)
    dead = requests.get(f"{server.url}/_test/app-token", timeout=10).json()["access_token"]
    provider.revoke(dead)
    time.sleep(0.6)  # older than TOKENGUARD_RETRY_AFTER: a refused token is replaced
    before = cc_requests(provider)
    replies = all_at_once(32, lambda _: requests.get(f"{server.url}/_test/app-api", timeout=30))
    bodies = [r.json() for r in replies]
    assert all(b["status"] == 200 for b in bodies), bodies
    # Workers that had the dead token in memory were refused once, then retried.
    assert all(b["statuses"] in ([200], [401, 200]) for b in bodies), bodies
    assert any(b["statuses"] == [401, 200] for b in bodies)
    assert cc_requests(provider) - before == 1
