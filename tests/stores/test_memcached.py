"""memcached specifics: ttl rounding, key digests, tombstones, identity, the client per process."""

from __future__ import annotations

import os
import time

import pytest


def test_memcached_ttls_and_keys() -> None:
    from flask_tokenguard.stores.memcached import _expire, _mkey

    assert _expire(0.3) == 2  # its clock ticks once a second: one tick more than asked
    assert _expire(1) == 2
    assert _expire(1.5) == 3
    assert _expire(365 * 24 * 3600) == 30 * 24 * 3600  # never read as a Unix time
    assert _mkey("tokenguard:claim:ab12") == "tokenguard:claim:ab12"
    for odd in ("with space", "x" * 300, "naïve", "tab\there"):
        hashed = _mkey(odd)
        assert hashed.startswith("tg~") and len(hashed) < 100


def test_memcached_release_leaves_a_tombstone_a_claim_can_take(memcached_url: str) -> None:
    from pymemcache.client.base import Client

    from flask_tokenguard.stores.memcached import TOMBSTONE, MemcachedStore, parse_memcached_url

    store = MemcachedStore.from_url(memcached_url)
    raw = Client(parse_memcached_url(memcached_url), connect_timeout=1, timeout=1)
    key = f"tgtest:{os.getpid()}:{time.monotonic_ns()}:claim"
    try:
        assert store.claim(key, "alice", 30)
        assert store.release(key, "alice")
        assert raw.get(key) == TOMBSTONE
        assert store.read_claim(key).owner is None
        assert not store.release(key, "alice")
        assert store.claim(key, "bob", 30)
        assert raw.get(key) == b"bob"
    finally:
        raw.close()
        store.close()


def test_memcached_identity_is_stable(memcached_url: str) -> None:
    from flask_tokenguard.stores.memcached import MemcachedStore

    store = MemcachedStore.from_url(memcached_url, identity_ttl=0.0)
    try:
        first = store.identity()
        assert first and store.identity() == first
    finally:
        store.close()


def test_memcached_client_is_recreated_in_a_forked_child(
    memcached_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new pid (a fork) gets a client of its own; the parent's is kept, never closed."""
    from flask_tokenguard.stores.memcached import MemcachedStore

    store = MemcachedStore.from_url(memcached_url)
    try:
        store.ping()
        assert store._client is not None
        parent = store._client[1]
        monkeypatch.setattr(os, "getpid", lambda: -1)
        store.ping()
        assert store._client[0] == -1 and store._client[1] is not parent
        assert store._orphans == [parent]
        store.close()  # "our" client: closed; the orphan is not touched
        assert store._client is None
    finally:
        monkeypatch.undo()
        store.close()
        parent.close()


class _LostCasClient:
    """A memcached client whose ``cas`` and ``add`` are sent but never answered."""

    def __init__(self, stored: bytes | None) -> None:
        self.stored = stored

    def gets(self, key: str) -> tuple[bytes | None, bytes | None]:
        return b"old", b"42"

    def cas(self, *args: object, **kwargs: object) -> bool:
        raise TimeoutError("timed out")

    add = cas

    def get(self, key: str) -> bytes | None:
        return self.stored

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("stored", "won"), [(b"mine", True), (b"other", False), (None, False)])
@pytest.mark.parametrize("swap_from", [None, "old"])
def test_memcached_settles_an_uncertain_swap_by_reading_back(
    monkeypatch: pytest.MonkeyPatch, stored: bytes | None, won: bool, swap_from: str | None
) -> None:
    from flask_tokenguard.errors import StoreUnavailable
    from flask_tokenguard.stores.memcached import MemcachedStore

    monkeypatch.setattr(MemcachedStore, "_connect", lambda self: _LostCasClient(stored))
    store = MemcachedStore("127.0.0.1", 1)
    if won:
        assert store.swap("tgtest:uncertain", swap_from, "mine", 5)
    else:
        with pytest.raises(StoreUnavailable, match="timed out"):
            store.swap("tgtest:uncertain", swap_from, "mine", 5)


def test_memcached_waiters_poll_every_few_milliseconds(memcached_url: str) -> None:
    """No notifications: a get every 1 ms doubling to 10 ms, so about 100 a second while a
    waiter waits, and it wakes within one step of the publish."""
    import threading

    from flask_tokenguard.stores.memcached import MemcachedStore
    from tests.stores.helpers import count_reads

    waiter, publisher = (
        MemcachedStore.from_url(memcached_url),
        MemcachedStore.from_url(memcached_url),
    )
    key = f"tgtest:{os.getpid()}:{time.monotonic_ns()}:poll"
    reads = count_reads(waiter)
    try:
        assert (waiter.poll_first, waiter.poll_max) == (0.001, 0.01)
        start = time.monotonic()
        assert waiter.wait_for(key, 0.5) is None
        waited = time.monotonic() - start
        assert 10 <= reads[0] <= 60 + 10, f"{reads[0]} gets in {waited:.3f} s"
        timer = threading.Timer(0.2, publisher.publish, (key, "v", 30))
        timer.start()
        try:
            assert waiter.wait_for(key, 5) == "v"
        finally:
            timer.join()
    finally:
        waiter.close()
        publisher.close()


class _StatsClient:
    """Answers ``stats`` as memcached 1.6 does at its start (which it dates 2 s back)."""

    def stats(self) -> dict[bytes, int]:
        return {b"pid": 4242, b"uptime": 2, b"time": 1796048718}

    def close(self) -> None:
        pass


def test_memcached_uptime_counts_from_its_real_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart's hold counts from the server's real start, not its dated-back one."""
    from flask_tokenguard.stores.memcached import MemcachedStore

    monkeypatch.setattr(MemcachedStore, "_connect", lambda self: _StatsClient())
    store = MemcachedStore("127.0.0.1", 1, identity_ttl=0.0)
    assert (store.uptime() or 0) < 0.5
    assert store.identity() == "4242@1796048716"
