"""What flask-tokenguard costs a request whose token is far from expiry (the fast path).

Three variants of one Flask app, called through ``app.wsgi_app`` with one prepared environ
whose cookie session holds a sealed token that expires in a day:

* ``bare``:    the app without the extension (Flask still decodes the same session cookie);
* ``guarded``: the same app with ``TokenGuard`` - its ``before_request`` hook reads two numbers
  from the session record and opens nothing; its ``after_request`` hook peeks again;
* ``opened``:  the guarded app with a view that reads ``guard.token`` (opens the AES-GCM blob).

and ``refresh_if_needed()`` alone, timed inside one request context (its per-request memo on
``g`` is dropped before each call), net of an empty loop that drops the memo only.

The variants run interleaved, in a shuffled order each round, in one process; each round
times a batch of requests per variant with ``time.perf_counter_ns`` and the medians of the
rounds are reported. Only ratios measured side by side in one run mean anything: absolute
microseconds depend on the machine.

    python benchmarks/fast_path.py            # full run
    python benchmarks/fast_path.py --quick    # a few hundred requests per variant (CI)
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from importlib.metadata import version
from typing import Any

import flask
from flask import Flask, g
from werkzeug.test import EnvironBuilder

from flask_tokenguard import TokenGuard

SECRET_KEY = "benchmark-secret-key-of-thirty-two-bytes!"
TOKEN = {
    "access_token": "a" * 43,
    "refresh_token": "r" * 48,
    "token_type": "Bearer",
    "expires_in": 86400,
}
REQUEST_STATE = "_tokenguard"  # where the extension memoises its per-request state on g


def build_app(guarded: bool, storage: str = "store") -> tuple[Flask, TokenGuard | None]:
    """The app, identical but for the extension; ``/`` answers a constant.

    ``/protected`` is the same view protected: by ``@guard.token_required`` in the guarded app,
    by a bare session check (``if not session: 401``) in the bare one.
    """
    app = Flask(f"bench_guarded_{storage}" if guarded else "bench_bare")
    app.config.update(
        SECRET_KEY=SECRET_KEY,
        TOKENGUARD_CLIENT_ID="bench-client",
        TOKENGUARD_CLIENT_SECRET="bench-secret",
        TOKENGUARD_TOKEN_URL="http://127.0.0.1:9/token",
        TOKENGUARD_ALLOW_INSECURE_LOOPBACK=True,
        TOKENGUARD_CACHE_URL="simple://",
        TOKENGUARD_TOKEN_STORAGE=storage,
    )
    guard = TokenGuard(app) if guarded else None

    @app.get("/")
    def index() -> str:
        return "ok"

    if guard is None:

        @app.get("/protected")
        def checked() -> Any:
            if not flask.session:
                return "sign-in required", 401
            return "ok"

    else:

        @app.get("/protected")
        @guard.token_required
        def protected() -> str:
            return "ok"

        @app.get("/open")
        def opened() -> str:
            return "ok" if guard.token is not None else "no token"

    return app, guard


def session_cookie(app: Flask, guard: TokenGuard) -> str:
    """A session cookie holding the sealed token, exactly as a response would set it."""
    token = {**TOKEN, "expires_at": time.time() + TOKEN["expires_in"]}
    with app.test_request_context("/"):
        guard.login(token)
        data = dict(flask.session)
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    return f"session={serializer.dumps(data)}"


def caller(app: Flask, path: str, cookie: str) -> Callable[[], None]:
    """One request through ``app.wsgi_app`` with a prepared environ; checks the answer once."""
    environ = EnvironBuilder(path=path, headers={"Cookie": cookie}).get_environ()
    seen: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append((status, headers))
        return None

    def call() -> None:
        body = app.wsgi_app(dict(environ), start_response)
        try:
            for _ in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    call()
    chunks = b"".join(app.wsgi_app(dict(environ), lambda s, h, e=None: None))
    status, headers = seen[0]
    if not status.startswith("200") or chunks != b"ok":
        raise SystemExit(f"{app.name} {path}: {status} {chunks!r} - the benchmark is broken")
    if any(name.lower() == "set-cookie" for name, _ in headers):
        raise SystemExit(f"{app.name} {path} wrote the session: not the fast path")
    seen.clear()
    return call


def in_request(app: Flask, cookie: str, step: Callable[[], None]) -> Callable[[int], None]:
    """A batch runner: ``step`` ``n`` times inside one pushed request context of ``app``."""

    def run(n: int) -> None:
        with app.test_request_context("/", headers={"Cookie": cookie}):
            for _ in range(n):
                step()

    return run


def wsgi(call: Callable[[], None]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            call()

    return run


def hooks_of(app: Flask) -> Callable[[], None]:
    """The app's request hooks (``before_request`` and ``after_request`` + session save)."""
    response = app.response_class("ok")

    def step() -> None:
        g.pop(REQUEST_STATE, None)
        app.preprocess_request()
        app.process_response(response)

    return step


def refresh_if_needed_of(guard: TokenGuard) -> Callable[[], None]:
    def step() -> None:
        g.pop(REQUEST_STATE, None)
        guard.refresh_if_needed()

    return step


def drop_memo() -> None:
    g.pop(REQUEST_STATE, None)


def check_fast_path(app: Flask, guard: TokenGuard, cookie: str) -> None:
    with app.test_request_context("/", headers={"Cookie": cookie}):
        state = guard.refresh_if_needed()
        if state.record is None or state.token is not None or state.error is not None:
            raise SystemExit("refresh_if_needed() did not take the fast path")


def measure(
    variants: dict[str, Callable[[int], None]], rounds: int, batch: int
) -> dict[str, list[float]]:
    """Nanoseconds per call for each variant, one sample per round; variants interleaved."""
    for run in variants.values():
        run(batch)  # warm-up
    # Move everything allocated so far out of the collector's way (gunicorn --preload does
    # much the same): a full collection of this heap takes tens of ms and would land at random.
    gc.collect()
    gc.freeze()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    rng = random.Random(1)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            start = time.perf_counter_ns()
            variants[name](batch)
            samples[name].append((time.perf_counter_ns() - start) / batch)
    return samples


def spread(values: Iterable[float]) -> tuple[float, float, float]:
    """(median, p10, p90) in microseconds."""
    ordered = sorted(v / 1000 for v in values)
    deciles = statistics.quantiles(ordered, n=10, method="inclusive")
    return statistics.median(ordered), deciles[0], deciles[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run, for CI")
    parser.add_argument("--rounds", type=int, help="rounds (default 201; quick: 9)")
    parser.add_argument("--batch", type=int, help="requests per variant per round (50; 20)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (9 if args.quick else 201)
    batch = args.batch or (20 if args.quick else 50)

    command = "python benchmarks/fast_path.py" + (" --quick" if args.quick else "")
    if args.rounds or args.batch:
        command += f" --rounds {rounds} --batch {batch}"
    print(f"flask-tokenguard fast path ({'quick' if args.quick else 'full'} mode)")
    print(f"reproduce: {command}")
    print(
        f"Python {platform.python_version()}, Flask {version('flask')}, {platform.machine()},"
        f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {rounds} rounds x"
        f" {batch} requests per variant, interleaved; medians of the rounds"
    )

    bare_app, _ = build_app(guarded=False)
    app, guard = build_app(guarded=True)
    assert guard is not None
    cookie = session_cookie(app, guard)
    check_fast_path(app, guard, cookie)
    in_session, in_session_guard = build_app(guarded=True, storage="session")
    assert in_session_guard is not None
    session_mode_cookie = session_cookie(in_session, in_session_guard)
    requests_ = measure(
        {
            "bare": wsgi(caller(bare_app, "/", cookie)),
            "guarded": wsgi(caller(app, "/", cookie)),
            "opened": wsgi(caller(app, "/open", cookie)),
            "checked": wsgi(caller(bare_app, "/protected", cookie)),
            "protected store": wsgi(caller(app, "/protected", cookie)),
            "protected session": wsgi(caller(in_session, "/protected", session_mode_cookie)),
            "checked session": wsgi(caller(bare_app, "/protected", session_mode_cookie)),
        },
        rounds,
        batch,
    )
    parts = measure(
        {
            "bare hooks": in_request(bare_app, cookie, hooks_of(bare_app)),
            "guarded hooks": in_request(app, cookie, hooks_of(app)),
            "refresh_if_needed": in_request(app, cookie, refresh_if_needed_of(guard)),
            "loop": in_request(app, cookie, drop_memo),
        },
        rounds,
        batch * 5,
    )

    def diff(samples: dict[str, list[float]], a: str, b: str) -> list[float]:
        """Per-round differences: both variants ran back to back in each round."""
        return [x - y for x, y in zip(samples[a], samples[b], strict=True)]

    def ratio(a: str, b: str = "bare") -> float:
        """Median of the per-round ratios a/b (the steadier figure on a busy machine)."""
        return statistics.median(x / y for x, y in zip(requests_[a], requests_[b], strict=True))

    rows = [
        ("bare Flask app, same session cookie", requests_["bare"]),
        ("with TokenGuard, token far from expiry", requests_["guarded"]),
        ("with TokenGuard + view reads guard.token", requests_["opened"]),
        ("  difference: the extension (per round)", diff(requests_, "guarded", "bare")),
        ("  difference: opening the token", diff(requests_, "opened", "guarded")),
        ("request hooks alone, bare app", parts["bare hooks"]),
        ("request hooks alone, with TokenGuard", parts["guarded hooks"]),
        ("  difference: the extension's hooks", diff(parts, "guarded hooks", "bare hooks")),
        ("refresh_if_needed() alone, net of loop", diff(parts, "refresh_if_needed", "loop")),
    ]
    print()
    print(f"{'us per request':<46}{'median':>9}{'p10':>9}{'p90':>9}")
    medians: dict[str, float] = {}
    for label, values in rows:
        median, p10, p90 = spread(values)
        medians[label] = median
        print(f"{label:<46}{median:>9.2f}{p10:>9.2f}{p90:>9.2f}")
    print()
    bare = medians[rows[0][0]]
    guarded = medians[rows[1][0]]
    opened = medians[rows[2][0]]
    added = medians[rows[3][0]]
    hooks = medians[rows[7][0]]
    hook = medians[rows[8][0]]
    print(
        f"ratio extension/bare = {guarded / bare:.3f}x (median of per-round ratios"
        f" {ratio('guarded'):.3f}x); with guard.token {opened / bare:.3f}x"
        f" ({ratio('opened'):.3f}x)"
    )
    print(
        "protected view, token far from expiry, against the same view behind a bare session"
        f" check (target <= 1.03x): tokens in the session"
        f" {ratio('protected session', 'checked session'):.3f}x; tokens in the store (one"
        f" store read, simple://) {ratio('protected store', 'checked'):.3f}x"
    )
    print(
        f"summary: on a {bare:.0f} us request the fast path adds {added:.1f} us"
        f" ({ratio('guarded'):.2f}x); its hooks alone cost {hooks:.1f} us, of which"
        f" refresh_if_needed() {hook:.1f} us; opening the sealed token adds"
        f" {medians[rows[4][0]]:.1f} us more"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
