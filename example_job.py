"""A background job working on a signed-in user's behalf, beside their browser.

``python example_job.py`` needs nothing running: it starts the bundled demo provider (strict:
refresh tokens rotate and a reused one revokes the whole family), an app with
``TOKENGUARD_OFFLINE_GRANTS`` (grants in SQLite, the shared store in files, both in a temporary
folder), and signs a user in through the real sign-in flow. Then, for ``--seconds``, a job calls
``guard.token_for(subject)`` in a loop while the user's browser calls a protected route, and the
provider's counters are printed: one refresh per rotation, no refresh token presented twice.

The part to copy is :func:`sync_profile`: a job needs the app (for its configuration) and the
subject, never a request. An RQ or Celery task calls it the same way.
"""

from __future__ import annotations

import argparse
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from flask import Flask, jsonify, request
from werkzeug.serving import WSGIRequestHandler, make_server

from flask_tokenguard import TokenGuard
from flask_tokenguard.testing import ProviderConfig, ProviderHandle, ProviderServer

guard = TokenGuard()


def create_app(provider: ProviderHandle, folder: str) -> Flask:
    """The web app: signs users in, and leaves each sign-in's grant for the jobs."""
    app = Flask(__name__, instance_path=folder)
    app.config.update(
        SECRET_KEY=secrets.token_hex(32),
        TOKENGUARD_CLIENT_ID=provider.client_id,
        TOKENGUARD_CLIENT_SECRET=provider.client_secret,
        TOKENGUARD_SERVER_METADATA_URL=provider.discovery_url,
        TOKENGUARD_SCOPE="openid profile offline_access",
        TOKENGUARD_ALLOW_INSECURE_LOOPBACK=True,  # the demo provider speaks http on loopback
        TOKENGUARD_LEEWAY=1,
        TOKENGUARD_CACHE_URL=f"file://{folder}/store",  # redis://... across hosts
        TOKENGUARD_OFFLINE_GRANTS=True,
        TOKENGUARD_GRANT_STORE_URL=f"sqlite:///{folder}/grants.db",  # or postgresql://...
    )
    guard.init_app(app)
    userinfo_url = provider.userinfo_url

    @app.get("/login")
    def login() -> Any:
        return guard.authorize_redirect(
            request.host_url + "callback", login_hint=request.args.get("user", "alice")
        )

    @app.get("/callback")
    def callback() -> Any:
        guard.authorize_callback()
        return jsonify(sub=(guard.user or {}).get("sub"))

    @app.get("/api/profile")
    @guard.token_required
    def profile() -> Any:
        with guard.requests_session() as http:
            return jsonify(http.get(userinfo_url, timeout=10).json())

    return app


def sync_profile(app: Flask, subject: str, userinfo_url: str) -> dict[str, Any]:
    """The job: a fresh token of ``subject`` (refreshed once everywhere when due), then an API
    call with it. Raises InvalidGrant when the user signed out or must sign in again."""
    with app.app_context():
        token = guard.token_for(subject)
    reply = requests.get(
        userinfo_url, headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=10
    )
    reply.raise_for_status()
    return dict(reply.json())


class _Quiet(WSGIRequestHandler):
    """No access log: the figures are the output (and /callback's query carries a code)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@contextmanager
def serving(app: Flask, port: int) -> Iterator[str]:
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(seconds: float, access_ttl: int) -> dict[str, Any]:
    port = free_port()
    config = ProviderConfig(
        access_ttl=access_ttl,
        refresh_delay=0.2,
        redirect_uris=(f"http://127.0.0.1:{port}/callback",),
    )
    with tempfile.TemporaryDirectory() as folder, ProviderServer(config) as server:
        provider = ProviderHandle(server)
        app = create_app(provider, folder)
        with serving(app, port) as base:
            browser = requests.Session()  # signs in as a browser does, redirects and all
            subject = browser.get(f"{base}/login?user=alice", timeout=10).json()["sub"]
            print(f"signed in as {subject}; job and browser run for {seconds:g} s")
            job_calls, browser_calls, failures = 0, 0, []
            stop = threading.Event()

            def job() -> None:
                nonlocal job_calls
                while not stop.is_set():
                    try:
                        sync_profile(app, subject, provider.userinfo_url)
                        job_calls += 1
                    except Exception as exc:
                        failures.append(f"job: {exc!r}")
                    stop.wait(0.1)

            runner = threading.Thread(target=job)
            runner.start()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                status = browser.get(f"{base}/api/profile", timeout=10).status_code
                browser_calls += 1
                if status != 200:
                    failures.append(f"browser: {status}")
                time.sleep(0.1)
            stop.set()
            runner.join(10)
            with app.app_context():
                guard.grant_store().close()
        stats = provider.stats()
    figures = {
        "job_calls": job_calls,
        "browser_calls": browser_calls,
        "failures": failures,
        "refreshes": stats["refreshes"],
        "refresh_requests": stats["refresh_requests"],
        "max_presentations": stats["max_presentations"],
        "families_revoked": stats["families_revoked"],
    }
    print(
        f"{job_calls} job calls and {browser_calls} browser requests, {len(failures)} failed;"
        f" the provider saw {stats['refresh_requests']} refresh requests for"
        f" {stats['refreshes']} rotations, each refresh token presented at most"
        f" {stats['max_presentations']} time(s), {stats['families_revoked']} families revoked"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to run")
    parser.add_argument("--access-ttl", type=int, default=4, help="access token lifetime (s)")
    args = parser.parse_args()
    figures = run(args.seconds, args.access_ttl)
    ok = not figures["failures"] and figures["refresh_requests"] == figures["refreshes"]
    raise SystemExit(0 if ok and figures["max_presentations"] <= 1 else 1)


if __name__ == "__main__":
    main()
