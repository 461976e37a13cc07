"""The in-process single flight, driven by plain threads (no Flask, no provider).

docs/design.md, "Failure ways" (1. Duplicate refresh inside one process).
"""

from __future__ import annotations

import threading
import time

import pytest

from flask_tokenguard.singleflight import FlightTimeout, SingleFlight


def burst(n: int, fn, timeout: float = 5.0, key: str = "k"):
    flights: SingleFlight[int] = SingleFlight()
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = flights.run(key, fn, timeout)
        except BaseException as exc:  # collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return flights, results


def test_one_leader_runs_the_call_and_every_waiter_gets_its_value():
    calls = []

    def fn() -> int:
        calls.append(1)
        time.sleep(0.2)
        return 42

    flights, results = burst(32, fn)
    assert len(calls) == 1
    assert [r[0] for r in results] == [42] * 32
    assert sum(1 for r in results if r[1]) == 1
    assert len(flights) == 0  # the map is empty after the burst


def test_every_waiter_gets_the_same_error_as_its_own_object():
    class Boom(Exception):
        pass

    def fn() -> int:
        time.sleep(0.2)
        raise Boom("provider said no")

    flights, results = burst(16, fn)
    assert all(isinstance(r, Boom) and str(r) == "provider said no" for r in results)
    assert len({id(r) for r in results}) == 16
    assert len(flights) == 0


def test_a_waiter_times_out_on_its_own_bound_and_the_leader_finishes():
    release = threading.Event()

    def fn() -> int:
        release.wait(5)
        return 1

    flights: SingleFlight[int] = SingleFlight()
    leader = threading.Thread(target=lambda: flights.run("k", fn, 5))
    leader.start()
    while len(flights) == 0:
        time.sleep(0.001)
    started = time.monotonic()
    with pytest.raises(FlightTimeout):
        flights.run("k", fn, 0.1)
    assert time.monotonic() - started < 3.0  # its own 0.1 s bound, not the leader's 5 s
    release.set()
    leader.join(5)
    assert len(flights) == 0


def test_different_keys_do_not_share():
    flights: SingleFlight[str] = SingleFlight()
    out: dict[str, str] = {}

    def run(key: str) -> None:
        out[key] = flights.run(key, lambda: (time.sleep(0.05), key)[1], 5)[0]

    threads = [threading.Thread(target=run, args=(k,)) for k in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {"a": "a", "b": "b", "c": "c"}


def test_a_later_caller_starts_a_new_flight():
    flights: SingleFlight[int] = SingleFlight()
    counter = iter(range(10))
    assert flights.run("k", lambda: next(counter), 1) == (0, True)
    assert flights.run("k", lambda: next(counter), 1) == (1, True)
