"""Redis specifics: lost answers, no hidden retries, a paused or restarted server, forks,
pub/sub wake-ups, ACLs, capped reads."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flask_tokenguard.errors import StoreError, StoreUnavailable
from tests.stores.helpers import FORK, eventually


class _LostAnswerRedis:
    """A client whose SET is sent but whose answer never comes back."""

    def __init__(self, stored: object) -> None:
        self.stored = stored

    def set(self, *args: object, **kwargs: object) -> bool:
        import redis

        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    def get(self, key: str) -> object:
        if isinstance(self.stored, BaseException):
            raise self.stored
        return self.stored

    def register_script(self, script: str) -> object:
        return object()

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("stored", "expected"),
    [(b"me", True), (b"someone-else", False), (None, False), ("down", StoreUnavailable)],
)
def test_redis_settles_an_uncertain_claim_by_reading_back(
    monkeypatch: pytest.MonkeyPatch, stored: object, expected: object
) -> None:
    import redis

    from flask_tokenguard.stores.redis import RedisStore

    if stored == "down":
        stored = redis.exceptions.ConnectionError("Connection refused")
    monkeypatch.setattr(RedisStore, "_new_client", lambda self: _LostAnswerRedis(stored))
    store = RedisStore("redis://127.0.0.1:1/0")
    if expected is StoreUnavailable:
        with pytest.raises(StoreUnavailable):
            store.claim("tgtest:uncertain", "me", 5)
    else:
        assert store.claim("tgtest:uncertain", "me", 5) is expected


class _LostScriptRedis(_LostAnswerRedis):
    """A client whose scripts (a swap) are sent but whose answers never come back."""

    def register_script(self, script: str) -> object:
        import redis

        def run(**kwargs: object) -> object:
            raise redis.exceptions.TimeoutError("Timeout reading from socket")

        return run


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (b"mine", True),
        (b"someone-else", StoreUnavailable),
        (None, StoreUnavailable),
        (b"\xffmine", StoreUnavailable),
        ("down", StoreUnavailable),
    ],
)
@pytest.mark.parametrize("swap_from", [None, "old"])
def test_redis_settles_an_uncertain_swap_by_reading_back(
    monkeypatch: pytest.MonkeyPatch, stored: object, expected: object, swap_from: str | None
) -> None:
    """Our value there means the lost script ran: we won. Anything else is unknown: the
    script may still run (or have run and been overwritten), so the store is unavailable."""
    import redis

    from flask_tokenguard.stores.redis import RedisStore

    if stored == "down":
        stored = redis.exceptions.ConnectionError("Connection refused")
    monkeypatch.setattr(RedisStore, "_new_client", lambda self: _LostScriptRedis(stored))
    store = RedisStore("redis://127.0.0.1:1/0")
    if expected is StoreUnavailable:
        with pytest.raises(StoreUnavailable, match="Timeout"):
            store.swap("tgtest:uncertain", swap_from, "mine", 5)
    else:
        assert store.swap("tgtest:uncertain", swap_from, "mine", 5) is expected


def test_redis_swap_and_touch_count_milliseconds(redis_url: str, redis_prefix: str) -> None:
    import redis

    from flask_tokenguard.stores.redis import RedisStore

    store = RedisStore(redis_url)
    raw = redis.Redis.from_url(redis_url)
    key = redis_prefix + "record"
    try:
        assert store.swap(key, None, "v", 2.5)
        assert 2000 < raw.pttl(key) <= 2500
        assert raw.get(key) == b"v"
        assert store.touch(key, 0.75)
        assert 0 < raw.pttl(key) <= 750
        assert store.swap(key, "v", "w", 40.25)
        assert 40000 < raw.pttl(key) <= 40250
        raw.hset(key + ":hash", "f", "v")
        with pytest.raises(StoreError):
            store.swap(key + ":hash", "v", "w", 5)  # WRONGTYPE: refused, nothing written
    finally:
        raw.close()
        store.close()


class _ReadOnlyRedis(_LostAnswerRedis):
    """A replica: it refuses every write, so there is nothing to read back."""

    def set(self, *args: object, **kwargs: object) -> bool:
        import redis

        raise redis.exceptions.ReadOnlyError("You can't write against a read only replica.")

    def get(self, key: str) -> object:
        raise AssertionError("a refused write is not settled by reading back")


def test_a_read_only_redis_is_unavailable_not_a_lost_claim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flask_tokenguard.stores.redis import RedisStore

    monkeypatch.setattr(RedisStore, "_new_client", lambda self: _ReadOnlyRedis(None))
    store = RedisStore("redis://127.0.0.1:1/0")
    with pytest.raises(StoreUnavailable, match="read-only"):
        store.claim("tgtest:replica", "me", 5)


def test_redis_has_no_hidden_retries(redis_url: str) -> None:
    from redis.backoff import NoBackoff

    from flask_tokenguard.stores.redis import RedisStore

    store = RedisStore(redis_url, connect_timeout=0.25, timeout=0.25)
    try:
        pool = store._connection().client.connection_pool
        kwargs = pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.25
        assert kwargs["socket_connect_timeout"] == 0.25
        assert kwargs["retry"].get_retries() == 0
        assert isinstance(kwargs["retry"]._backoff, NoBackoff)
        assert not kwargs.get("retry_on_timeout")
    finally:
        store.close()


def test_paused_redis_fails_fast(private_redis: Any) -> None:
    from flask_tokenguard.stores.redis import RedisStore

    store = RedisStore(private_redis.url, connect_timeout=0.3, timeout=0.3)
    try:
        assert store.claim("tgtest:paused:a", "alice", 30)
        private_redis.pause()
        try:
            for operation in (
                store.ping,
                lambda: store.claim("tgtest:paused:b", "alice", 30),  # SET, then read-back
                lambda: store.read("tgtest:paused:v"),
                lambda: store.mark_sent("tgtest:paused:a", "alice", 30),
            ):
                start = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    operation()
                assert time.monotonic() - start < 3.0, "failed fast"
        finally:
            private_redis.resume()
        # The queued SET may have run on resume: our claim then sits there until its ttl,
        # which is safe (nobody sends), and the store works again at once.
        assert store.read_claim("tgtest:paused:b").owner in (None, "alice")
        assert store.claim("tgtest:paused:c", "alice", 30)
    finally:
        store.close()


def _use_inherited_store(store: Any, key: str, results: Any) -> None:
    inherited = store._client
    won = store.claim(key, "child", 30)
    pid, conn = store._client
    results.put((won, conn is not inherited[1], pid == os.getpid(), store.read(key + ":v")))
    store.close()


@pytest.mark.slow
def test_redis_client_is_recreated_after_fork(redis_url: str, redis_prefix: str) -> None:
    from flask_tokenguard.stores.redis import RedisStore

    store = RedisStore(redis_url)
    try:
        assert store.claim(redis_prefix + "parent", "parent", 30)
        store.publish(redis_prefix + "child:v", "from parent", 30)
        before = store._client
        results = FORK.Queue()
        child = FORK.Process(
            target=_use_inherited_store, args=(store, redis_prefix + "child", results)
        )
        child.start()
        try:
            assert results.get(timeout=10) == (True, True, True, "from parent")
        finally:
            child.join(10)
            results.close()
            results.join_thread()
        assert child.exitcode == 0
        assert store._client is before, "the parent keeps its own client"
        for _ in range(20):  # the parent's sockets were not shut down or desynchronised
            assert store.read_claim(redis_prefix + "child").owner == "child"
            assert store.read_claim(redis_prefix + "parent").owner == "parent"
    finally:
        store.close()


def test_redis_identity_changes_when_redis_restarts(private_redis: Any) -> None:
    from flask_tokenguard.stores.redis import RedisStore

    store = RedisStore(private_redis.url, identity_ttl=0.0)
    try:
        first = store.identity()
        assert first and store.identity() == first
        assert store.claim("tgtest:restart", "alice", 30)
        private_redis.restart()
        second = eventually(store.identity, 2.0)
        assert second and second != first
        assert store.read_claim("tgtest:restart").owner is None, "a restart forgets claims"
    finally:
        store.close()


def test_uptime_says_how_long_ago_a_server_lost_its_state(
    private_redis: Any, memcached_url: str
) -> None:
    """The coordinator treats claims as held while the server is younger than a claim ttl."""
    from flask_tokenguard.stores.memcached import MemcachedStore
    from flask_tokenguard.stores.redis import RedisStore

    redis_store = RedisStore(private_redis.url, identity_ttl=0.0)
    memcached_store = MemcachedStore.from_url(memcached_url)
    try:
        time.sleep(2.1)
        before = redis_store.uptime()
        assert before is not None and before >= 2.0
        private_redis.restart()
        after = redis_store.uptime()
        assert after is not None and after < 2.0, "younger than before the restart"
        assert (memcached_store.uptime() or 0) >= 0
    finally:
        redis_store.close()
        memcached_store.close()


def test_redis_identity_is_cached_briefly(private_redis: Any) -> None:
    from flask_tokenguard.stores.redis import RedisStore

    store = RedisStore(private_redis.url, identity_ttl=60.0)
    try:
        first = store.identity()
        private_redis.pause()
        try:
            assert store.identity() == first, "served from the cache, no round trip"
        finally:
            private_redis.resume()
    finally:
        store.close()


@pytest.mark.parametrize("notify", [True, False])
def test_redis_wait_for_wakes_on_publish(redis_url: str, redis_prefix: str, notify: bool) -> None:
    """With ``notify`` a waiter wakes on the PUBLISH: it does not re-read the value on its
    own here before its timeout. Without, it polls."""
    from flask_tokenguard.stores.redis import RedisStore

    waiter = RedisStore(redis_url, notify=notify)
    waiter.reread_interval = 60.0
    publisher = RedisStore(redis_url, notify=notify)
    key = redis_prefix + "result:wake"
    published: list[float] = []

    def publish() -> None:
        published.append(time.monotonic())
        publisher.publish(key, "done", 30)

    try:
        timer = threading.Timer(0.2, publish)
        timer.start()
        try:
            assert waiter.wait_for(key, 30) == "done"
            woke = time.monotonic()
        finally:
            timer.join()
        assert woke - published[0] < 10.0, "woke on the value, long before the timeout"
    finally:
        waiter.close()
        publisher.close()


def test_redis_without_pubsub_or_info_still_works(private_redis: Any) -> None:
    """An ACL (or a proxy) may refuse PUBLISH, SUBSCRIBE and INFO: values are still published,
    waiters poll, and identity() is None (restarts cannot be noticed)."""
    import redis

    from flask_tokenguard.stores.redis import RedisStore

    admin = redis.Redis.from_url(private_redis.url)
    try:
        admin.acl_setuser(
            "limited",
            enabled=True,
            passwords=["+pw"],
            keys=["*"],
            channels=["*"],
            commands=["+@all", "-publish", "-subscribe", "-info"],
        )
    finally:
        admin.close()
    url = private_redis.url.replace("redis://", "redis://limited:pw@")
    waiter, publisher = RedisStore(url), RedisStore(url)
    try:
        assert waiter.identity() is None
        timer = threading.Timer(0.1, publisher.publish, args=("tgtest:acl", "done", 30))
        timer.start()
        try:
            assert waiter.wait_for("tgtest:acl", 5) == "done"
        finally:
            timer.join()
    finally:
        waiter.close()
        publisher.close()


def test_redis_values_are_text_not_pickle(redis_url: str, redis_prefix: str) -> None:
    import redis

    from flask_tokenguard.stores.redis import RedisStore

    store = RedisStore(redis_url)
    raw = redis.Redis.from_url(redis_url)
    try:
        store.publish(redis_prefix + "v", '!{"a": 1}', 30)
        assert raw.get(redis_prefix + "v") == b'!{"a": 1}'
        assert store.read(redis_prefix + "v") == '!{"a": 1}'
        assert 0 < raw.ttl(redis_prefix + "v") <= 30
    finally:
        raw.close()
        store.close()


def test_redis_repr_hides_the_password() -> None:
    from flask_tokenguard.stores.redis import RedisStore

    store = RedisStore("redis://user:s3cret@127.0.0.1:6379/0")
    assert "s3cret" not in repr(store)


def test_redis_never_fetches_an_oversized_value(private_redis: Any) -> None:
    """The length is checked in Redis (STRLEN, in the same script as GET): a value over the
    cap (4 MiB) reads as None without crossing the wire."""
    import redis

    from flask_tokenguard.stores.base import MAX_VALUE_BYTES
    from flask_tokenguard.stores.redis import RedisStore

    raw = redis.Redis.from_url(private_redis.url)
    store = RedisStore(private_redis.url, timeout=5.0)
    try:
        raw.set("tgtest:big", b"x" * (MAX_VALUE_BYTES + 1))
        raw.set("tgtest:big:sent", b"x" * (MAX_VALUE_BYTES + 1))
        raw.set("tgtest:edge", b"y" * MAX_VALUE_BYTES)
        store.ping()

        def sent() -> int:
            return int(raw.info("stats")["total_net_output_bytes"])

        before = sent()
        assert store.read("tgtest:big") is None
        assert store.wait_for("tgtest:big", 0.05) is None
        info = store.read_claim("tgtest:big")
        assert info.owner is not None and info.sent_by is not None, "held by somebody"
        assert sent() - before < 64 * 1024
        assert store.read("tgtest:edge") == "y" * MAX_VALUE_BYTES, "the cap itself is allowed"
    finally:
        raw.close()
        store.close()


def _count_commands(store: Any) -> list[Any]:
    """The names of the commands ``store``'s client sends from now on (pub/sub aside)."""
    client = store._connection().client
    sent: list[Any] = []
    execute = client.execute_command

    def counted(*args: Any, **options: Any) -> Any:
        sent.append(args[0])
        return execute(*args, **options)

    client.execute_command = counted
    return sent


@contextlib.contextmanager
def _waiting(waiter: Any, key: str) -> Iterator[tuple[list[Any], list[str | None], Any]]:
    """A thread in ``waiter.wait_for(key, 10)``, once it is subscribed: the commands its
    client sends (two reads so far), what it found, the thread."""
    sent = _count_commands(waiter)
    found: list[str | None] = []
    thread = threading.Thread(target=lambda: found.append(waiter.wait_for(key, 10)))
    thread.start()
    try:
        # two reads: before subscribing, and once the subscription is confirmed
        assert eventually(lambda: len(sent) >= 2, 5.0)
        time.sleep(0.05)
        yield sent, found, thread
    finally:
        thread.join(5)


def test_a_redis_waiter_adopts_the_published_value_without_reading_it(
    redis_url: str, redis_prefix: str
) -> None:
    """The PUBLISH carries the value: once woken, the waiter sends no command at all."""
    from flask_tokenguard.stores.redis import RedisStore

    waiter, publisher = RedisStore(redis_url), RedisStore(redis_url)
    waiter.reread_interval = 60.0
    key = redis_prefix + "result:carried"
    try:
        with _waiting(waiter, key) as (sent, found, thread):
            before = list(sent)
            publisher.publish(key, "sealed text", 30)
            thread.join(5)
            assert found == ["sealed text"]
            assert sent == before, "adopted from the message, without a GET"
    finally:
        waiter.close()
        publisher.close()


@pytest.mark.parametrize("confirmed", [True, False])
def test_a_publish_while_the_waiter_subscribes_is_not_missed(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch, confirmed: bool
) -> None:
    """The publish lands after the first read, while SUBSCRIBE is on its way (or just
    confirmed): the waiter has it at once, not on its next re-read."""
    from flask_tokenguard.stores.redis import RedisStore, Subscriber

    waiter, publisher = RedisStore(redis_url), RedisStore(redis_url)
    waiter.reread_interval = 60.0
    key = redis_prefix + "result:between"
    hook = "confirmed" if confirmed else "join"
    original = getattr(Subscriber, hook)

    def then_publish(self: Subscriber, *args: Any) -> Any:
        result = original(self, *args)
        publisher.publish(key, "landed", 30)
        return result

    monkeypatch.setattr(Subscriber, hook, then_publish)
    try:
        start = time.monotonic()
        assert waiter.wait_for(key, 10) == "landed"
        assert time.monotonic() - start < 2.0, "not left to the re-read a minute later"
    finally:
        waiter.close()
        publisher.close()


def test_redis_waiters_of_a_process_share_one_subscriber(redis_url: str, redis_prefix: str) -> None:
    """Eight threads wait for two keys on one pub/sub connection; each gets its key's value,
    and once they are done nothing stays subscribed."""
    from flask_tokenguard.stores.redis import RedisStore

    waiter, publisher = RedisStore(redis_url), RedisStore(redis_url)
    waiter.reread_interval = 60.0
    keys = [redis_prefix + "result:shared-a", redis_prefix + "result:shared-b"]
    found: dict[int, str | None] = {}

    def wait(i: int) -> None:
        found[i] = waiter.wait_for(keys[i % 2], 10)

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        subscriber = eventually(lambda: waiter._connection().subscriber, 5.0)
        assert eventually(lambda: sum(map(len, subscriber._waiters.values())) == 8, 5.0)
        for key in keys:
            publisher.publish(key, "value of " + key, 30)
        for thread in threads:
            thread.join(5)
        assert found == {i: "value of " + keys[i % 2] for i in range(8)}
        assert waiter._connection().subscriber is subscriber, "one per process"
        assert eventually(lambda: not subscriber._sent and not subscriber._waiters, 2.0)
    finally:
        for thread in threads:
            thread.join(5)
        waiter.close()
        publisher.close()


def _wait_in_child(store: Any, key: str, results: Any) -> None:
    results.put(store.wait_for(key, 10))
    store.close()


@pytest.mark.slow
def test_a_forked_child_subscribes_on_its_own(redis_url: str, redis_prefix: str) -> None:
    """The parent's subscriber (its thread, its connection) stays the parent's."""
    from flask_tokenguard.stores.redis import RedisStore

    store, publisher = RedisStore(redis_url), RedisStore(redis_url)
    try:
        assert store.wait_for(redis_prefix + "result:warm", 0.05) is None
        parent = store._connection().subscriber
        assert parent is not None
        results = FORK.Queue()
        child = FORK.Process(
            target=_wait_in_child, args=(store, redis_prefix + "result:child", results)
        )
        child.start()
        try:
            time.sleep(0.3)
            publisher.publish(redis_prefix + "result:child", "for the child", 30)
            assert results.get(timeout=10) == "for the child"
        finally:
            child.join(10)
            results.close()
            results.join_thread()
        assert child.exitcode == 0
        assert store._connection().subscriber is parent
        assert parent.failure is None, "the parent's connection was left alone"
        timer = threading.Timer(0.1, publisher.publish, (redis_prefix + "result:p", "p", 30))
        timer.start()
        try:
            assert store.wait_for(redis_prefix + "result:p", 5) == "p"
        finally:
            timer.join()
    finally:
        store.close()
        publisher.close()


def test_a_lost_pubsub_connection_falls_back_to_polling(private_redis: Any) -> None:
    """The server drops the pub/sub connection: the waiters poll, and the next wait
    subscribes again."""
    import redis

    from flask_tokenguard.stores.redis import RedisStore

    waiter, publisher = RedisStore(private_redis.url), RedisStore(private_redis.url)
    waiter.reread_interval = 60.0
    admin = redis.Redis.from_url(private_redis.url)
    found: list[str | None] = []
    thread = threading.Thread(target=lambda: found.append(waiter.wait_for("tgtest:lost", 10)))
    try:
        thread.start()
        subscriber = eventually(lambda: waiter._connection().subscriber, 5.0)
        assert eventually(lambda: subscriber._acked, 5.0)
        admin.client_kill_filter(_type="pubsub")
        assert eventually(lambda: subscriber.failure is not None, 5.0)
        publisher.publish("tgtest:lost", "polled", 30)
        thread.join(5)
        assert found == ["polled"]
        timer = threading.Timer(0.2, publisher.publish, ("tgtest:again", "again", 30))
        timer.start()
        try:
            assert waiter.wait_for("tgtest:again", 5) == "again"
        finally:
            timer.join()
        assert waiter._connection().subscriber is not subscriber
    finally:
        thread.join(5)
        admin.close()
        waiter.close()
        publisher.close()


def test_a_redis_waiter_adopts_only_its_own_databases_values(
    redis_url: str, redis_prefix: str
) -> None:
    """Channels span the server's databases: a message carrying another database's value,
    like an older version's bare ``1``, only makes the waiter read its own."""
    import redis

    from flask_tokenguard.stores.redis import RedisStore, carries

    waiter = RedisStore(redis_url)
    waiter.reread_interval = 60.0
    raw = redis.Redis.from_url(redis_url)
    key = redis_prefix + "result:db"
    db = raw.connection_pool.connection_kwargs.get("db", 0)
    try:
        with _waiting(waiter, key) as (sent, found, thread):
            raw.publish(key, carries(db + 1) + b"another database's value")
            assert eventually(lambda: len(sent) >= 3, 5.0), "woke and read its own"
            assert thread.is_alive() and not found
            raw.set(key, b"from an older version", ex=30)
            raw.publish(key, b"1")
            thread.join(5)
            assert found == ["from an older version"]
            assert len(sent) == 4
    finally:
        raw.close()
        waiter.close()


def test_more_threads_than_connections_queue_for_one(redis_url: str, redis_prefix: str) -> None:
    """redis-py's default pool fails past its connection limit; this one makes threads wait."""
    from flask_tokenguard.stores.redis import RedisStore

    store = RedisStore(redis_url)  # 64 connections per process by default
    key = redis_prefix + "pool"
    store.publish(key, "v", 30)
    errors: list[BaseException] = []
    threads_n = 160  # more than redis-py's own pool would serve (100)
    start = threading.Barrier(threads_n)

    def reader() -> None:
        try:
            start.wait()
            for _ in range(20):
                assert store.swap(key, "v", "v", 30) and store.read(key) == "v"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert errors == []
