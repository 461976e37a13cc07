"""Side by side: flask-tokenguard, requests-oauthlib's auto-refresh and Authlib's Flask client.

One session whose access token has expired sends N requests at once to a Flask app that calls
the provider's ``/userinfo`` with the bearer token (``compare_apps.py``: the same routes for all
three, each library used as its own documentation shows). The strict demo provider (a fixed
refresh latency, rotation, no reuse window, family revocation) counts every presentation of
every refresh token. Three deployments, real gunicorn (gthread, T = the largest N threads per
worker) throughout, flask-tokenguard's store in Redis in each:

    a  1 process: gunicorn 1 worker x T threads
    b  4 gunicorn workers
    c  2 "hosts" x 2 workers (two gunicorn servers on two ports sharing Redis, the requests
       spread over both)

Then two scale figures for flask-tokenguard: many distinct users refreshing at once (exactly one
refresh each, no reply carrying another user's token), and one user with many concurrent waiters
in one process (its peak memory; the single-flight map empty afterwards).

    python benchmarks/compare.py            # N = 16, 64, 256; a, b, c; 1000 users; 512 waiters
    python benchmarks/compare.py --quick    # N = 8, 16; a, b; 50 users; 64 waiters (CI)

It prints the command to reproduce it, a Markdown table, the scale figures and a ``summary:``
line; it exits 1 when flask-tokenguard broke its invariant (the peers are reported, not judged).
Redis (``TOKENGUARD_REDIS_URL``, default ``redis://127.0.0.1:6379/0``) is used under a random
key prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
PEERS = ("tokenguard", "requests-oauthlib", "authlib")
LABELS = {
    "tokenguard": "flask-tokenguard",
    "requests-oauthlib": "requests-oauthlib",
    "authlib": "Authlib",
}
SCENARIOS = {
    # name: (description, hosts, workers per host); every worker runs max(N) threads
    "a": ("1 worker", 1, 1),
    "b": ("4 workers", 1, 4),
    "c": ("2 hosts x 2 workers", 2, 2),
}
COOKIE = "session"
TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a small HTTP client: one connection per request, a browser's cookie jar -----------------


@dataclass
class Reply:
    status: int | str  # the status code, or the exception's name
    body: bytes = b""
    cookie: str | None = None  # the session cookie this reply set ("" = deleted)
    seconds: float = 0.0
    finished: float = 0.0  # time.perf_counter() when the reply was complete

    def json(self) -> Any:
        return json.loads(self.body)


def _session_cookie(headers: http.client.HTTPMessage) -> str | None:
    value = None
    for line in headers.get_all("Set-Cookie") or ():
        jar: SimpleCookie = SimpleCookie()
        jar.load(line)
        if COOKIE in jar:
            morsel = jar[COOKIE]
            value = "" if morsel["max-age"] == "0" or not morsel.value else morsel.value
    return value


def call(
    base: str, path: str, cookie: str | None = None, *, method: str = "GET", body: Any = None
) -> Reply:
    parts = urlsplit(base)
    headers = {"Connection": "close"}
    if cookie:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=TIMEOUT)
    start = time.perf_counter()
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        content = response.read()
        end = time.perf_counter()
        return Reply(response.status, content, _session_cookie(response.msg), end - start, end)
    except (OSError, http.client.HTTPException) as exc:
        end = time.perf_counter()
        return Reply(type(exc).__name__, seconds=end - start, finished=end)
    finally:
        conn.close()


def burst(jobs: Sequence[tuple[str, str | None]], path: str = "/api/profile") -> list[Reply]:
    """Send every ``(base_url, cookie)`` job at once, each on its own thread and connection."""
    barrier = threading.Barrier(len(jobs))
    replies: list[Reply | None] = [None] * len(jobs)

    def one(i: int) -> None:
        base, cookie = jobs[i]
        barrier.wait()
        replies[i] = call(base, path, cookie)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT + 30)
    return [r if r is not None else Reply("no reply") for r in replies]


def last_cookie(replies: Sequence[Reply], before: str | None) -> str | None:
    """The cookie a browser ends with: the one set by the reply that completed last."""
    done = [r for r in replies if r.cookie is not None]
    if not done:
        return before
    return max(done, key=lambda r: r.finished).cookie or None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


# -- the services ------------------------------------------------------------------------------


class Provider:
    """The strict demo provider in a process of its own (its own GIL, as a real one would be)."""

    def __init__(self, refresh_delay: float, log: Path) -> None:
        from flask_tokenguard.testing import ProviderHandle

        port = free_port()
        self._log = open(log, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flask_tokenguard.demo_provider", "--port", str(port),
             "--refresh-delay", str(refresh_delay), "--access-ttl", "3600"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        self.handle = ProviderHandle(self.url)
        _wait_until(lambda: call(self.url, "/jwks").status == 200, self.proc, log)

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


class Server:
    """One gunicorn (gthread) serving one of the apps of ``compare_apps.py``."""

    def __init__(self, env: dict[str, str], workers: int, threads: int, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(workers), "--threads", str(threads),
             "-k", "gthread", "-b", f"127.0.0.1:{self.port}", "--backlog", "2048",
             "--timeout", "120", "--graceful-timeout", "2", "--log-level", "warning",
             "--chdir", str(HERE), "compare_apps:app"],
            env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        _wait_until(
            lambda: (
                call(self.url, "/_bench/ping").status == 200 and len(self.worker_pids()) >= workers
            ),
            self.proc,
            log,
        )

    def worker_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    end = time.monotonic() + 60  # workers boot slowly on a busy machine
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.1)
    _stop(proc)
    raise SystemExit(f"{proc.args!r} did not start:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def servers(
    env: dict[str, str], hosts: int, workers: int, threads: int, tmp: Path, name: str
) -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        for host in range(hosts):
            started.append(Server(env, workers, threads, tmp / f"{name}-{host}.log"))
        yield started
    finally:
        for server in started:
            server.stop()


# -- the measurements --------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    n: int
    peer: str
    refresh_calls: int
    rotations: int
    max_presentations: int
    families_revoked: int
    failed: int
    signed_in: bool
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """flask-tokenguard's invariant for one rotation."""
        return (
            self.refresh_calls == 1
            and self.rotations == 1
            and self.max_presentations == 1
            and self.families_revoked == 0
            and self.failed == 0
            and self.signed_in
        )


def seed(base: str, token: dict[str, Any]) -> str:
    reply = call(base, "/_bench/seed", method="POST", body=token)
    if reply.status != 200 or not reply.cookie:
        raise SystemExit(f"seeding failed: {reply.status} {reply.body[:300]!r}")
    return reply.cookie


def one_session_burst(provider: Provider, urls: list[str], n: int, sub: str) -> dict[str, Any]:
    """N requests of one session whose token has expired, spread over ``urls``; the outcome."""
    token = provider.handle.issue(sub, expires_in=0)
    cookie = seed(urls[0], token)
    provider.handle.reset()
    replies = burst([(urls[i % len(urls)], cookie) for i in range(n)])
    stats = provider.handle.stats()
    follow = call(urls[0], "/api/profile", last_cookie(replies, cookie))
    statuses: dict[str, int] = {}
    for reply in replies:
        statuses[str(reply.status)] = statuses.get(str(reply.status), 0) + 1
    latencies = [r.seconds * 1000 for r in replies]
    return {
        "replies": replies,
        "stats": stats,
        "statuses": statuses,
        "failed": sum(1 for r in replies if r.status != 200),
        "signed_in": follow.status == 200,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 99),
    }


def run_table(
    args: argparse.Namespace, provider: Provider, base_env: dict[str, str], tmp: Path
) -> tuple[list[Row], list[str]]:
    """The table's rows, and what failed the check that a lone request works (a broken setup)."""
    rows: list[Row] = []
    broken: list[str] = []
    threads = max(args.sizes)
    for scenario in args.scenarios:
        _, hosts, workers = SCENARIOS[scenario]
        for peer in args.peers:
            env = {**base_env, "BENCH_PEER": peer}
            with servers(env, hosts, workers, threads, tmp, f"{scenario}-{peer}") as started:
                urls = [s.url for s in started]
                # Each app must refresh correctly when nothing races it, or the table means nothing.
                lone = one_session_burst(provider, urls[-1:], 1, f"bench-{scenario}-1-{peer}")
                if not (
                    lone["failed"] == 0
                    and lone["signed_in"]
                    and lone["stats"]["refresh_requests"] == 1
                    and lone["stats"]["refreshes"] == 1
                ):
                    broken.append(f"{scenario}/{LABELS[peer]}: {lone['statuses']}")
                for n in args.sizes:
                    sub = f"bench-{scenario}-{n}-{peer}"
                    out = one_session_burst(provider, urls, n, sub)
                    stats = out["stats"]
                    row = Row(
                        scenario=scenario,
                        n=n,
                        peer=peer,
                        refresh_calls=stats["refresh_requests"],
                        rotations=stats["refreshes"],
                        max_presentations=stats["max_presentations"],
                        families_revoked=stats["families_revoked"],
                        failed=out["failed"],
                        signed_in=out["signed_in"],
                        p50_ms=out["p50_ms"],
                        p99_ms=out["p99_ms"],
                        statuses=out["statuses"],
                    )
                    rows.append(row)
                    print(
                        f"  {scenario} N={n:<4d} {LABELS[peer]:<18} {row.refresh_calls} refresh"
                        f" calls, max presentations {row.max_presentations}, {row.failed} failed,"
                        f" statuses {row.statuses}",
                        flush=True,
                    )
    return rows, broken


def users_at_once(
    args: argparse.Namespace, provider: Provider, base_env: dict[str, str], tmp: Path
) -> dict[str, Any]:
    """``args.users`` distinct users, each with an expired token, one request each, at once."""
    from flask_tokenguard.testing import fingerprint

    env = {**base_env, "BENCH_PEER": "tokenguard"}
    with servers(env, 1, 4, args.user_threads, tmp, "users") as started:
        url = started[0].url
        subs = [f"bench-user-{i:04d}" for i in range(args.users)]

        def sign_in(sub: str) -> tuple[str, str]:
            token = provider.handle.issue(sub, expires_in=0)
            return seed(url, token), fingerprint(token["access_token"])

        with ThreadPoolExecutor(8) as pool:
            seeded = list(pool.map(sign_in, subs))
        provider.handle.reset()
        replies = burst([(url, cookie) for cookie, _ in seeded])
        stats = provider.handle.stats()
    crossed = wrong = 0
    fingerprints = set()
    for sub, (_, old_fp), reply in zip(subs, seeded, replies, strict=True):
        if reply.status != 200:
            wrong += 1
            continue
        profile = reply.json()["profile"]
        fingerprints.add(profile["token_fingerprint"])
        if profile["sub"] != sub or profile["token_fingerprint"] == old_fp:
            crossed += 1
    latencies = [r.seconds * 1000 for r in replies]
    return {
        "users": args.users,
        "refresh_calls": stats["refresh_requests"],
        "rotations": stats["refreshes"],
        "max_presentations": stats["max_presentations"],
        "failed": wrong,
        "crossed": crossed,
        "distinct_tokens": len(fingerprints),
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 99),
        "ok": stats["refresh_requests"] == args.users
        and stats["refreshes"] == args.users
        and stats["max_presentations"] == 1
        and wrong == 0
        and crossed == 0
        and len(fingerprints) == args.users,
    }


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def many_waiters(
    args: argparse.Namespace, provider: Provider, base_env: dict[str, str], tmp: Path
) -> dict[str, Any]:
    """One user, ``args.waiters`` requests at once into one process: memory and flights."""
    env = {**base_env, "BENCH_PEER": "tokenguard"}
    with servers(env, 1, 1, args.waiters, tmp, "waiters") as started:
        server = started[0]
        (pid,) = server.worker_pids()
        # warm up: one full refresh of another user, so the code paths are loaded
        warm = seed(server.url, provider.handle.issue("bench-warmup", expires_in=0))
        call(server.url, "/api/profile", warm)
        before = _proc_status(pid)
        out = one_session_burst(provider, [server.url], args.waiters, "bench-waiters")
        after = _proc_status(pid)
        flights = call(server.url, "/_bench/flights").json()
    stats = out["stats"]
    return {
        "waiters": args.waiters,
        "rss_before_mib": before["VmRSS"] / 1024,
        "peak_mib": after["VmHWM"] / 1024,
        "refresh_calls": stats["refresh_requests"],
        "max_presentations": stats["max_presentations"],
        "failed": out["failed"],
        "signed_in": out["signed_in"],
        "flights_after": flights["flights"],
        "p50_ms": out["p50_ms"],
        "p99_ms": out["p99_ms"],
        "ok": stats["refresh_requests"] == 1
        and stats["max_presentations"] == 1
        and out["failed"] == 0
        and out["signed_in"]
        and flights["flights"] == 0
        and flights["pid"] == pid,
    }


# -- the report --------------------------------------------------------------------------------


def table(rows: list[Row], threads: int) -> str:
    lines = [
        "| deployment | N | library | refresh calls | rotations | max presentations of one"
        " refresh token | families revoked | failed requests | signed in after | p50 ms |"
        " p99 ms |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        where = f"({row.scenario}) {SCENARIOS[row.scenario][0]} x {threads} threads"
        lines.append(
            f"| {where} | {row.n} | {LABELS[row.peer]} | {row.refresh_calls} | {row.rotations} |"
            f" {row.max_presentations} | {row.families_revoked} | {row.failed}/{row.n} |"
            f" {'yes' if row.signed_in else 'no'} | {row.p50_ms:.0f} | {row.p99_ms:.0f} |"
        )
    return "\n".join(lines)


def raise_open_files(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16,64,256", help="concurrent requests per burst")
    parser.add_argument("--scenarios", default="a,b,c", help="deployments: a, b, c")
    parser.add_argument("--peers", default=",".join(PEERS), help=",".join(PEERS))
    parser.add_argument("--users", type=int, default=1000, help="distinct users at once (0: off)")
    parser.add_argument("--user-threads", type=int, default=64, help="threads per worker")
    parser.add_argument("--waiters", type=int, default=512, help="one user's waiters (0: off)")
    parser.add_argument("--refresh-delay", type=float, default=0.05, help="provider, seconds")
    parser.add_argument(
        "--redis-url", default=os.environ.get("TOKENGUARD_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument(
        "--quick", action="store_true", help="N = 8, 16; a and b; 50 users; 64 waiters"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.scenarios, args.users, args.waiters = "8,16", "a,b", 50, 64
    args.sizes = [int(n) for n in parse_list(args.sizes)]
    args.scenarios = parse_list(args.scenarios)
    args.peers = parse_list(args.peers)
    for name in args.scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    for name in args.peers:
        if name not in PEERS:
            parser.error(f"unknown peer {name!r}")

    import redis

    threading.stack_size(512 * 1024)  # hundreds of client threads
    limit = raise_open_files(8192)
    started_at = time.monotonic()
    print("flask-tokenguard vs requests-oauthlib vs Authlib: one expired session, N at once")
    shown = sys.argv[1:] if argv is None else argv
    print(("reproduce: python benchmarks/compare.py " + shlex.join(shown)).rstrip())
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python"
        f" {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, load average"
        f" {os.getloadavg()[0]:.2f}; provider: strict (rotation, no reuse window, family"
        f" revocation), {args.refresh_delay * 1000:.0f} ms per refresh; open files limit {limit}",
        flush=True,
    )
    prefix = f"tgbench:{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(args.redis_url)
    client.ping()
    base_env = {
        "BENCH_SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "BENCH_REDIS_URL": args.redis_url,
        "BENCH_PREFIX": prefix,
        "OAUTHLIB_INSECURE_TRANSPORT": "1",  # the peers' docs, for a provider on http://
        "AUTHLIB_INSECURE_TRANSPORT": "1",
    }
    rows: list[Row] = []
    lone_broken: list[str] = []
    users: dict[str, Any] | None = None
    waiters: dict[str, Any] | None = None
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            provider = Provider(args.refresh_delay, tmp / "provider.log")
            base_env["BENCH_PROVIDER_URL"] = provider.url
            try:
                rows, lone_broken = run_table(args, provider, base_env, tmp)
                if args.users:
                    users = users_at_once(args, provider, base_env, tmp)
                if args.waiters:
                    waiters = many_waiters(args, provider, base_env, tmp)
            finally:
                provider.stop()
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()

    print()
    print(table(rows, max(args.sizes)))
    print()
    if rows:
        verdict = "FAILED " + "; ".join(lone_broken) if lone_broken else "ok"
        print(
            "check, one request alone with an expired token (1 refresh, 200, signed in after),"
            f" every library and deployment: {verdict}"
        )
    if users is not None:
        print(
            f"scale, {users['users']} users at once (flask-tokenguard, 4 workers x"
            f" {args.user_threads} threads): {users['refresh_calls']} refresh calls,"
            f" {users['rotations']} rotations, max presentations {users['max_presentations']},"
            f" {users['failed']} failed, {users['crossed']} replies with another user's token,"
            f" {users['distinct_tokens']} distinct access tokens; p50 {users['p50_ms']:.0f} ms,"
            f" p99 {users['p99_ms']:.0f} ms -> {'ok' if users['ok'] else 'BROKEN'}"
        )
    if waiters is not None:
        print(
            f"scale, one user with {waiters['waiters']} waiters (flask-tokenguard, 1 worker x"
            f" {waiters['waiters']} threads): {waiters['refresh_calls']} refresh call, max"
            f" presentations {waiters['max_presentations']}, {waiters['failed']} failed, signed"
            f" in after: {'yes' if waiters['signed_in'] else 'no'}; worker peak RSS (VmHWM)"
            f" {waiters['peak_mib']:.1f} MiB (RSS {waiters['rss_before_mib']:.1f} MiB before the"
            f" burst); single-flight map after: {waiters['flights_after']} entries; p50"
            f" {waiters['p50_ms']:.0f} ms, p99 {waiters['p99_ms']:.0f} ms"
            f" -> {'ok' if waiters['ok'] else 'BROKEN'}"
        )
    ours = [r for r in rows if r.peer == "tokenguard"]
    broken = (
        bool(lone_broken)
        or any(not r.ok for r in ours)
        or (users is not None and not users["ok"])
        or (waiters is not None and not waiters["ok"])
    )
    peer_parts = []
    for peer in args.peers:
        if peer == "tokenguard":
            continue
        mine = [r for r in rows if r.peer == peer]
        if mine:
            peer_parts.append(
                f"{LABELS[peer]} up to {max(r.refresh_calls for r in mine)} refresh calls and"
                f" {max(r.failed for r in mine)} failed, signed out in"
                f" {sum(1 for r in mine if not r.signed_in)}/{len(mine)}"
            )
    print(
        f"summary: {len(rows)} bursts in {time.monotonic() - started_at:.0f} s;"
        f" flask-tokenguard {sum(1 for r in ours if r.ok)}/{len(ours)} bursts with 1 refresh,"
        f" max presentations 1, 0 failed, still signed in"
        + "".join(f"; {part}" for part in peer_parts)
        + f" -> {'BROKEN' if broken else 'ok'}"
    )
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
