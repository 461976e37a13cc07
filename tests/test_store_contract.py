"""One contract for every store backend (memory, file, redis, memcached), then backend specifics.

Timings: memory and file expire exactly; Redis expires claims to the millisecond but values to
the whole second (cachelib); memcached rounds every ttl up and adds one second of its clock.
``SLACK`` is how much later than its ttl an entry may still be there.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flask_tokenguard.errors import StoreUnavailable
from flask_tokenguard.stores.base import ClaimInfo, Store
from tests.fixtures.services import BACKENDS, StoreSpec, free_port

SLACK = {"memory": 0.3, "file": 0.3, "redis": 1.3, "memcached": 2.3}
FORK = multiprocessing.get_context("fork")


def eventually(check: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; that value, or the last one."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= end:
            return value
        time.sleep(interval)


#: Cross-process tests run on the backends that share state between processes
#: (``simple://`` is one process by design: there is nothing to share).
shared_backends = pytest.mark.parametrize(
    "store_backend", [b for b in BACKENDS if b != "memory"], indirect=True
)


# -- claim, mark, release ------------------------------------------------------------------


def test_claim_and_release_round_trip(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("claim", "round-trip")
    assert store.read_claim(key).owner is None
    assert store.claim(key, "alice", 5)
    assert not store.claim(key, "bob", 5)
    assert not store.claim(key, "alice", 5), "a claim is won once, even by its owner"
    assert store.read_claim(key).owner == "alice"
    assert not store.release(key, "bob"), "only the owner releases"
    assert store.read_claim(key).owner == "alice"
    assert store.release(key, "alice")
    assert not store.release(key, "alice")
    assert store.read_claim(key).owner is None
    assert store.claim(key, "bob", 5), "a released claim can be taken at once"
    assert store.read_claim(key).owner == "bob"


def test_only_the_owner_marks_and_the_mark_survives_release(
    store: Store, store_spec: StoreSpec
) -> None:
    key = store_spec.key("claim", "mark")
    assert not store.mark_sent(key, "alice", 5), "no claim, no mark"
    assert store.read_claim(key).sent_by is None
    assert store.claim(key, "alice", 5)
    assert not store.mark_sent(key, "bob", 5)
    assert store.read_claim(key).sent_by is None
    assert store.mark_sent(key, "alice", 5)
    assert store.read_claim(key) == ClaimInfo(owner="alice", sent_by="alice")
    assert store.release(key, "alice")
    info = store.read_claim(key)
    assert info.owner is None
    assert info.sent_by == "alice"


def test_mark_outlives_the_claim(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("claim", "outlive")
    assert store.claim(key, "alice", 0.3)
    assert store.mark_sent(key, "alice", 5)
    slack = SLACK[store_spec.backend]
    assert eventually(lambda: store.read_claim(key).owner is None, 0.3 + slack)
    assert store.read_claim(key).sent_by == "alice"
    assert not store.mark_sent(key, "alice", 5), "an expired claim cannot be marked"
    assert store.claim(key, "bob", 5)
    assert store.read_claim(key).sent_by == "alice", "the mark stays for the next claimer to see"


def test_claim_expires_on_its_own(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("claim", "expire")
    start = time.monotonic()
    assert store.claim(key, "alice", 0.3)
    assert not store.claim(key, "bob", 0.3)
    assert eventually(lambda: store.claim(key, "bob", 5), 0.3 + SLACK[store_spec.backend])
    assert time.monotonic() - start >= 0.29
    assert store.read_claim(key).owner == "bob"
    assert not store.release(key, "alice"), "an expired owner releases nothing"
    assert store.read_claim(key).owner == "bob"


def test_bad_ttls_are_refused(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("claim", "ttl")
    for ttl in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            store.claim(key, "alice", ttl)
        with pytest.raises(ValueError):
            store.publish(key, "v", ttl)
    assert store.read_claim(key).owner is None


# -- published values ------------------------------------------------------------------------


def test_publish_read_forget(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("result", "values")
    assert store.read(key) is None
    store.publish(key, '{"v": 1}', 30)
    assert store.read(key) == '{"v": 1}'
    text = "héllo ✓ \u2028 \x00 !not-a-pickle"
    store.publish(key, text, 30)
    assert store.read(key) == text
    store.forget(key)
    assert store.read(key) is None
    store.forget(key)  # forgetting nothing is fine
    with pytest.raises(TypeError):
        store.publish(key, b"bytes", 30)  # type: ignore[arg-type]


def test_values_expire(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("result", "expiry")
    store.publish(key, "soon gone", 0.3)
    assert store.read(key) == "soon gone"
    assert eventually(lambda: store.read(key) is None, 0.3 + SLACK[store_spec.backend])


def test_wait_for(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("result", "wait")
    start = time.monotonic()
    assert store.wait_for(key, 0.2) is None
    assert 0.19 <= time.monotonic() - start < 1.0

    timer = threading.Timer(0.1, store.publish, args=(key, "ready", 30))
    start = time.monotonic()
    timer.start()
    try:
        assert store.wait_for(key, 5) == "ready"
    finally:
        timer.join()
    assert time.monotonic() - start < 0.4
    assert store.wait_for(key, 0) == "ready"


# -- races -----------------------------------------------------------------------------------


def test_claim_race_between_threads(store: Store, store_spec: StoreSpec) -> None:
    threads, trials = 16, 30
    barrier = threading.Barrier(threads)
    wins = [[False] * threads for _ in range(trials)]
    errors: list[BaseException] = []

    def contend(index: int) -> None:
        try:
            for trial in range(trials):
                barrier.wait(10)
                key = store_spec.key("claim", f"threads-{trial}")
                wins[trial][index] = store.claim(key, f"thread-{index}", 10)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=contend, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert not errors, errors
    assert [sum(trial) for trial in wins] == [1] * trials
    winner = wins[0].index(True)
    assert store.read_claim(store_spec.key("claim", "threads-0")).owner == f"thread-{winner}"


def _race_worker(spec: StoreSpec, index: int, trials: int, barrier: Any, results: Any) -> None:
    store = spec.open()
    try:
        for trial in range(trials):
            barrier.wait(20)
            won = store.claim(spec.key("claim", f"procs-{trial}"), f"proc-{index}", 10)
            results.put((trial, index, won))
        barrier.wait(20)  # closing a file store gives up its claims: not before all are done
    finally:
        store.close()


@pytest.mark.slow
@shared_backends
def test_claim_race_between_processes(store_spec: StoreSpec) -> None:
    procs, trials = 16, 20
    barrier = FORK.Barrier(procs)
    results = FORK.Queue()
    workers = [
        FORK.Process(target=_race_worker, args=(store_spec, i, trials, barrier, results))
        for i in range(procs)
    ]
    for worker in workers:
        worker.start()
    try:
        got = [results.get(timeout=30) for _ in range(procs * trials)]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
                worker.join()
        results.close()
        results.join_thread()
    assert [w.exitcode for w in workers] == [0] * procs
    wins = [0] * trials
    for trial, _, won in got:
        wins[trial] += won
    assert wins == [1] * trials


# -- a holder that dies or stalls --------------------------------------------------------------


def _claim_and_hang(spec: StoreSpec, key: str, ttl: float, ready: Any) -> None:
    store = spec.open()
    if not store.claim(key, "doomed", ttl):
        os._exit(3)
    ready.set()
    time.sleep(60)


@pytest.mark.slow
@shared_backends
def test_claim_of_a_killed_holder(store_spec: StoreSpec, store: Store) -> None:
    """Redis and memcached free it when its ttl runs out; the file store as soon as the kernel
    drops the dead holder's lock."""
    key = store_spec.key("claim", "killed")
    immediate = store_spec.backend == "file"
    ttl = 10.0 if immediate else 1.0
    ready = FORK.Event()
    child = FORK.Process(target=_claim_and_hang, args=(store_spec, key, ttl, ready))
    child.start()
    try:
        assert ready.wait(10), "the child did not claim"
        claimed_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(5)
        if immediate:
            assert eventually(lambda: store.claim(key, "heir", 5), 0.5)
            assert time.monotonic() - claimed_at < 1.0
        else:
            assert store.read_claim(key).owner == "doomed"
            assert not store.claim(key, "heir", 5), "taken over before expiry"
            assert eventually(lambda: store.claim(key, "heir", 5), ttl + SLACK[store_spec.backend])
            assert time.monotonic() - claimed_at >= ttl - 0.05
        assert store.read_claim(key).owner == "heir"
    finally:
        if child.is_alive():
            child.kill()
        child.join()


def _claim_then_obey(spec: StoreSpec, key: str, ttl: float, conn: Any) -> None:
    store = spec.open()
    conn.send(store.claim(key, "stalled", ttl))
    while True:
        command = conn.recv()
        if command == "mark":
            conn.send(store.mark_sent(key, "stalled", 30))
        elif command == "release":
            conn.send(store.release(key, "stalled"))
        else:
            break
    store.close()


@pytest.mark.slow
@shared_backends
def test_claim_of_a_stopped_holder(store_spec: StoreSpec, store: Store) -> None:
    """A SIGSTOPped holder keeps its claim until its ttl, not longer; once resumed, it can
    neither mark nor release the claim that was taken over (so it never sends)."""
    key = store_spec.key("claim", "stopped")
    ttl = 1.0
    ours, theirs = FORK.Pipe()
    child = FORK.Process(target=_claim_then_obey, args=(store_spec, key, ttl, theirs))
    child.start()
    try:
        assert ours.poll(10) and ours.recv() is True
        claimed_at = time.monotonic()
        os.kill(child.pid, signal.SIGSTOP)  # type: ignore[arg-type]
        assert store.read_claim(key).owner == "stalled"
        assert not store.claim(key, "heir", 5)
        assert eventually(lambda: store.claim(key, "heir", 5), ttl + SLACK[store_spec.backend])
        assert time.monotonic() - claimed_at >= ttl - 0.05
        os.kill(child.pid, signal.SIGCONT)  # type: ignore[arg-type]
        ours.send("mark")
        assert ours.poll(5) and ours.recv() is False
        ours.send("release")
        assert ours.poll(5) and ours.recv() is False
        ours.send("exit")
        child.join(5)
        assert child.exitcode == 0
        assert store.read_claim(key) == ClaimInfo(owner="heir", sent_by=None)
    finally:
        if child.is_alive():
            os.kill(child.pid, signal.SIGCONT)  # type: ignore[arg-type]
            child.kill()
        child.join()
        ours.close()
        theirs.close()


# -- hostile values ---------------------------------------------------------------------------


class _Canary:
    """Unpickling this creates the canary file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def _payloads(canary: Path) -> dict[str, bytes]:
    armed = pickle.dumps(_Canary(canary))
    return {
        "pickle": armed,
        "bang-pickle": b"!" + armed,  # cachelib's Redis format
        "filecache-pickle": struct.pack("I", 2**32 - 1) + armed,  # cachelib's file format
        "truncated-utf8": "naïve ✓".encode()[:-2],
        "invalid-utf8": b"\xff\xfe\xc3\x28 garbage",
    }


def test_the_canary_payload_is_armed(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    pickle.loads(_payloads(canary)["pickle"])
    assert canary.exists()


def _put_raw(spec: StoreSpec, store: Store, key: str, data: bytes, *, claim: bool) -> bool:
    """Write ``data`` straight into the backend, as an attacker with access to it could.

    False when there is no such access (the claims of ``simple://`` live in this process).
    """
    if spec.backend == "redis":
        import redis

        client = redis.Redis.from_url(spec.location)
        try:
            client.set(key, data, ex=60)
        finally:
            client.close()
    elif spec.backend == "memcached":
        from pymemcache.client.base import Client

        from flask_tokenguard.stores.memcached import parse_memcached_url

        client = Client(parse_memcached_url(spec.location), connect_timeout=1, timeout=1)
        try:
            client.set(key, data, expire=60, noreply=False)
        finally:
            client.close()
    elif spec.backend == "file":
        from flask_tokenguard.stores.files import FileStore

        assert isinstance(store, FileStore)
        path = store.value_path(key)
        (path.with_name(path.name + ".claim") if claim else path).write_bytes(data)
    elif claim:
        return False
    else:
        store._values[key] = (data, time.monotonic() + 60)  # type: ignore[attr-defined]
    return True


@pytest.mark.parametrize(
    "payload", ["pickle", "bang-pickle", "filecache-pickle", "truncated-utf8", "invalid-utf8"]
)
def test_hostile_bytes_are_never_unpickled(
    store: Store, store_spec: StoreSpec, tmp_path: Path, payload: str
) -> None:
    canary = tmp_path / "canary"
    data = _payloads(canary)[payload]
    key = store_spec.key("result", payload)
    _put_raw(store_spec, store, key, data, claim=False)
    value = store.read(key)
    assert value is None or isinstance(value, str)
    assert store.wait_for(key, 0.05) in (None, value)
    claim_key = store_spec.key("claim", payload)
    if _put_raw(store_spec, store, claim_key, data, claim=True):
        info = store.read_claim(claim_key)
        assert info.owner is None or isinstance(info.owner, str)
        assert not store.mark_sent(claim_key, "alice", 5)
    assert not canary.exists(), "a value from the store was unpickled"


# -- the store is down ------------------------------------------------------------------------


def _every_operation(store: Store) -> dict[str, Callable[[], object]]:
    return {
        "claim": lambda: store.claim("tgtest:down:claim", "alice", 5),
        "mark_sent": lambda: store.mark_sent("tgtest:down:claim", "alice", 5),
        "read_claim": lambda: store.read_claim("tgtest:down:claim"),
        "release": lambda: store.release("tgtest:down:claim", "alice"),
        "publish": lambda: store.publish("tgtest:down:value", "v", 5),
        "read": lambda: store.read("tgtest:down:value"),
        "forget": lambda: store.forget("tgtest:down:value"),
        "wait_for": lambda: store.wait_for("tgtest:down:value", 5),
        "identity": lambda: store.identity(),
    }


@pytest.mark.parametrize("backend", ["redis", "memcached"])
def test_unreachable_store_fails_fast(backend: str) -> None:
    port = free_port()  # nothing listens there
    store: Store
    if backend == "redis":
        from flask_tokenguard.stores.redis import RedisStore

        store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0")
    else:
        from flask_tokenguard.stores.memcached import MemcachedStore

        store = MemcachedStore.from_url(f"memcached://127.0.0.1:{port}")
    try:
        for name, operation in _every_operation(store).items():
            start = time.monotonic()
            with pytest.raises(StoreUnavailable):
                operation()
            assert time.monotonic() - start < 1.0, f"{name} did not fail fast"
    finally:
        store.close()


# -- Redis specifics ------------------------------------------------------------------------


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


def test_redis_has_no_hidden_retries(redis_url: str) -> None:
    from redis.backoff import NoBackoff

    from flask_tokenguard.stores.redis import RedisStore

    store = RedisStore(redis_url, connect_timeout=0.25, socket_timeout=0.25)
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

    store = RedisStore(private_redis.url, connect_timeout=0.3, socket_timeout=0.3)
    try:
        assert store.claim("tgtest:paused:a", "alice", 30)
        private_redis.pause()
        try:
            for operation in (
                lambda: store.claim("tgtest:paused:b", "alice", 30),  # SET, then read-back
                lambda: store.read("tgtest:paused:v"),
                lambda: store.mark_sent("tgtest:paused:a", "alice", 30),
            ):
                start = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    operation()
                assert time.monotonic() - start < 1.0
        finally:
            private_redis.resume()
        # The queued SET may have run on resume: our claim then sits there until its ttl,
        # which is safe (nobody sends), and the store works again at once.
        assert store.read_claim("tgtest:paused:b").owner in (None, "alice")
        assert store.claim("tgtest:paused:c", "alice", 30)
    finally:
        store.close()


def _use_inherited_store(store: Any, key: str, results: Any) -> None:
    inherited = store._conn
    won = store.claim(key, "child", 30)
    conn = store._conn
    results.put((won, conn is not inherited, conn.pid == os.getpid(), store.read(key + ":v")))
    store.close()


@pytest.mark.slow
def test_redis_client_is_recreated_after_fork(redis_url: str, redis_prefix: str) -> None:
    from flask_tokenguard.stores.redis import RedisStore

    store = RedisStore(redis_url)
    try:
        assert store.claim(redis_prefix + "parent", "parent", 30)
        store.publish(redis_prefix + "child:v", "from parent", 30)
        before = store._conn
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
        assert store._conn is before, "the parent keeps its own client"
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
        assert after is not None and after < 1.5
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
    """With ``notify`` a waiter wakes on the PUBLISH, not on its next poll (up to 50 ms)."""
    from flask_tokenguard.stores.redis import RedisStore

    waiter = RedisStore(redis_url, notify=notify)
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
            assert waiter.wait_for(key, 5) == "done"
            woke = time.monotonic()
        finally:
            timer.join()
        assert woke - published[0] < (0.04 if notify else 0.2)
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


# -- memcached specifics ----------------------------------------------------------------------


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


# -- file specifics -----------------------------------------------------------------------------


def test_file_store_layout(tmp_path: Path) -> None:
    from flask_tokenguard.stores.files import FileStore, file_name

    store = FileStore(tmp_path / "store")
    try:
        assert (tmp_path / "store").stat().st_mode & 0o777 == 0o700
        key = "tokenguard:result:" + "ab" * 32
        assert file_name(key) == key
        store.publish(key, "v", 30)
        assert store.value_path(key) == tmp_path / "store" / key
        assert store.value_path(key).stat().st_mode & 0o777 == 0o600
        names = {file_name(k) for k in ("a/b", "a%2Fb", "a.claim", "../x", "", "é", "a b")}
        assert len(names) == 7, "escaping is injective"
        assert all("/" not in n and "." not in n and n for n in names)
        assert len(file_name("k" * 500)) < 100
        with pytest.raises(ValueError):
            FileStore("relative/dir")
    finally:
        store.close()


def test_file_store_busy_lock_is_unavailable_not_a_hang(tmp_path: Path) -> None:
    """A process stopped inside the short locked section blocks its keys' stripe: the others
    get StoreUnavailable after ``lock_timeout``; lock-free reads still work."""
    import fcntl
    import hashlib

    from flask_tokenguard.stores.files import FileStore, file_name

    store = FileStore(tmp_path / "store", lock_timeout=0.2)
    key = "tokenguard:claim:" + "cd" * 32
    store.publish(key, "still readable", 30)
    stripe = hashlib.sha256(file_name(key).encode()).hexdigest()[:2]
    fd = os.open(tmp_path / "store" / ".locks" / stripe, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as if a stopped process held it
        start = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.claim(key, "alice", 5)
        assert 0.2 <= time.monotonic() - start < 0.8
        assert store.read(key) == "still readable"
    finally:
        os.close(fd)
    assert store.claim(key, "alice", 5)
    store.close()


def test_file_store_sweeps_expired_files(tmp_path: Path) -> None:
    from flask_tokenguard.stores.files import FileStore

    store = FileStore(tmp_path / "store")
    try:
        store.publish("tgtest:v", "v", 0.05)
        store.publish("tgtest:keep", "v", 30)
        assert store.claim("tgtest:c", "alice", 0.05)
        assert store.mark_sent("tgtest:c", "alice", 0.05)
        assert store.claim("tgtest:held", "alice", 30)
        time.sleep(0.1)
        assert store.sweep() == 3
        left = sorted(p.name for p in (tmp_path / "store").iterdir() if p.name[0] != ".")
        assert left == ["tgtest:held.claim", "tgtest:keep"]
    finally:
        store.close()


def test_file_store_recreates_a_vanished_directory(tmp_path: Path) -> None:
    import shutil

    from flask_tokenguard.stores.files import FileStore

    store = FileStore(tmp_path / "store")
    try:
        before = store.identity()
        shutil.rmtree(tmp_path / "store")
        store.publish("tgtest:v", "v", 30)
        assert store.read("tgtest:v") == "v"
        assert store.identity() != before, "a new directory is a store that lost its state"
    finally:
        store.close()


def _claim_fork_and_hang(spec: StoreSpec, key: str, grandchild: Any) -> None:
    store = spec.open()
    if not store.claim(key, "parent", 30):
        os._exit(3)
    pid = os.fork()
    if pid == 0:  # the grandchild inherits the descriptors, but must not keep the claim alive
        time.sleep(60)
        os._exit(0)
    grandchild.put(pid)
    time.sleep(60)


@pytest.mark.slow
def test_file_claims_are_not_inherited_by_a_fork(tmp_path: Path) -> None:
    from flask_tokenguard.stores.files import FileStore

    spec = StoreSpec("file", str(tmp_path / "store"), "tgtest:")
    key = spec.key("claim", "fork")
    queue = FORK.Queue()
    child = FORK.Process(target=_claim_fork_and_hang, args=(spec, key, queue))
    child.start()
    grandchild = queue.get(timeout=10)
    store = FileStore(spec.location)
    try:
        assert store.read_claim(key).owner == "parent"
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        assert eventually(lambda: store.claim(key, "heir", 5), 0.5), "the fork kept the claim"
    finally:
        os.kill(grandchild, signal.SIGKILL)  # first: it holds the child's join sentinel too
        with pytest.raises(ChildProcessError):
            os.waitpid(grandchild, 0)  # not our child: reaped by init
        queue.close()
        queue.join_thread()
        store.close()
        child.join()


def test_memory_store_is_not_shared() -> None:
    from flask_tokenguard.stores.memory import MemoryStore

    assert MemoryStore.shared is False
    one, two = MemoryStore(), MemoryStore()
    assert one.claim("k", "alice", 5)
    assert two.claim("k", "bob", 5), "each instance (each process) has its own claims"
