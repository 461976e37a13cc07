"""Soak: the example app under gunicorn, one user's bursts at every expiry, many rotations.

The invariant flask-tokenguard exists for, checked at the strict demo provider over a long
run: exactly one refresh per rotation, no refresh token presented twice, no family revoked,
no failed request. It drives the real example app (``example_app:app``) in real gunicorn
workers, on one host or two (two gunicorn instances sharing Redis), with the file store or
Redis, and signs in through ``/login`` like a browser.

    python benchmarks/soak.py                   # 4 workers x 8 threads, file store, 20 rotations
    python benchmarks/soak.py --store redis --hosts 2 --rotations 50
    python benchmarks/soak.py --quick           # what CI runs (2 rotations)

It prints the command to reproduce it, one line per rotation, and a ``summary:`` line; it
exits 1 when the invariant broke. Redis keys go under a random prefix and are deleted after.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from flask_tokenguard.demo_provider import ProviderConfig, ProviderServer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/<script>.py`` from anywhere
    sys.path.insert(0, str(ROOT))

from tests.fixtures.servers import free_port  # noqa: E402 - the tests' helper, one copy


def start_gunicorn(env: dict[str, str], workers: int, threads: int, log: Path) -> tuple[Any, str]:
    port = free_port()
    out = open(log, "wb")  # closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", str(workers), "--threads", str(threads),
         "-k", "gthread", "-b", f"127.0.0.1:{port}", "--log-level", "warning",
         "example_app:app"],
        cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited:\n{log.read_text()[-2000:]}")
        try:
            requests.get(f"{url}/api/provider-stats", timeout=1)
            return (proc, out), url
        except requests.RequestException:
            time.sleep(0.1)
    raise SystemExit(f"gunicorn did not start:\n{log.read_text()[-2000:]}")


def burst(cookies: Any, urls: list[str], n: int) -> tuple[list[int | str], Any]:
    barrier = threading.Barrier(n)
    lock = threading.Lock()
    statuses: list[int | str] = []
    last: list[Any] = [None]

    def one(i: int) -> None:
        with requests.Session() as http:
            http.cookies.update(cookies)
            barrier.wait()
            try:
                reply = http.get(f"{urls[i % len(urls)]}/api/profile", timeout=30)
            except requests.RequestException as exc:
                with lock:
                    statuses.append(type(exc).__name__)
                return
            with lock:
                statuses.append(reply.status_code)
                if "Set-Cookie" in reply.headers:
                    last[0] = reply.cookies

    with ThreadPoolExecutor(max_workers=n) as pool:
        list(pool.map(one, range(n)))
    return statuses, last[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48, help="requests per burst")
    parser.add_argument("--rotations", type=int, default=20)
    parser.add_argument("--store", choices=("file", "redis"), default="file")
    parser.add_argument("--hosts", type=int, default=1, help="gunicorn instances (redis only)")
    parser.add_argument(
        "--redis-url", default=os.environ.get("TOKENGUARD_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--access-ttl", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 workers x 4 threads, 2 rotations")
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.threads, args.requests, args.rotations = 2, 4, 16, 2
    if args.hosts > 1 and args.store != "redis":
        parser.error("several hosts need --store redis")
    print(
        "reproduce: python benchmarks/soak.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    )

    prefix = f"tgsoak:{uuid.uuid4().hex[:8]}:"
    provider = ProviderServer(ProviderConfig(access_ttl=args.access_ttl, refresh_delay=0.2))
    provider.start()
    procs: list[Any] = []
    failures = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = {
                "FLASK_SECRET_KEY": "soak-" + uuid.uuid4().hex,
                "FLASK_TOKENGUARD_TOKEN_URL": f"{provider.url}/token",
                "FLASK_TOKENGUARD_AUTHORIZE_URL": f"{provider.url}/authorize",
                "FLASK_EXAMPLE_API_URL": f"{provider.url}/userinfo",
                "FLASK_TOKENGUARD_LEEWAY": "1",
                "EXAMPLE_INSTANCE_PATH": str(Path(tmp) / "instance"),
                "OAUTHLIB_INSECURE_TRANSPORT": "1",
            }
            if args.store == "redis":
                env["FLASK_TOKENGUARD_CACHE_URL"] = args.redis_url
                env["FLASK_TOKENGUARD_KEY_PREFIX"] = prefix + "tg"
                env["FLASK_SESSION_KEY_PREFIX"] = prefix + "session:"
            urls = []
            for host in range(args.hosts):
                proc, url = start_gunicorn(
                    env, args.workers, args.threads, Path(tmp) / f"gunicorn{host}.log"
                )
                procs.append(proc)
                urls.append(url)
            browser = requests.Session()
            browser.get(f"{urls[0]}/login", timeout=10).raise_for_status()  # follows redirects
            cookies = browser.cookies
            wait = max(0.0, args.access_ttl - 1 + 0.2)  # into the refresh window
            for rotation in range(1, args.rotations + 1):
                time.sleep(wait)
                statuses, latest = burst(cookies, urls, args.requests)
                if latest is not None:
                    cookies.update(latest)
                stats = provider.state.stats()
                ok = sum(1 for s in statuses if s == 200)
                failures += len(statuses) - ok
                print(
                    f"rotation {rotation:3d}: {ok}/{len(statuses)} x 200, refreshes so far"
                    f" {stats['refreshes']}, max presentations {stats['max_presentations']}"
                )
            stats = provider.state.stats()
    finally:
        for proc, out in procs:
            proc.terminate()
            proc.wait(10)
            out.close()
        provider.stop()
        if args.store == "redis":
            import redis

            client = redis.Redis.from_url(args.redis_url)
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
            client.close()
    total = args.rotations * args.requests
    broken = (
        failures
        or stats["refreshes"] != args.rotations
        or stats["max_presentations"] != 1
        or stats["families_revoked"]
    )
    print(
        f"summary: {args.hosts} host(s) x {args.workers} workers x {args.threads} threads,"
        f" {args.store} store: {total} requests, {failures} failed, {stats['refreshes']}"
        f" refreshes for {args.rotations} rotations, max presentations"
        f" {stats['max_presentations']}, families revoked {stats['families_revoked']}"
        f" -> {'BROKEN' if broken else 'ok'}"
    )
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
