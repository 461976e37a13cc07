"""How long the slowest request of a burst takes, next to a minimal in-process design.

One session whose access token has expired sends N requests at once (N = 32) to one process.
The same protected view is served by several apps side by side, each on werkzeug's threaded
server in this process, with the strict demo provider in a thread of its own (50 ms per
refresh):

* ``minimal``: no extension. The token sits in Flask's cookie session as JSON; an expired one
  is refreshed through a per-key map of ``threading.Event`` entries (the first request of a
  refresh token calls the provider with ``requests.post``, the others wait for its event and
  take its value). No store, no sealing, no lost-update guard: the floor for one process.
* ``session``: flask-tokenguard, ``TOKENGUARD_TOKEN_STORAGE = "session"``, ``simple://``.
* ``store``: flask-tokenguard, the default ``"store"`` storage, ``simple://``.
* ``session-redis``, ``store-redis`` (``--redis``): the same with ``redis://`` (the machine's
  Redis, keys under a unique prefix, deleted afterwards, never flushed).

Every view reads the token (``guard.token`` for flask-tokenguard) and answers its fingerprint.
Per round, in a shuffled order of the apps: a fresh token pair is issued with an expired
access token (``ProviderHandle.issue(expires_in=0)``) and signed in through the app's seed
route; N client threads (``http.client``, one connection each, opened before the start so the
server's per-connection thread already waits) are released by one barrier and time their
request. The first rounds are warm-up and discarded. Per burst the provider's oracle must show
one refresh call and one presentation of the seeded refresh token, every request must answer
200, and all of them must carry the same new access token.

The table gives, per app, the medians over the rounds of the burst's median (p50) and slowest
(max) request, and the slowest minus the minimal app's slowest of the same round (median of
the per-round differences) beside the target: within 30 ms.

Why a real server and not ``app.test_client()`` from N threads: the test client runs the app
in the calling thread, so the client's work and the app's share the same threads and the
timing would include the test client's own environ building and cookie jar; a threaded server
is what a deployment runs (one thread per connection, the GIL shared with the provider), and
with connections opened before the barrier its runs are as steady here as the test client's.

    python benchmarks/burst.py              # full run
    python benchmarks/burst.py --quick      # a few rounds (CI)
    python benchmarks/burst.py --profile store   # where one app's requests spend their time
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import hashlib
import http.client
import io
import json
import os
import platform
import pstats
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from typing import Any

import requests
from flask import Flask, jsonify, request, session
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from flask_tokenguard import TokenGuard
from flask_tokenguard.testing import ProviderConfig, ProviderHandle, ProviderServer

SECRET_KEY = "benchmark-secret-key-of-thirty-two-bytes!"
TARGET_MS = 30.0
LEEWAY = 5.0
VARIANTS = ("minimal", "session", "store")
REDIS_VARIANTS = ("session-redis", "store-redis")


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


# -- the apps -------------------------------------------------------------------------------


class _Flight:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: dict[str, Any] | None = None
        self.error: BaseException | None = None


def minimal_app(provider: ProviderHandle) -> Flask:
    """The floor: a per-key ``threading.Event`` map, the token as JSON in the cookie session.

    A flight stays in the map with its value (a request that arrives after the refresh took
    the old refresh token must not present it again); the benchmark clears the map between
    bursts. Nothing is stored or sealed, and there is no lost-update guard.
    """
    app = Flask("bench_minimal")
    app.secret_key = SECRET_KEY
    lock = threading.Lock()
    flights: dict[str, _Flight] = {}
    app.extensions["bench_flights"] = flights

    def refresh(refresh_token: str) -> dict[str, Any]:
        reply = requests.post(
            provider.token_url,
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            auth=(provider.client_id, provider.client_secret),
            headers={"Accept": "application/json"},
            timeout=10,
        )
        reply.raise_for_status()
        token = dict(reply.json())
        token["expires_at"] = time.time() + float(token.get("expires_in", 0))
        return token

    def single_flight(refresh_token: str) -> dict[str, Any]:
        with lock:
            flight = flights.get(refresh_token)
            leader = flight is None
            if flight is None:
                flight = flights[refresh_token] = _Flight()
        if leader:
            try:
                flight.value = refresh(refresh_token)
            except BaseException as exc:
                flight.error = exc
                raise
            finally:
                flight.done.set()
        elif not flight.done.wait(10):
            raise TimeoutError("refresh in flight")
        if flight.error is not None:
            raise RuntimeError("the refresh failed") from flight.error
        assert flight.value is not None
        return flight.value

    @app.post("/_bench/seed")
    def seed() -> Any:
        token = dict(request.get_json())
        token["expires_at"] = time.time() + float(token.get("expires_in", 0))
        session["token"] = token
        return jsonify(ok=True)

    @app.get("/api/token")
    def protected() -> Any:
        token = session.get("token")
        if not isinstance(token, dict):
            return jsonify(error="unauthorized"), 401
        if token["expires_at"] - LEEWAY <= time.time():
            token = single_flight(token["refresh_token"])
            session["token"] = token
        return jsonify(fp=fingerprint(token["access_token"]))

    return app


def guarded_app(
    provider: ProviderHandle, storage: str, cache_url: str, prefix: str
) -> tuple[Flask, TokenGuard]:
    app = Flask(f"bench_{storage}_{cache_url.partition(':')[0]}")
    app.config.update(
        SECRET_KEY=SECRET_KEY,
        TOKENGUARD_CLIENT_ID=provider.client_id,
        TOKENGUARD_CLIENT_SECRET=provider.client_secret,
        TOKENGUARD_TOKEN_URL=provider.token_url,
        TOKENGUARD_ALLOW_INSECURE_LOOPBACK=True,
        TOKENGUARD_CACHE_URL=cache_url,
        TOKENGUARD_TOKEN_STORAGE=storage,
        TOKENGUARD_KEY_PREFIX=prefix,
        TOKENGUARD_LEEWAY=LEEWAY,
    )
    guard = TokenGuard(app)

    @app.post("/_bench/seed")
    @guard.exempt
    def seed() -> Any:
        guard.login(request.get_json())
        return jsonify(ok=True)

    @app.get("/api/token")
    @guard.token_required
    def protected() -> Any:
        token = guard.token
        if token is None:
            return jsonify(error="unauthorized"), 401
        return jsonify(fp=fingerprint(str(token["access_token"])))

    return app, guard


# -- serving and the client -----------------------------------------------------------------


class CpuTimed:
    """Wraps a WSGI app: the CPU time of the thread that served each request
    (``time.thread_time_ns``; a refresh's own thread, and waiting, are not counted)."""

    def __init__(self, wsgi: Callable[..., Any]) -> None:
        self.wsgi = wsgi
        self.lock = threading.Lock()
        self.samples: list[int] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start = time.thread_time_ns()
        try:
            return list(self.wsgi(environ, start_response))
        finally:
            spent = time.thread_time_ns() - start
            with self.lock:
                self.samples.append(spent)

    def take(self) -> list[int]:
        with self.lock:
            samples, self.samples = self.samples, []
        return samples


@dataclass
class Served:
    name: str
    app: Flask
    server: BaseWSGIServer
    thread: threading.Thread
    guard: TokenGuard | None = None
    cpu: CpuTimed | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_port)


def serve(name: str, app: Flask, guard: TokenGuard | None = None) -> Served:
    cpu = CpuTimed(app.wsgi_app)
    app.wsgi_app = cpu  # type: ignore[method-assign]
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_Quiet)
    server.daemon_threads = True  # type: ignore[attr-defined]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"bench-{name}"
    )
    thread.daemon = True
    thread.start()
    return Served(name, app, server, thread, guard, cpu)


def seed(port: int, token: dict[str, Any]) -> str:
    """Sign a new session in with ``token``; the ``Cookie`` header that carries it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            "/_bench/seed",
            body=json.dumps(token),
            headers={"Content-Type": "application/json"},
        )
        reply = conn.getresponse()
        reply.read()
        if reply.status != 200:
            raise SystemExit(f"seeding the session on port {port} answered {reply.status}")
        cookies = [v.split(";", 1)[0] for k, v in reply.getheaders() if k.lower() == "set-cookie"]
    finally:
        conn.close()
    if not cookies:
        raise SystemExit(f"seeding the session on port {port} set no cookie")
    return "; ".join(cookies)


@dataclass
class Burst:
    latencies: list[float] = field(default_factory=list)  # seconds, one per request
    statuses: list[int] = field(default_factory=list)
    fingerprints: set[str] = field(default_factory=set)
    refreshes: int = 0
    presentations: int = 0
    cpu: list[int] = field(default_factory=list)  # ns of server CPU, one per request

    @property
    def ok(self) -> bool:
        return (
            all(s == 200 for s in self.statuses)
            and self.refreshes == 1
            and self.presentations == 1
            and len(self.fingerprints) == 1
        )


def fire(port: int, cookie: str, n: int) -> Burst:
    """``n`` requests with one cookie, released at once; each thread times its own."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(n)]
    for conn in conns:
        conn.connect()  # the server's thread for it now waits for the request
    barrier = threading.Barrier(n)
    lock = threading.Lock()
    burst = Burst()

    def one(conn: http.client.HTTPConnection) -> None:
        barrier.wait()
        start = time.perf_counter()
        try:
            conn.request("GET", "/api/token", headers={"Cookie": cookie})
            reply = conn.getresponse()
            body = reply.read()
            status = reply.status
        except OSError:
            body, status = b"", 0
        elapsed = time.perf_counter() - start
        conn.close()
        with lock:
            burst.latencies.append(elapsed)
            burst.statuses.append(status)
            if status == 200:
                burst.fingerprints.add(json.loads(body)["fp"])

    threads = [threading.Thread(target=one, args=(c,)) for c in conns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return burst


def run_burst(served: Served, provider: ProviderHandle, n: int) -> Burst:
    flights = served.app.extensions.get("bench_flights")
    if flights is not None:
        flights.clear()
    token = provider.issue(sub="bench", expires_in=0)
    cookie = seed(served.port, token)
    refreshes_before = provider.stats()["refreshes"]
    assert served.cpu is not None
    served.cpu.take()
    burst = fire(served.port, cookie, n)
    burst.cpu = served.cpu.take()
    burst.refreshes = provider.stats()["refreshes"] - refreshes_before
    burst.presentations = provider.presentations(token["refresh_token"])
    if fingerprint(token["access_token"]) in burst.fingerprints:
        burst.fingerprints.add("<the expired token was served>")
    return burst


# -- Redis ----------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_prefix(url: str) -> Iterator[str]:
    """A unique key prefix; every key under it is deleted afterwards (never a flush)."""
    import redis

    prefix = f"tgbench-{uuid.uuid4().hex[:10]}"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=500))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def redis_reachable(url: str) -> str | None:
    """None when Redis answers, else the reason."""
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure means "skipped"
        return f"{type(exc).__name__}: {exc}"
    return None


# -- profiling ------------------------------------------------------------------------------


class Profiled:
    """Wraps a WSGI app: every request runs under its own ``cProfile.Profile`` (a profiler
    sees one thread), and the stats of all of them are summed.

    ``clock="cpu"`` (the default) times with the thread's CPU clock: waiting, for the refresh
    or for the GIL, costs nothing, so the figures are the work each request adds to the
    burst. ``clock="wall"`` includes the waits: a C call that lets the GIL go (``zlib``,
    ``os.urandom``, a socket) then shows the time its thread took to get it back."""

    def __init__(self, wsgi: Callable[..., Any], clock: str = "cpu") -> None:
        self.wsgi = wsgi
        self.clock = clock
        self.lock = threading.Lock()
        self.profiles: list[cProfile.Profile] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        profile = (
            cProfile.Profile(time.thread_time_ns, 1e-9)
            if self.clock == "cpu"
            else cProfile.Profile()
        )
        profile.enable()
        try:
            return list(self.wsgi(environ, start_response))
        finally:
            profile.disable()
            with self.lock:
                self.profiles.append(profile)

    def report(self, limit: int) -> str:
        stats = pstats.Stats(self.profiles[0], stream=io.StringIO())
        for profile in self.profiles[1:]:
            stats.add(profile)
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(limit)
        stats.sort_stats("cumulative").print_stats(limit)
        return out.getvalue()


# -- spans ----------------------------------------------------------------------------------

#: (label, class, method): timed with the thread's CPU clock and its wall clock, per app.
#: Nested spans are counted in their parents too.
SPAN_POINTS: list[tuple[str, str, str]] = [
    (
        "leader: coordinator._protocol (per call)",
        "flask_tokenguard.coordinator:Coordinator",
        "_protocol",
    ),
    (
        "leader:   coordinator._call (provider call)",
        "flask_tokenguard.coordinator:Coordinator",
        "_call",
    ),
    (
        "Flask: open the cookie session",
        "flask.sessions:SecureCookieSessionInterface",
        "open_session",
    ),
    (
        "Flask: save the cookie session",
        "flask.sessions:SecureCookieSessionInterface",
        "save_session",
    ),
    ("rules.check (before_request)", "flask_tokenguard.rules:TokenRules", "check"),
    ("  tokens.open", "flask_tokenguard.rules:TokenRules", "open"),
    (
        "  coordinator.refresh (waiting excluded)",
        "flask_tokenguard.coordinator:Coordinator",
        "refresh",
    ),
    ("  rules._keep -> tokens.save", "flask_tokenguard.rules:TokenRules", "_keep"),
    ("rules.guard (after_request)", "flask_tokenguard.rules:TokenRules", "guard"),
    ("  coordinator.newest", "flask_tokenguard.coordinator:Coordinator", "newest"),
    (
        "coordinator.is_revoked (check + guard)",
        "flask_tokenguard.coordinator:Coordinator",
        "is_revoked",
    ),
    ("TicketTokens.open", "flask_tokenguard.tickets:TicketTokens", "open"),
    ("TicketTokens.save", "flask_tokenguard.tickets:TicketTokens", "save"),
    ("TicketTokens._open_text", "flask_tokenguard.tickets:TicketTokens", "_open_text"),
    ("Sealer() (HKDF key derivation)", "flask_tokenguard.sealing:Sealer", "__init__"),
    ("Sealer.open (AES-GCM)", "flask_tokenguard.sealing:Sealer", "open"),
    ("Sealer.seal (AES-GCM)", "flask_tokenguard.sealing:Sealer", "seal"),
    ("store.read (simple://)", "flask_tokenguard.stores.memory:MemoryStore", "read"),
    ("store.swap (simple://)", "flask_tokenguard.stores.memory:MemoryStore", "swap"),
    ("store.read (redis://)", "flask_tokenguard.stores.redis:RedisStore", "read"),
    ("store.swap (redis://)", "flask_tokenguard.stores.redis:RedisStore", "swap"),
]


class Spans:
    """Per app (the WSGI wrapper names it in a thread-local), per span: calls, CPU and wall
    nanoseconds, only for the requests of measured bursts."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.lock = threading.Lock()
        self.totals: dict[tuple[str, str], list[int]] = {}
        self.requests: dict[str, int] = {}
        self.on = False

    def install(self) -> None:
        import importlib

        for label, where, method in SPAN_POINTS:
            module, _, name = where.partition(":")
            cls = getattr(importlib.import_module(module), name)
            original = cls.__dict__.get(method) or getattr(cls, method)
            setattr(cls, method, self._timed(label, original))

    def _timed(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        spans = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            app = getattr(spans.local, "app", None)
            if app is None or not spans.on:
                return fn(*args, **kwargs)
            cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                cpu, wall = time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
                with spans.lock:
                    total = spans.totals.setdefault((app, label), [0, 0, 0])
                    total[0] += 1
                    total[1] += cpu
                    total[2] += wall

        return timed

    def wrap(self, name: str, wsgi: Callable[..., Any]) -> Callable[..., Any]:
        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            self.local.app = name
            try:
                return wsgi(environ, start_response)
            finally:
                self.local.app = None
                if self.on and environ.get("PATH_INFO") == "/api/token":
                    with self.lock:
                        self.requests[name] = self.requests.get(name, 0) + 1

        return app

    def report(self, names: list[str]) -> str:
        lines = [
            "spans: per request of the measured bursts, CPU us (thread clock) / wall us"
            " (waits for the GIL, locks and I/O included) / calls; leader rows: per call",
            f"{'span':<44}" + "".join(f"{name:>26}" for name in names),
        ]
        for label, _where, _method in SPAN_POINTS:
            cells = []
            for name in names:
                total = self.totals.get((name, label))
                count = self.requests.get(name, 0)
                if total is None or not count:
                    cells.append(f"{'-':>26}")
                    continue
                calls, cpu, wall = total
                if label.startswith("leader:"):
                    count = calls  # one per burst: per call
                cpu_us, wall_us = cpu / count / 1000, wall / count / 1000
                cells.append(f"{cpu_us:>9.0f} /{wall_us:>7.0f} /{calls / count:>5.1f}")
            if any(cell.strip() != "-" for cell in cells):
                lines.append(f"{label:<44}" + "".join(cells))
        return "\n".join(lines)


# -- the run --------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run, for CI")
    parser.add_argument("--rounds", type=int, help="measured rounds (default 30; quick: 3)")
    parser.add_argument("--warmup", type=int, help="rounds discarded first (default 3; quick: 1)")
    parser.add_argument("-n", type=int, default=32, help="requests per burst (default 32)")
    parser.add_argument("--refresh-delay", type=float, default=0.05, help="seconds (0.05)")
    parser.add_argument("--redis", action="store_true", help="add the redis:// variants")
    parser.add_argument("--redis-url", default=None, help="default TOKENGUARD_REDIS_URL")
    parser.add_argument(
        "--profile", metavar="VARIANT", help="profile this app's requests over the rounds"
    )
    parser.add_argument(
        "--profile-clock", choices=("cpu", "wall"), default="cpu", help="for --profile (cpu)"
    )
    parser.add_argument(
        "--spans", action="store_true", help="time the main steps of every app's requests"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    redis_url = args.redis_url or os.environ.get("TOKENGUARD_REDIS_URL", "redis://127.0.0.1:6379/0")

    command = "python benchmarks/burst.py" + (" --quick" if args.quick else "")
    for flag, value, default in (
        ("--rounds", args.rounds, None),
        ("--warmup", args.warmup, None),
        ("-n", args.n, 32),
        ("--refresh-delay", args.refresh_delay, 0.05),
        ("--profile", args.profile, None),
        ("--profile-clock", args.profile_clock if args.profile else None, "cpu"),
    ):
        if value is not None and value != default:
            command += f" {flag} {value}"
    if args.redis:
        command += " --redis"
    if args.spans:
        command += " --spans"
    mode = "quick" if args.quick else "full"
    print(f"flask-tokenguard burst latency vs a minimal single flight ({mode} mode)")
    print(f"reproduce: {command}")
    print(
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; Python {platform.python_version()},"
        f" Flask {version('flask')}, {platform.machine()}, {os.cpu_count()} CPUs, load average"
        f" {os.getloadavg()[0]:.2f}; N = {args.n}, provider refresh delay"
        f" {args.refresh_delay * 1000:.0f} ms; {warmup} warm-up + {rounds} rounds, apps"
        " interleaved in a shuffled order; werkzeug threaded servers in this process"
    )

    names = list(VARIANTS)
    skipped: dict[str, str] = {}
    if args.redis:
        reason = redis_reachable(redis_url)
        if reason is None:
            names += REDIS_VARIANTS
        else:
            skipped = dict.fromkeys(REDIS_VARIANTS, reason)

    with contextlib.ExitStack() as stack:
        server = stack.enter_context(
            ProviderServer(ProviderConfig(refresh_delay=args.refresh_delay))
        )
        provider = ProviderHandle(server)
        prefix = stack.enter_context(redis_prefix(redis_url)) if args.redis else "tgbench"
        served: dict[str, Served] = {}
        for name in names:
            if name == "minimal":
                app: Flask = minimal_app(provider)
                guard = None
            else:
                storage, _, backend = name.partition("-")
                cache_url = redis_url if backend == "redis" else "simple://"
                app, guard = guarded_app(provider, storage, cache_url, f"{prefix}-{name}")
            served[name] = serve(name, app, guard)
            stack.callback(served[name].server.shutdown)
        spans: Spans | None = None
        if args.spans:
            spans = Spans()
            spans.install()
            for name, one in served.items():
                wrapped = spans.wrap(name, one.app.wsgi_app)
                one.app.wsgi_app = wrapped  # type: ignore[method-assign]
        profiled: Profiled | None = None
        if args.profile:
            if args.profile not in served:
                raise SystemExit(f"--profile: one of {', '.join(served)}")
            profiled_app = served[args.profile].app
            profiled = Profiled(profiled_app.wsgi_app, args.profile_clock)
            profiled_app.wsgi_app = profiled  # type: ignore[method-assign]

        gc.collect()
        gc.freeze()
        samples: dict[str, list[Burst]] = {name: [] for name in names}
        rng = random.Random(1)
        order = list(names)
        failures: list[str] = []
        for index in range(warmup + rounds):
            rng.shuffle(order)
            if profiled is not None and index == warmup:
                profiled.profiles.clear()
            if spans is not None and index == warmup:
                spans.on = True
            for name in order:
                burst = run_burst(served[name], provider, args.n)
                if not burst.ok:
                    failures.append(
                        f"round {index} {name}: statuses {sorted(set(burst.statuses))},"
                        f" {burst.refreshes} refresh(es), presentations {burst.presentations},"
                        f" {len(burst.fingerprints)} access token(s)"
                    )
                if index >= warmup:
                    samples[name].append(burst)

    print()
    header = (
        f"{'app':<44}{'p50 ms':>8}{'max ms':>8}{'max - minimal':>15}{'target':>8}"
        f"{'cpu/req us':>12}{'cpu/burst ms':>14}  correctness"
    )
    print(header)
    labels = {
        "minimal": "(a) minimal: threading.Event map, JSON",
        "session": "(b) tokenguard, session storage, simple://",
        "store": "(c) tokenguard, store storage, simple://",
        "session-redis": "(d) tokenguard, session storage, redis://",
        "store-redis": "(d) tokenguard, store storage, redis://",
    }
    floor = samples.get("minimal", [])
    over: dict[str, float] = {}
    for name in names:
        bursts = samples[name]
        p50 = median([median(b.latencies) * 1000 for b in bursts])
        worst = median([max(b.latencies) * 1000 for b in bursts])
        good = sum(b.ok for b in bursts)
        per_request = median([median(b.cpu) / 1000 for b in bursts])
        per_burst = median([sum(b.cpu) / 1e6 for b in bursts])
        correctness = (
            f"{good}/{len(bursts)} bursts: {args.n} x 200, 1 refresh, 1 presentation, 1 token"
        )
        if name == "minimal":
            diff, target = "-", "-"
        else:
            over[name] = median(
                [
                    (max(b.latencies) - max(a.latencies)) * 1000
                    for a, b in zip(floor, bursts, strict=True)
                ]
            )
            diff = f"{over[name]:+.1f}"
            target = f"{TARGET_MS:.0f}" + (" met" if over[name] <= TARGET_MS else " no")
        print(
            f"{labels[name]:<44}{p50:>8.1f}{worst:>8.1f}{diff:>15}{target:>8}"
            f"{per_request:>12.0f}{per_burst:>14.1f}  {correctness}"
        )
    for name, reason in skipped.items():
        print(f"{labels[name]:<44}  skipped ({reason})")
    print()
    print(
        "max - minimal: per round, the app's slowest request minus the minimal app's slowest of"
        " the same round; median over the rounds (ms). cpu/req: the median request's CPU time"
        " in its server thread (thread_time, waiting excluded); cpu/burst: the N requests'"
        " sum - the woken waiters run one at a time under the GIL, so this is what the tail"
        " pays after the refresh"
    )
    for failure in failures:
        print(f"failed burst, {failure}")
    check = "ok" if not failures else f"{len(failures)} failed burst(s)"
    print(f"check, every burst of every app (warm-up included): {check}")
    if spans is not None:
        print()
        print(spans.report(names))
    if profiled is not None:
        print()
        print(
            f"profile of {args.profile!r} ({args.profile_clock} clock):"
            f" {len(profiled.profiles)} requests, summed"
        )
        print(profiled.report(40))
    print(
        "summary: slowest request over the minimal design's: "
        + ", ".join(f"{name} {value:+.1f} ms" for name, value in over.items())
        + f" (target {TARGET_MS:.0f} ms) -> {'ok' if not failures else 'FAILED'}"
    )
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
