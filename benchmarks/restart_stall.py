"""The stall after a Redis restart: how long a burst of refreshes waits right after Redis starts
empty, with the restart hold of today (``TOKENGUARD_RESTART_HOLD``, 2 s) and with the old one
(a whole claim TTL, 15 s: ``TOKENGUARD_RESTART_HOLD = TOKENGUARD_CLAIM_TTL``), side by side.

For each variant: a private ``redis-server`` (no persistence) is restarted; at once, N requests
of one user whose access token has expired go to 4 apps ("processes": one coordinator each,
sharing the Redis), and each request's wait is timed; then a second user's burst, a few seconds
later, for comparison. The strict demo provider, over HTTP, counts every presentation of every
refresh token: the script exits 1 if any token was presented twice.

    python benchmarks/restart_stall.py            # N = 8
    python benchmarks/restart_stall.py -n 16
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from flask import Flask, jsonify

from flask_tokenguard import TokenGuard
from flask_tokenguard.testing import (
    ProviderConfig,
    ProviderHandle,
    ProviderServer,
    TokenGuardClient,
)

CLAIM_TTL = 15.0
APPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    def __init__(self, workdir: str) -> None:
        self.binary = shutil.which("redis-server") or sys.exit("redis-server is not installed")
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        end = time.monotonic() + 10
        while time.monotonic() < end and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            except OSError:
                time.sleep(0.01)
                continue
            time.sleep(0.05)
            if self.proc.poll() is None:  # ours listens, not another server on a reused port
                return
        sys.exit(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def make_app(provider: ProviderHandle, redis_url: str, hold: float, instance: str) -> Flask:
    app = Flask("restart_stall", instance_path=instance)
    app.config.update(
        SECRET_KEY="restart-stall-secret-key-0123456789",
        TOKENGUARD_CLIENT_ID=provider.client_id,
        TOKENGUARD_CLIENT_SECRET=provider.client_secret,
        TOKENGUARD_TOKEN_URL=provider.token_url,
        TOKENGUARD_ALLOW_INSECURE_LOOPBACK=True,
        TOKENGUARD_CACHE_URL=redis_url,
        TOKENGUARD_TOKEN_STORAGE="session",  # the token outlives the store's state
        TOKENGUARD_CLAIM_TTL=CLAIM_TTL,
        TOKENGUARD_RESTART_HOLD=hold,
    )
    app.test_client_class = TokenGuardClient
    guard = TokenGuard(app)

    @app.get("/api/profile")
    @guard.token_required
    def profile() -> Any:
        return jsonify(ok=True)

    return app


def burst(apps: list[Flask], token: dict[str, Any], n: int) -> list[float]:
    clients = [apps[i % len(apps)].test_client(token=token) for i in range(n)]
    barrier = threading.Barrier(n)
    waits: list[float] = [0.0] * n
    statuses: list[int] = [0] * n

    def one(i: int) -> None:
        barrier.wait()
        started = time.monotonic()
        statuses[i] = clients[i].get("/api/profile").status_code
        waits[i] = time.monotonic() - started

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if statuses != [200] * n:
        print(f"  statuses: {statuses}")
    return waits


def row(label: str, waits: list[float]) -> str:
    return (
        f"| {label} | {len(waits)} | {min(waits):.2f} | {statistics.median(waits):.2f} |"
        f" {max(waits):.2f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=8, help="requests per burst")
    args = parser.parse_args()
    print("$ python " + " ".join(["benchmarks/restart_stall.py", *sys.argv[1:]]))
    os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")
    logging.getLogger("flask_tokenguard").setLevel(logging.ERROR)  # the restart's warnings
    double = False
    with tempfile.TemporaryDirectory() as tmp, ProviderServer(ProviderConfig()) as server:
        provider = ProviderHandle(server)
        redis = Redis(tmp)
        redis.start()
        try:
            print("\n| variant | requests | min wait s | median s | max s |")
            print("|---|---|---|---|---|")
            after_restart: list[list[float]] = []
            for label, hold in (("old: hold = claim TTL", CLAIM_TTL), ("new: hold", 2.0)):
                apps = [
                    make_app(provider, f"redis://127.0.0.1:{redis.port}/0", hold, tmp)
                    for _ in range(APPS)
                ]
                warm = provider.issue(expires_in=0)
                burst(apps, warm, APPS)  # each coordinator learns the server's identity
                redis.stop()
                redis.start()
                first = burst(apps, provider.issue(expires_in=0), args.n)
                after_restart.append(first)
                print(row(f"{label} ({hold:g} s), right after a restart", first))
                later = burst(apps, provider.issue(expires_in=0), args.n)
                print(row(f"{label} ({hold:g} s), the next burst", later))
            old, new = after_restart
            stats = provider.stats()
            double = stats["max_presentations"] > 1
            print(
                f"\nsummary: right after a restart the burst waited {max(old):.2f} s with the"
                f" old hold, {max(new):.2f} s with the new; {stats['refreshes']} refreshes,"
                f" max presentations of one token: {stats['max_presentations']}"
            )
        finally:
            redis.stop()
    return 1 if double else 0


if __name__ == "__main__":
    sys.exit(main())
