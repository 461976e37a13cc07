"""The contract every store backend keeps (memory, file, redis, memcached).

Backend specifics live beside it: ``test_redis.py``, ``test_memcached.py``, ``test_files.py``,
``test_memory.py``; ``TOKENGUARD_CACHE_URL`` parsing in ``test_uri.py``.
"""

from __future__ import annotations

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
from tests.fixtures.services import StoreSpec
from tests.stores.helpers import FORK, SLACK, eventually, put_raw, shared_backends

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
    assert store.claim(key, "alice", 1)
    assert store.mark_sent(key, "alice", 5)
    slack = SLACK[store_spec.backend]
    assert eventually(lambda: store.read_claim(key).owner is None, 1 + slack)
    assert store.read_claim(key).sent_by == "alice"
    assert not store.mark_sent(key, "alice", 5), "an expired claim cannot be marked"
    assert store.claim(key, "bob", 5)
    assert store.read_claim(key).sent_by == "alice", "the mark stays for the next claimer to see"


def test_claim_expires_on_its_own(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("claim", "expire")
    start = time.monotonic()
    assert store.claim(key, "alice", 1)
    assert not store.claim(key, "bob", 1)
    assert eventually(lambda: store.claim(key, "bob", 5), 1 + SLACK[store_spec.backend])
    assert time.monotonic() - start >= 0.99
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
    store.publish(key, "soon gone", 1)
    assert store.read(key) == "soon gone"
    assert eventually(lambda: store.read(key) is None, 1 + SLACK[store_spec.backend])


def test_wait_for(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("result", "wait")
    start = time.monotonic()
    assert store.wait_for(key, 0.2) is None
    assert 0.19 <= time.monotonic() - start < 3.0, "waits its timeout, then gives up"

    timer = threading.Timer(0.1, store.publish, args=(key, "ready", 30))
    start = time.monotonic()
    timer.start()
    try:
        assert store.wait_for(key, 5) == "ready"
    finally:
        timer.join()
    assert time.monotonic() - start < 3.0, "woke on the value, not at its timeout"
    assert store.wait_for(key, 0) == "ready"


# -- compare-and-set (swap), touch -------------------------------------------------------------


def test_swap_on_an_absent_key(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("record", "absent")
    assert not store.swap(key, "anything", "new", 30), "nothing there to compare with"
    assert store.read(key) is None
    assert store.swap(key, None, "first", 30)
    assert store.read(key) == "first"
    assert not store.swap(key, None, "second", 30), "None wants the key absent"
    assert store.read(key) == "first"


def test_swap_compares_the_exact_text(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("record", "exact")
    store.publish(key, '{"v": 1}', 30)
    assert store.swap(key, '{"v": 1}', '{"v": 2}', 30)
    assert store.read(key) == '{"v": 2}'
    for stale in ('{"v": 1}', '{"v": 2} ', '{"V": 2}', '{"v": 2', ""):
        assert not store.swap(key, stale, '{"v": 3}', 30), stale
        assert store.read(key) == '{"v": 2}', "a lost swap changes nothing"
    text = "héllo ✓ \u2028 \x00 !not-a-pickle"
    assert store.swap(key, '{"v": 2}', text, 30)
    assert store.read(key) == text
    assert not store.swap(key, text.encode("utf-8").decode("latin-1"), "mojibake", 30)
    assert store.swap(key, text, "", 30)
    assert store.read(key) == ""
    assert store.swap(key, "", "after empty", 30), "the empty text is a value, not absence"
    assert store.read(key) == "after empty"
    store.publish(key, "published over it", 30)
    assert not store.swap(key, "after empty", "late", 30)
    assert store.swap(key, "published over it", "last", 30)
    assert store.wait_for(key, 0) == "last"


def test_a_forgotten_key_can_be_swapped_from_absent(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("record", "forget")
    assert store.swap(key, None, "logged in", 30)
    store.forget(key)
    assert store.read(key) is None
    assert not store.swap(key, "logged in", "stale write after logout", 30)
    assert store.read(key) is None
    assert store.swap(key, None, "logged in again", 30)
    assert store.read(key) == "logged in again"


def test_swapped_values_expire(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("record", "expiry")
    assert store.swap(key, None, "soon gone", 1)
    assert store.read(key) == "soon gone"
    assert eventually(lambda: store.read(key) is None, 1 + SLACK[store_spec.backend])
    assert not store.swap(key, "soon gone", "too late", 30), "an expired value matches nothing"
    assert store.swap(key, None, "fresh", 30), "an expired key is absent"
    assert store.read(key) == "fresh"


def test_touch_gives_a_value_a_new_ttl(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("record", "touch")
    slack = SLACK[store_spec.backend]
    assert not store.touch(key, 5), "nothing to touch"
    assert store.read(key) is None, "touch creates nothing"
    store.publish(key, "kept", 1)
    assert store.touch(key, 5)
    time.sleep(max(1.5, 1 + slack))  # past the first ttl, and past any rounding of it
    assert store.read(key) == "kept"
    assert store.touch(key, 1), "a ttl is replaced, not only extended"
    assert eventually(lambda: store.read(key) is None, 1 + slack)
    assert not store.touch(key, 5), "an expired value is absent"
    assert store.swap(key, None, "swapped", 1)
    assert store.touch(key, 30)
    store.forget(key)
    assert not store.touch(key, 30)


def test_swap_and_touch_check_their_arguments(store: Store, store_spec: StoreSpec) -> None:
    key = store_spec.key("record", "arguments")
    for ttl in (0, -1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValueError):
            store.swap(key, None, "v", ttl)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            store.touch(key, ttl)  # type: ignore[arg-type]
    for value in (b"bytes", 1, None):
        with pytest.raises(TypeError):
            store.swap(key, None, value, 30)  # type: ignore[arg-type]
    for expected in (b"bytes", 1, 0.5):
        with pytest.raises(TypeError):
            store.swap(key, expected, "v", 30)  # type: ignore[arg-type]
    assert store.read(key) is None, "nothing was written"
    store.publish(key, "v", 30)
    with pytest.raises(TypeError):
        store.swap(key, b"v", "w", 30)  # type: ignore[arg-type]
    assert store.read(key) == "v"


# -- races -----------------------------------------------------------------------------------


def _race_threads(threads: int, trials: int, attempt: Callable[[int, str], bool]) -> list[int]:
    """``threads`` threads call ``attempt(trial, f"thread-{index}")`` at once, ``trials``
    times over; the index of each trial's winner (-1: none, -2: more than one)."""
    barrier = threading.Barrier(threads)
    wins = [[False] * threads for _ in range(trials)]
    errors: list[BaseException] = []

    def contend(index: int) -> None:
        try:
            for trial in range(trials):
                barrier.wait(10)
                wins[trial][index] = attempt(trial, f"thread-{index}")
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=contend, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert not errors, errors
    return [_winner(trial) for trial in wins]


def _winner(wins: list[bool]) -> int:
    return wins.index(True) if sum(wins) == 1 else -1 - min(sum(wins), 1)


def test_claim_race_between_threads(store: Store, store_spec: StoreSpec) -> None:
    trials = 30
    winners = _race_threads(
        16, trials, lambda trial, name: store.claim(store_spec.key("claim", f"t{trial}"), name, 10)
    )
    assert all(winner >= 0 for winner in winners), winners
    assert store.read_claim(store_spec.key("claim", "t0")).owner == f"thread-{winners[0]}"


def _claim_attempt(store: Store, spec: StoreSpec, trial: int, name: str) -> bool:
    return store.claim(spec.key("claim", f"race-{trial}"), name, 10)


def _swap_expected(trial: int) -> str | None:
    """What racing swaps expect: even trials an absent key, odd ones a value published first."""
    return None if trial % 2 == 0 else f"start-{trial}"


def _publish_swap_starts(store: Store, spec: StoreSpec, trials: int) -> None:
    for trial in range(trials):
        expected = _swap_expected(trial)
        if expected is not None:
            store.publish(spec.key("record", f"race-{trial}"), expected, 30)


def _swap_attempt(store: Store, spec: StoreSpec, trial: int, name: str) -> bool:
    return store.swap(spec.key("record", f"race-{trial}"), _swap_expected(trial), name, 30)


def _race_worker(
    spec: StoreSpec,
    index: int,
    trials: int,
    barrier: Any,
    results: Any,
    attempt: Callable[[Store, StoreSpec, int, str], bool],
) -> None:
    store = spec.open()
    try:
        for trial in range(trials):
            barrier.wait(20)
            results.put((trial, index, attempt(store, spec, trial, f"proc-{index}")))
        barrier.wait(20)  # closing a file store gives up its claims: not before all are done
    finally:
        store.close()


def _race_processes(
    spec: StoreSpec, trials: int, attempt: Callable[[Store, StoreSpec, int, str], bool]
) -> list[int]:
    """16 processes call ``attempt(store, spec, trial, f"proc-{index}")`` at once, ``trials``
    times over, each with a store of its own; each trial's winner as for ``_race_threads``."""
    procs = 16
    barrier = FORK.Barrier(procs)
    results = FORK.Queue()
    workers = [
        FORK.Process(target=_race_worker, args=(spec, i, trials, barrier, results, attempt))
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
    wins = [[False] * procs for _ in range(trials)]
    for trial, index, won in got:
        wins[trial][index] = won
    return [_winner(trial) for trial in wins]


@pytest.mark.slow
@shared_backends
def test_claim_race_between_processes(store_spec: StoreSpec) -> None:
    winners = _race_processes(store_spec, 20, _claim_attempt)
    assert all(winner >= 0 for winner in winners), winners


def test_swap_race_between_threads(store: Store, store_spec: StoreSpec) -> None:
    """16 threads swap the same expected text (or absence) for their own: one wins."""
    trials = 30
    _publish_swap_starts(store, store_spec, trials)
    winners = _race_threads(
        16, trials, lambda trial, name: _swap_attempt(store, store_spec, trial, name)
    )
    assert all(winner >= 0 for winner in winners), winners
    for trial, winner in enumerate(winners):
        assert store.read(store_spec.key("record", f"race-{trial}")) == f"thread-{winner}"


@pytest.mark.slow
@shared_backends
def test_swap_race_between_processes(store_spec: StoreSpec, store: Store) -> None:
    trials = 20
    _publish_swap_starts(store, store_spec, trials)
    winners = _race_processes(store_spec, trials, _swap_attempt)
    assert all(winner >= 0 for winner in winners), winners
    for trial, winner in enumerate(winners):
        assert store.read(store_spec.key("record", f"race-{trial}")) == f"proc-{winner}"


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
    ttl = 10.0 if immediate else 2.0
    ready = FORK.Event()
    child = FORK.Process(target=_claim_and_hang, args=(store_spec, key, ttl, ready))
    child.start()
    try:
        assert ready.wait(10), "the child did not claim"
        claimed_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(5)
        if immediate:
            assert eventually(lambda: store.claim(key, "heir", 5), 3.0)
            assert time.monotonic() - claimed_at < 5.0, "freed by the death, not the ttl"
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
    ttl = 2.0
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


@pytest.mark.parametrize(
    "payload", ["pickle", "bang-pickle", "filecache-pickle", "truncated-utf8", "invalid-utf8"]
)
def test_hostile_bytes_are_never_unpickled(
    store: Store, store_spec: StoreSpec, tmp_path: Path, payload: str
) -> None:
    canary = tmp_path / "canary"
    data = _payloads(canary)[payload]
    key = store_spec.key("result", payload)
    put_raw(store_spec, store, key, data, claim=False)
    value = store.read(key)
    assert value is None or isinstance(value, str)
    assert store.wait_for(key, 0.05) in (None, value)
    claim_key = store_spec.key("claim", payload)
    if put_raw(store_spec, store, claim_key, data, claim=True):
        info = store.read_claim(claim_key)
        assert info.owner is None or isinstance(info.owner, str)
        assert not store.mark_sent(claim_key, "alice", 5)
    assert not canary.exists(), "a value from the store was unpickled"


# -- the store is down, or too much is stored ---------------------------------------------------


def _every_operation(store: Store) -> dict[str, Callable[[], object]]:
    return {
        "ping": store.ping,
        "claim": lambda: store.claim("tgtest:down:claim", "alice", 5),
        "mark_sent": lambda: store.mark_sent("tgtest:down:claim", "alice", 5),
        "read_claim": lambda: store.read_claim("tgtest:down:claim"),
        "release": lambda: store.release("tgtest:down:claim", "alice"),
        "publish": lambda: store.publish("tgtest:down:value", "v", 5),
        "read": lambda: store.read("tgtest:down:value"),
        "forget": lambda: store.forget("tgtest:down:value"),
        "swap": lambda: store.swap("tgtest:down:value", None, "v", 5),
        "swap-expected": lambda: store.swap("tgtest:down:value", "v", "w", 5),
        "touch": lambda: store.touch("tgtest:down:value", 5),
        "wait_for": lambda: store.wait_for("tgtest:down:value", 5),
        "identity": lambda: store.identity(),
    }


def test_unreachable_store_fails_fast(unreachable_store: Store) -> None:
    for name, operation in _every_operation(unreachable_store).items():
        start = time.monotonic()
        with pytest.raises(StoreUnavailable):
            operation()
        assert time.monotonic() - start < 3.0, f"{name} did not fail fast"


def test_ping_a_reachable_store(store: Store) -> None:
    store.ping()  # no exception: reachable
    store.ping()


@shared_backends  # the in-process store holds the str objects it was given: nothing to read
def test_oversized_values_read_as_absent(store: Store, store_spec: StoreSpec) -> None:
    """A value (a file record) larger than ``max_value_bytes`` reads as None, like garbage."""
    store.max_value_bytes = 1000
    key = store_spec.key("result", "oversized")
    store.publish(key, "x" * 100, 30)
    assert store.read(key) == "x" * 100
    store.publish(key, "x" * 1001, 30)
    assert store.read(key) is None
    assert store.wait_for(key, 0.05) is None
    assert put_raw(store_spec, store, key, b"y" * 1001, claim=False)
    assert store.read(key) is None
    assert put_raw(store_spec, store, key, b"y" * 900, claim=False)
    if store_spec.backend != "file":  # the file store reads records, not bare bytes
        assert store.read(key) == "y" * 900


@pytest.mark.parametrize("store_backend", ["redis", "memcached"], indirect=True)
def test_an_oversized_owner_is_somebody(store: Store, store_spec: StoreSpec) -> None:
    """On a server an unreadable claim is held by somebody: never "free" to take over.

    (The file store removes an unreadable claim record; memory claims are private.)
    """
    store.max_value_bytes = 1000
    key = store_spec.key("claim", "oversized")
    assert put_raw(store_spec, store, key, b"z" * 1001, claim=True)
    info = store.read_claim(key)
    assert info.owner is not None and len(info.owner) < 100
    assert not store.claim(key, "alice", 5)
    assert not store.mark_sent(key, "alice", 5)


@shared_backends
def test_an_oversized_value_matches_no_swap(store: Store, store_spec: StoreSpec) -> None:
    """A value over ``max_value_bytes`` reads as None, so no expected text matches it. It is
    still there on a server (``swap(key, None, ...)`` loses until it expires or is forgotten);
    the file store removes a void record when it meets one."""
    store.max_value_bytes = 1000
    key = store_spec.key("record", "oversized")
    store.publish(key, "x" * 1001, 30)
    assert store.read(key) is None
    assert not store.swap(key, "x" * 1001, "new", 30)
    assert store.swap(key, None, "new", 30) is (store_spec.backend == "file")
    store.forget(key)
    assert store.swap(key, None, "new", 30)
    assert store.read(key) == "new"
    big = "y" * 1001
    assert store.swap(key, "new", big, 30), "written, as publish writes it"
    assert store.read(key) is None
