"""How fast waiters wake once the leader publishes a refresh result.

For each backend, per round: N waiters block in the wait path, the leader waits a while (a
refresh in flight), notes the time and publishes; each waiter notes the time once it has
adopted the result. The wake latency is the difference, on one system-wide monotonic clock
(``time.monotonic_ns``: ``CLOCK_MONOTONIC`` on Linux, shared by every process of the host).

* ``singleflight``: the in-process single flight (``SingleFlight``, one ``threading.Event``
  per key); waiters are threads of the leader's process.
* ``memory``: ``MemoryStore.wait_for`` (a ``threading.Condition``); waiter threads.
* ``file``, ``redis``, ``memcached``: waiters are other processes (``multiprocessing``,
  spawn), blocked in ``store.wait_for(key, 0.5)`` in a loop as the coordinator's ``_await``
  does; each backend's own ``wait_for``: ``file`` wakes on inotify (polls where it cannot),
  ``redis`` on a pub/sub message that carries the value, ``memcached`` polls with backoff.

"Adopted" means what the coordinator does with the text ``wait_for`` returns: open the sealed
record (AES-GCM, the key name as associated data), parse the token. A polling backend's
latency depends on how long the waiter has already waited (its backoff step), hence the leader
holds for a random time around ``--hold`` ms, as a provider call would. Every waiter process
counts its calls to ``store.read`` while it waits: the cost of polling, in reads per second.

    python benchmarks/wakeup.py              # full run
    python benchmarks/wakeup.py --quick      # a few rounds per backend (CI)

Redis: ``TOKENGUARD_REDIS_URL`` or redis://127.0.0.1:6379/0 (keys under a unique prefix,
deleted after; never flushed). Memcached: ``MEMCACHED_URL``, else a ``memcached`` binary on
PATH is started on a free port. A backend that is not reachable is skipped, and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from flask_tokenguard.records import RecordCodec
from flask_tokenguard.sealing import Sealer
from flask_tokenguard.singleflight import SingleFlight
from flask_tokenguard.stores.base import Store
from flask_tokenguard.token import accept, restore

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/<script>.py`` from anywhere
    sys.path.insert(0, str(ROOT))

from tests.fixtures.servers import free_port  # noqa: E402 - the tests' helper, one copy

SECRET = "benchmark-secret"
#: The coordinator waits in slices of this many seconds (``Coordinator._await``).
WAIT_SLICE = 0.5
WAIT_LIMIT = 10.0
BACKENDS = ("singleflight", "memory", "file", "redis", "memcached")


@dataclass(frozen=True)
class Spec:
    """Where a shared store lives: picklable, so waiter processes open their own instance."""

    backend: str
    location: str

    def open(self) -> Store:
        if self.backend == "memory":
            from flask_tokenguard.stores.memory import MemoryStore

            return MemoryStore()
        if self.backend == "file":
            from flask_tokenguard.stores.files import FileStore

            return FileStore(self.location)
        if self.backend == "redis":
            from flask_tokenguard.stores.redis import RedisStore

            return RedisStore.from_url(self.location)
        if self.backend == "memcached":
            from flask_tokenguard.stores.memcached import MemcachedStore

            return MemcachedStore.from_url(self.location)
        raise ValueError(self.backend)


def codec() -> RecordCodec:
    return RecordCodec(Sealer([SECRET], "store"))


def result_value(key: str) -> str:
    """A published success record, sealed, as the coordinator writes it."""
    token = accept(
        {
            "access_token": "a" * 43,
            "refresh_token": uuid.uuid4().hex * 2,
            "token_type": "Bearer",
            "expires_in": 300,
        }
    )
    return codec().encode(key, RecordCodec.success(token))


def wait_and_adopt(store: Store, records: RecordCodec, key: str) -> bool:
    """The coordinator's wait path: ``wait_for`` in slices, then open and parse its text."""
    end = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < end:
        text = store.wait_for(key, min(WAIT_SLICE, end - time.monotonic()))
        if text is not None:
            record = records.decode(key, text)
            if record is not None and record.get("outcome") == "ok":
                restore(record["token"])
                return True
    return False


# -- waiter processes -----------------------------------------------------------------------


def counting_reads(store: Store) -> list[int]:
    """Count ``store.read`` calls from now on (``wait_for`` polls through it): ``[count]``."""
    count = [0]
    read = store.read

    def counted(key: str) -> str | None:
        count[0] += 1
        return read(key)

    store.read = counted  # type: ignore[method-assign]
    return count


def waiter_process(conn: Connection) -> None:
    """Serve ``("wait", spec, key)`` until ``("stop",)``: answer "ready", then the wake time,
    the reads made while waiting and the seconds waited."""
    stores: dict[Spec, tuple[Store, list[int]]] = {}
    records = codec()
    try:
        while True:
            message = conn.recv()
            if message[0] == "stop":
                return
            _, spec, key = message
            if spec not in stores:
                store = spec.open()
                store.read("warm-up")  # connect now, not inside a timed wait
                stores[spec] = (store, counting_reads(store))
            store, reads = stores[spec]
            conn.send("ready")
            before, started = reads[0], time.monotonic_ns()
            ok = wait_and_adopt(store, records, key)
            woke = time.monotonic_ns()
            conn.send((woke, ok, reads[0] - before, (woke - started) / 1e9))
    finally:
        for store, _reads in stores.values():
            store.close()
        conn.close()


@dataclass
class Cost:
    """What the waiters of a shared backend spent while they waited."""

    reads: int = 0
    seconds: float = 0.0

    def per_second(self) -> float:
        return self.reads / self.seconds if self.seconds else 0.0


class Waiters:
    """N waiter processes, reused by every shared backend."""

    def __init__(self, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=waiter_process, args=(child,), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def round(self, spec: Spec, key: str, publish: Callable[[], int], cost: Cost) -> list[float]:
        for conn in self.conns:
            conn.send(("wait", spec, key))
        for conn in self.conns:
            if not conn.poll(30) or conn.recv() != "ready":
                raise RuntimeError("a waiter process did not get ready")
        published = publish()
        latencies = []
        for conn in self.conns:
            if not conn.poll(WAIT_LIMIT + 5):
                raise RuntimeError("a waiter process never woke")
            woke, ok, reads, seconds = conn.recv()
            if not ok:
                raise RuntimeError(f"a waiter timed out on {spec.backend}")
            cost.reads += reads
            cost.seconds += seconds
            latencies.append((woke - published) / 1000)
        return latencies

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in self.conns:
            conn.close()


# -- in-process waiters (threads) -------------------------------------------------------------


def thread_round(
    start_waiter: Callable[[list[float]], None], n: int
) -> tuple[list[float], list[threading.Thread]]:
    """Start ``n`` waiter threads; each appends its wake time (ns) to the list returned."""
    woke: list[float] = []
    ready = threading.Barrier(n + 1)

    def run() -> None:
        ready.wait()
        start_waiter(woke)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    ready.wait()
    return woke, threads


def registered_waiters(flights: SingleFlight[str], key: str) -> int | None:
    """Waiters registered on ``key``'s flight; None when the flight does not count them (a
    private field): the leader's hold, tens of milliseconds, is then what lets them block."""
    flight = getattr(flights, "_flights", {}).get(key)
    waiters = getattr(flight, "waiters", None)
    return None if waiters is None else int(waiters)


def measure_singleflight(rounds: int, n: int, hold: Callable[[], float]) -> list[float]:
    flights: SingleFlight[str] = SingleFlight()
    latencies: list[float] = []
    late = 0
    for i in range(rounds):
        key = f"flight-{i}"
        go = threading.Event()
        published: list[int] = []

        def leader_fn(go: threading.Event = go, published: list[int] = published) -> str:
            go.wait()
            published.append(time.monotonic_ns())
            return "new token"

        leader = threading.Thread(target=flights.run, args=(key, leader_fn, WAIT_LIMIT))
        leader.start()
        while len(flights) == 0:
            time.sleep(0.0005)
        outcomes: list[tuple[int, bool]] = []

        def waiter(
            _: list[float], key: str = key, outcomes: list[tuple[int, bool]] = outcomes
        ) -> None:
            _value, led = flights.run(key, lambda: "late", WAIT_LIMIT)
            outcomes.append((time.monotonic_ns(), led))

        _, threads = thread_round(waiter, n)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            registered = registered_waiters(flights, key)
            if registered is None or registered >= n:
                break
            time.sleep(0.0005)  # every waiter is blocked on the flight's event
        time.sleep(hold())
        go.set()
        leader.join()
        for thread in threads:
            thread.join()
        for woke, led in outcomes:
            if led:
                late += 1  # arrived after the flight ended: it waited for nothing
            else:
                latencies.append((woke - published[0]) / 1000)
    if late:
        print(f"note: {late} singleflight waiters arrived after the flight and were not counted")
    return latencies


def measure_memory(rounds: int, n: int, hold: Callable[[], float]) -> list[float]:
    store = Spec("memory", "").open()
    records = codec()
    latencies: list[float] = []
    for i in range(rounds):
        key = f"tokenguard:result:{i}"
        value = result_value(key)
        results: list[bool] = []

        def waiter(woke: list[float], key: str = key, results: list[bool] = results) -> None:
            results.append(wait_and_adopt(store, records, key))
            woke.append(time.monotonic_ns())

        woke, threads = thread_round(waiter, n)
        time.sleep(hold())
        published = time.monotonic_ns()
        store.publish(key, value, 60)
        for thread in threads:
            thread.join()
        if not all(results):
            raise RuntimeError("a memory waiter timed out")
        latencies += [(t - published) / 1000 for t in woke]
    return latencies


def measure_shared(
    spec: Spec, waiters: Waiters, rounds: int, hold: Callable[[], float], prefix: str, cost: Cost
) -> list[float]:
    store = spec.open()
    latencies: list[float] = []
    try:
        for i in range(rounds):
            key = f"{prefix}result:{i}"
            value = result_value(key)

            def publish(key: str = key, value: str = value) -> int:
                time.sleep(hold())
                published = time.monotonic_ns()
                store.publish(key, value, 60)
                return published

            try:
                latencies += waiters.round(spec, key, publish, cost)
            finally:
                store.forget(key)
    finally:
        store.close()
    return latencies


# -- services ----------------------------------------------------------------------------------


def redis_location() -> tuple[str | None, str]:
    url = os.environ.get("TOKENGUARD_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        import redis
    except ImportError:
        return None, "the redis package is not installed"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        return None, f"no Redis at {url} ({type(exc).__name__})"
    finally:
        client.close()
    return url, url


@contextlib.contextmanager
def memcached_location() -> Iterator[tuple[str | None, str]]:
    given = os.environ.get("MEMCACHED_URL")
    if given:
        yield given, given
        return
    try:
        import pymemcache  # noqa: F401
    except ImportError:
        yield None, "the pymemcache package is not installed"
        return
    binary = shutil.which("memcached")
    if binary is None:
        yield None, "no memcached on PATH and MEMCACHED_URL is not set"
        return
    port = free_port()
    command = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64"]
    if os.geteuid() == 0:
        command += ["-u", "root"]
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.02)
        url = f"memcached://127.0.0.1:{port}"
        yield url, f"{url} (started for this run)"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- report ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


MECHANISM = {
    "singleflight": "threads, threading.Event",
    "memory": "threads, threading.Condition",
    "file": "processes, FileStore.wait_for",
    "redis": "processes, RedisStore.wait_for",
    "memcached": "processes, MemcachedStore.wait_for",
}
#: What a waiter should reach, p99 in microseconds (in process: CPython's switch interval).
TARGET_P99 = {
    "singleflight": 5000,
    "memory": 5000,
    "file": 10000,
    "redis": 5000,
    "memcached": 25000,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run, for CI")
    parser.add_argument("--rounds", type=int, help="publishes per backend (default 40; quick 6)")
    parser.add_argument("--waiters", type=int, help="waiters per round (default 4; quick 2)")
    parser.add_argument(
        "--hold", type=float, help="ms the leader holds before publishing (default 100; quick 10)"
    )
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {BACKENDS}"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (6 if args.quick else 40)
    n = args.waiters or (2 if args.quick else 4)
    hold_ms = args.hold if args.hold is not None else (10.0 if args.quick else 100.0)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends: {sorted(unknown)}")

    def holds() -> Callable[[], float]:
        """The same sequence of hold times for every backend, so they compare fairly."""
        rng = random.Random(7)
        return lambda: rng.uniform(0.5, 1.5) * hold_ms / 1000

    command = "python benchmarks/wakeup.py" + (" --quick" if args.quick else "")
    for flag, value in (("--rounds", args.rounds), ("--waiters", args.waiters)):
        if value is not None:
            command += f" {flag} {value}"
    if args.hold is not None:
        command += f" --hold {args.hold:g}"
    if args.backends != ",".join(BACKENDS):
        command += f" --backends {args.backends}"
    print(f"flask-tokenguard waiter wake-up latency ({'quick' if args.quick else 'full'} mode)")
    print(f"reproduce: {command}")
    print(
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs,"
        f" load average {os.getloadavg()[0]:.2f}; {rounds} publishes per backend,"
        f" {n} waiters each; the leader holds {hold_ms / 2:g}-{hold_ms * 1.5:g} ms, then publishes"
    )

    results: dict[str, list[float]] = {}
    costs: dict[str, Cost] = {}
    skipped: dict[str, str] = {}
    where: dict[str, str] = {}
    prefix = f"tgbench:{uuid.uuid4().hex[:12]}:"
    shared = [b for b in backends if b in ("file", "redis", "memcached")]
    with contextlib.ExitStack() as stack:
        waiters = Waiters(n) if shared else None
        if waiters is not None:
            stack.callback(waiters.close)
        for backend in backends:
            if backend == "singleflight":
                results[backend] = measure_singleflight(rounds, n, holds())
                where[backend] = "in process"
                continue
            if backend == "memory":
                results[backend] = measure_memory(rounds, n, holds())
                where[backend] = "simple://"
                continue
            assert waiters is not None
            if backend == "file":
                directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="tgbench-"))
                location, label = os.path.join(directory, "store"), "file:// (a temp dir)"
            elif backend == "redis":
                location, label = redis_location()
            else:
                location, label = stack.enter_context(memcached_location())
            if location is None:
                skipped[backend] = label
                continue
            where[backend] = label
            costs[backend] = Cost()
            results[backend] = measure_shared(
                Spec(backend, location), waiters, rounds, holds(), prefix, costs[backend]
            )

    print()
    print(
        f"{'backend':<14}{'waiters':<36}{'samples':>8}{'reads/s':>9}{'target p99':>11}"
        f"{'median us':>11}{'p95 us':>10}{'p99 us':>10}{'max us':>10}"
    )
    medians: dict[str, float] = {}
    for backend in backends:
        if backend in skipped:
            print(f"{backend:<14}skipped: {skipped[backend]}")
            continue
        values = results[backend]
        medians[backend] = statistics.median(values)
        cost = f"{costs[backend].per_second():.0f}" if backend in costs else "-"
        print(
            f"{backend:<14}{MECHANISM[backend]:<36}{len(values):>8}{cost:>9}"
            f"{TARGET_P99[backend]:>11}{medians[backend]:>11.0f}{percentile(values, 0.95):>10.0f}"
            f"{percentile(values, 0.99):>10.0f}{max(values):>10.0f}"
        )
    print()
    for backend in backends:
        if backend in where:
            print(f"  {backend}: {where[backend]}")
    print(
        "  reads/s: store.read calls per second of waiting, per waiter process (the polling"
        " cost); target p99: the goal, in us"
    )
    base = medians.get("singleflight")
    if base:
        ratios = ", ".join(f"{b} {medians[b] / base:.1f}x" for b in medians if b != "singleflight")
        print(f"ratio vs in-process single flight (median wake latency): {ratios or 'n/a'}")
    else:
        print("ratio vs in-process single flight: n/a (singleflight not measured)")
    summary = ", ".join(
        f"{b} {medians[b]:.0f} us / p95 {percentile(results[b], 0.95):.0f} us"
        f" / p99 {percentile(results[b], 0.99):.0f} us"
        for b in medians
    )
    print(f"summary: median wake latency after publish - {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
