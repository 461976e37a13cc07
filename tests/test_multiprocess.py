"""One refresh across gunicorn workers and hosts, and a leader killed around its call.

docs/design.md, "Failure ways" (2. Duplicate refresh across processes and hosts, 6. Leader
death) and "What each store guarantees".

Real gunicorn workers (4 x 8 threads), the strict provider over HTTP, the real Redis or a
file store; one user's burst of 48 requests with an expired token, five rotations.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import redis

from .fixtures.apps import burst, new_client, wait_for_refresh_requests

N = 48
ROTATIONS = 5

pytestmark = pytest.mark.slow


def rotations(provider, http, urls, n=N, rounds=ROTATIONS):
    figures = []
    for rotation in range(1, rounds + 1):
        if rotation > 1:
            time.sleep(2.05)  # a 4 s token is due after half its life (leeway 5 s is longer)
        result = burst(http, urls, n)
        stats = provider.stats()
        figures.append(
            (rotation, result.count(200), stats["refreshes"], stats["max_presentations"])
        )
        assert result.statuses == [200] * n, f"rotation {rotation}: {result.statuses}"
        assert stats["refreshes"] == rotation, (
            f"rotation {rotation}: {stats['refreshes']} refreshes"
        )
        assert stats["max_presentations"] == 1
    assert provider.stats()["families_revoked"] == 0
    print(f"\nburst figures (rotation, 200s, refreshes so far, max presentations): {figures}")


STORAGES = pytest.mark.parametrize("storage", ["store", "session"])


@STORAGES
def test_four_workers_share_one_refresh_through_redis(
    provider, gunicorn, redis_url, redis_prefix, storage
):
    provider.set_faults(refresh_delay=0.3, access_ttl=4)
    config = {"TOKENGUARD_KEY_PREFIX": redis_prefix + "tg", "TOKENGUARD_TOKEN_STORAGE": storage}
    server = gunicorn(f"{redis_url}", TG_CONFIG=json.dumps(config))
    http = new_client(server.url, provider.issue(expires_in=0))
    rotations(provider, http, f"{server.url}/api/profile")


def test_preloaded_workers_each_get_their_own_store_client(
    provider, gunicorn, redis_url, redis_prefix
):
    """gunicorn --preload forks after init_app: store clients must be created after the fork."""
    provider.set_faults(refresh_delay=0.3, access_ttl=4)
    config = json.dumps({"TOKENGUARD_KEY_PREFIX": redis_prefix + "tg"})
    server = gunicorn(redis_url, preload=True, TG_CONFIG=config)
    http = new_client(server.url, provider.issue(expires_in=0))
    rotations(provider, http, f"{server.url}/api/profile", rounds=2)


@STORAGES
def test_two_hosts_share_one_refresh_through_redis(
    provider, gunicorn, redis_url, redis_prefix, storage
):
    provider.set_faults(refresh_delay=0.3, access_ttl=4)
    config = json.dumps(
        {"TOKENGUARD_KEY_PREFIX": redis_prefix + "tg", "TOKENGUARD_TOKEN_STORAGE": storage}
    )
    one = gunicorn(redis_url, workers=2, threads=8, TG_CONFIG=config)
    two = gunicorn(redis_url, workers=2, threads=8, TG_CONFIG=config)
    http = new_client(one.url, provider.issue(expires_in=0))
    rotations(provider, http, [f"{one.url}/api/profile", f"{two.url}/api/profile"])


@STORAGES
def test_four_workers_share_one_refresh_through_memcached(
    provider, gunicorn, memcached_url, tmp_path, storage
):
    provider.set_faults(refresh_delay=0.3, access_ttl=4)
    config = {
        "TOKENGUARD_KEY_PREFIX": f"tgtest{tmp_path.name[-6:]}",
        "TOKENGUARD_TOKEN_STORAGE": storage,
    }
    server = gunicorn(memcached_url, TG_CONFIG=json.dumps(config))
    http = new_client(server.url, provider.issue(expires_in=0))
    rotations(provider, http, f"{server.url}/api/profile", rounds=3)


def test_real_sized_tokens_across_four_workers_keep_every_cookie_small(
    provider, gunicorn, redis_url, redis_prefix
):
    """8 KB access tokens, kept in the store: one refresh, nothing fails, no cookie over 4 KB."""
    provider.set_faults(refresh_delay=0.3, access_ttl=4, access_token_size=8000)
    config = {"TOKENGUARD_KEY_PREFIX": redis_prefix + "tg"}
    server = gunicorn(redis_url, TG_CONFIG=json.dumps(config))
    http = new_client(server.url, provider.issue(expires_in=0))
    result = burst(http, f"{server.url}/api/profile", N)
    assert result.statuses == [200] * N
    stats = provider.stats()
    assert stats["refreshes"] == 1 and stats["max_presentations"] == 1
    tokens = {r.json()["profile"]["token_fingerprint"] for r in result.replies}
    assert len(tokens) == 1
    sizes = [len(h) for r in result.replies for h in r.raw.headers.getlist("Set-Cookie")]
    assert sizes and max(sizes) < 4096
    print(f"\n8 KB tokens, 4 workers: largest Set-Cookie {max(sizes)} bytes")


@STORAGES
def test_four_workers_share_one_refresh_through_the_file_store(
    provider, gunicorn, tmp_path, storage
):
    provider.set_faults(refresh_delay=0.3, access_ttl=4)
    config = json.dumps({"TOKENGUARD_TOKEN_STORAGE": storage})
    server = gunicorn(f"file://{tmp_path / 'store'}", TG_CONFIG=config)
    http = new_client(server.url, provider.issue(expires_in=0))
    rotations(provider, http, f"{server.url}/api/profile")


def test_the_default_store_is_shared_by_the_workers_of_one_host(provider, gunicorn):
    """No TOKENGUARD_CACHE_URL: the file store under the instance folder."""
    provider.set_faults(refresh_delay=0.3, access_ttl=4)
    server = gunicorn("")
    http = new_client(server.url, provider.issue(expires_in=0))
    rotations(provider, http, f"{server.url}/api/profile", rounds=2)


def _leader(directory: Path, timeout: float = 10) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = list(directory.glob("leader-*"))
        if found:
            return int(found[0].read_text())
        time.sleep(0.02)
    raise AssertionError("no process became the leader")


LEADER_TIMINGS = {
    "TOKENGUARD_PROVIDER_TIMEOUT": 2,
    "TOKENGUARD_CLAIM_TTL": 3,
    "TOKENGUARD_WAIT_TIMEOUT": 6,
}


def kill_the_leader(provider, gunicorn, redis_url, redis_prefix, tmp_path, *, before_send):
    """A burst of 24 during which the worker about to send the refresh is SIGKILLed.

    ``before_send``: the leader is stalled just before it marks its claim "sent", and killed
    there; otherwise it is killed while the provider holds its request.
    """
    leaders = tmp_path / "leaders"
    leaders.mkdir()
    if before_send:
        (leaders / "stall").touch()
    config = {**LEADER_TIMINGS, "TOKENGUARD_KEY_PREFIX": redis_prefix + "tg"}
    server = gunicorn(redis_url, TG_CONFIG=json.dumps(config), TG_LEADER_DIR=str(leaders))
    token = provider.issue(expires_in=0)
    http = new_client(server.url, token)
    box = {}
    runner = threading.Thread(
        target=lambda: box.setdefault("result", burst(http, f"{server.url}/api/profile", 24))
    )
    started = time.monotonic()
    runner.start()
    victim = _leader(leaders)
    if not before_send:
        wait_for_refresh_requests(provider)  # the leader's request is at the provider
    os.kill(victim, signal.SIGKILL)
    if before_send:
        (leaders / "stall").unlink()
    runner.join(30)
    return server, http, token, box["result"], time.monotonic() - started


def test_a_leader_killed_before_sending_is_taken_over(
    provider, gunicorn, redis_url, redis_prefix, tmp_path
):
    provider.set_faults(access_ttl=30)
    server, http, token, result, elapsed = kill_the_leader(
        provider, gunicorn, redis_url, redis_prefix, tmp_path, before_send=True
    )
    assert elapsed < LEADER_TIMINGS["TOKENGUARD_WAIT_TIMEOUT"] + 6  # bounded, not hung
    # The requests the killed worker had accepted lost their connection (gunicorn does not
    # spread connections evenly: it may have taken all of them); every other one got the
    # new token from the process that took over.
    assert all(s in (200, "ConnectionError") for s in result.statuses), result.statuses
    # Whoever comes next takes over the expired claim, or adopts the takeover's result.
    follow = burst(http, f"{server.url}/api/profile", 8)
    assert follow.statuses == [200] * 8
    assert provider.presentations(token["refresh_token"]) == 1
    assert provider.stats()["refreshes"] == 1


def test_a_leader_killed_after_sending_is_never_presented_twice(
    provider, gunicorn, redis_url, redis_prefix, tmp_path
):
    provider.set_faults(refresh_delay=2.5)
    server, _http, token, result, elapsed = kill_the_leader(
        provider, gunicorn, redis_url, redis_prefix, tmp_path, before_send=False
    )
    assert provider.presentations(token["refresh_token"]) == 1
    assert elapsed < LEADER_TIMINGS["TOKENGUARD_WAIT_TIMEOUT"] + 6  # bounded, not hung
    # Ambiguous: nobody may present the token again; the access token has expired.
    assert all(s in (401, "ConnectionError") for s in result.statuses), result.statuses
    time.sleep(0.5)
    stale = new_client(server.url, token)
    assert stale.get(f"{server.url}/api/profile", timeout=10).status_code == 401
    assert provider.presentations(token["refresh_token"]) == 1
    # No claim is left without an expiry.
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{redis_prefix}*"):
            assert client.pttl(key) > 0, key
    finally:
        client.close()
