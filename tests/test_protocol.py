"""The protocol across requests: late arrivals, stale sessions, lost updates, logouts, several
users, store outages and restarts, the provider's grace window.

docs/design.md, "Failure ways" (3. Late arrival, 4. Lost update of the session, 7. Error
fan-out), "The protocol" and "The per-request rules".
"""

from __future__ import annotations

import json
import logging
import threading
import time

import redis

from flask_tokenguard.keys import KeyNames

from .fixtures.apps import burst, clone_cookies, new_client, wait_for_refresh_requests


def token_of(http, base):
    return http.get(f"{base}/_test/token", timeout=5).json()


def test_a_session_two_rotations_old_adopts_the_newest_token(provider, guarded):
    provider.set_faults(access_ttl=2)
    base = guarded(TOKENGUARD_LEEWAY=5)
    first = provider.issue(expires_in=0)
    http = new_client(base, first)
    stale = clone_cookies(http)  # the session as it was before two rotations

    for rotation in range(2):
        if rotation:
            time.sleep(1.1)  # the new token is due after half of its 2 s
        assert burst(http, f"{base}/api/profile", 8).statuses == [200] * 8
    assert provider.stats()["refreshes"] == 2
    newest = token_of(http, base)["refresh_token"]

    reply = stale.get(f"{base}/api/profile", timeout=5)
    assert reply.status_code == 200
    assert provider.stats()["refreshes"] == 2  # no provider call
    assert provider.stats()["max_presentations"] == 1
    stale.cookies.update(reply.cookies)
    assert token_of(stale, base)["refresh_token"] == newest


def test_a_slow_read_only_request_does_not_restore_a_dead_refresh_token(
    provider, guarded, redis_url, redis_prefix
):
    base = guarded(
        TOKENGUARD_TOKEN_STORAGE="session",  # the session carries the token written back
        TOKENGUARD_LEEWAY=2,
        TOKENGUARD_CACHE_URL=redis_url,
        TOKENGUARD_KEY_PREFIX=redis_prefix + "tg",
        session_redis=f"{redis_url}|{redis_prefix}session:",
    )
    token = provider.issue(expires_in=4)  # not yet due when the slow request starts
    http = new_client(base, token)
    slow = threading.Thread(target=lambda: http.get(f"{base}/slow?s=4", timeout=10))
    slow.start()
    time.sleep(2.5)  # now due: this request refreshes
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 200
    assert provider.stats()["refreshes"] == 1
    slow.join()  # it wrote the whole session back, as Flask-Session does

    client = redis.Redis.from_url(redis_url)
    try:
        sid = http.cookies["session"]
        stored = json.loads(client.get(f"{redis_prefix}session:{sid}"))
    finally:
        client.close()
    keys = KeyNames(provider.client_id)
    assert stored["_tokenguard"]["fp"] != keys.fingerprint(token["refresh_token"])
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 200
    assert provider.presentations(token["refresh_token"]) == 1


def test_a_logout_during_a_refresh_stays_a_logout(provider, guarded):
    provider.set_faults(refresh_delay=1.5)
    base = guarded()
    http = new_client(base, provider.issue(expires_in=0))
    outcome = {}

    def protected() -> None:
        client = clone_cookies(http)
        outcome["reply"] = client.get(f"{base}/api/profile", timeout=10)

    refreshing = threading.Thread(target=protected)
    refreshing.start()
    wait_for_refresh_requests(provider)  # the refresh is at the provider
    logout = http.get(f"{base}/logout", timeout=5)
    assert logout.status_code == 200
    refreshing.join()
    # The browser keeps the cookie of the response that came last: the refreshing one.
    http.cookies.update(outcome["reply"].cookies)
    assert token_of(http, base)["record"] is None
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 401


def test_several_users_refreshing_at_once_never_share(provider, guarded):
    provider.set_faults(refresh_delay=0.3)
    base = guarded()
    users = [f"user{i}" for i in range(4)]
    clients = {u: new_client(base, provider.issue(sub=u, expires_in=0)) for u in users}
    results = {}

    def run(user: str) -> None:
        results[user] = burst(clients[user], f"{base}/api/profile", 8)

    threads = [threading.Thread(target=run, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for user in users:
        assert results[user].statuses == [200] * 8
        assert {r.json()["profile"]["sub"] for r in results[user].replies} == {user}
    stats = provider.stats()
    assert stats["refreshes"] == 4
    assert stats["max_presentations"] == 1


def test_store_outage_fails_closed_and_recovers(provider, guarded, private_redis):
    base = guarded(
        TOKENGUARD_TOKEN_STORAGE="session",  # the token outlives the store's state
        TOKENGUARD_CACHE_URL=private_redis.url,
    )
    fresh = new_client(base, provider.issue(expires_in=3600))
    expired = new_client(base, provider.issue(expires_in=0))
    private_redis.stop()

    assert fresh.get(f"{base}/api/profile", timeout=5).status_code == 200  # untouched
    started = time.monotonic()
    reply = expired.get(f"{base}/api/profile", timeout=10)
    assert reply.status_code == 503
    assert reply.headers["Retry-After"]
    assert time.monotonic() - started < 6  # fails fast: well inside the 8 s wait bound
    assert provider.stats()["refresh_requests"] == 0

    private_redis.start()
    assert expired.get(f"{base}/api/profile", timeout=10).status_code == 200
    assert provider.stats()["refreshes"] == 1


def test_store_outage_falls_back_to_this_process_when_asked(
    provider, guarded, private_redis, caplog
):
    caplog.set_level(logging.WARNING, logger="flask_tokenguard")
    provider.set_faults(refresh_delay=0.3)
    base = guarded(
        TOKENGUARD_TOKEN_STORAGE="session",  # the token outlives the store's state
        TOKENGUARD_CACHE_URL=private_redis.url,
        TOKENGUARD_STORE_FALLBACK="process",
    )
    http = new_client(base, provider.issue(expires_in=0))
    private_redis.stop()

    result = burst(http, f"{base}/api/profile", 16)
    assert result.statuses == [200] * 16
    assert provider.stats()["refreshes"] == 1
    warnings = [r for r in caplog.records if "falling back" in r.getMessage()]
    assert len(warnings) == 1

    private_redis.start()
    again = new_client(base, provider.issue(expires_in=0))
    assert again.get(f"{base}/api/profile", timeout=10).status_code == 200
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_after_a_redis_restart_claims_count_as_held_for_the_restart_hold(
    provider, guarded, private_redis
):
    timings = {
        "TOKENGUARD_PROVIDER_TIMEOUT": 1,
        "TOKENGUARD_CLAIM_TTL": 6,
        "TOKENGUARD_RESTART_HOLD": 1.5,  # leaders in flight re-assert their claims within it
        "TOKENGUARD_WAIT_TIMEOUT": 10,
    }
    base = guarded(
        TOKENGUARD_TOKEN_STORAGE="session",  # the token outlives the store's state
        TOKENGUARD_CACHE_URL=private_redis.url,
        **timings,
    )
    warm = new_client(base, provider.issue(expires_in=0))
    assert warm.get(f"{base}/api/profile", timeout=10).status_code == 200  # learns the run_id
    private_redis.restart()

    http = new_client(base, provider.issue(expires_in=0))
    started = time.monotonic()
    result = burst(http, f"{base}/api/profile", 8)
    elapsed = time.monotonic() - started
    assert result.statuses == [200] * 8
    assert elapsed >= 1.0  # it waited out the uncertain claims...
    assert elapsed < 5.0  # ...for the restart hold, not a whole claim TTL
    assert provider.stats()["refreshes"] == 2
    assert provider.stats()["max_presentations"] == 1


def test_the_providers_grace_window_allows_one_retry_of_an_ambiguous_refresh(provider, guarded):
    provider.set_faults(reuse_grace=10, drop_after_commit=1)
    base = guarded(TOKENGUARD_PROVIDER_GRACE=10)
    token = provider.issue(expires_in=0)
    http = new_client(base, token)
    assert http.get(f"{base}/api/profile", timeout=10).status_code == 200
    stats = provider.stats()
    assert provider.presentations(token["refresh_token"]) == 2
    assert stats["grace_reuses"] == 1
    assert stats["families_revoked"] == 0


def test_without_a_grace_window_an_ambiguous_refresh_is_not_retried(provider, guarded):
    provider.set_faults(reuse_grace=10, drop_after_commit=1)
    base = guarded()
    token = provider.issue(expires_in=0)
    http = new_client(base, token)
    assert http.get(f"{base}/api/profile", timeout=10).status_code == 401
    assert provider.presentations(token["refresh_token"]) == 1
