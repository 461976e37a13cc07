"""The benchmarks run in CI in their ``--quick`` mode: they must run and report, nothing more.

No timing is asserted here: a benchmark prints ratios measured side by side in one run, and
a shared CI machine is too noisy for thresholds. See benchmarks/README.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .fixtures.services import REQUIRE_MEMCACHED, REQUIRE_REDIS, required

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"-?[0-9]+(?:\.[0-9]+)?"


def run_quick(script: str, timeout: float = 60, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "error", f"benchmarks/{script}", "--quick"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr == "", result.stderr[-3000:]
    assert f"reproduce: python benchmarks/{script} --quick" in result.stdout
    assert re.search(r"^summary: .+", result.stdout, re.MULTILINE), result.stdout
    return result.stdout


@pytest.mark.slow
def test_fast_path_quick_mode_runs_and_prints_its_ratio():
    out = run_quick("fast_path.py")
    assert re.search(rf"^ratio extension/bare = {NUMBER}x", out, re.MULTILINE), out
    for label in (
        "bare Flask app",
        "with TokenGuard, token far from expiry",
        "guard.token",
        "refresh_if_needed() alone",
    ):
        assert label in out, out


@pytest.mark.slow
def test_wakeup_quick_mode_runs_and_prints_its_ratio():
    out = run_quick("wakeup.py")
    assert re.search(r"^ratio vs in-process single flight .*: memory ", out, re.MULTILINE), out
    for backend in ("singleflight", "memory", "file"):
        assert re.search(rf"^{backend} .*\b{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out, re.MULTILINE), out
    for backend, env in (("redis", REQUIRE_REDIS), ("memcached", REQUIRE_MEMCACHED)):
        # measured, or skipped with the reason - unless CI requires the service
        assert re.search(rf"^{backend} ", out, re.MULTILINE), out
        if required(env):
            assert not re.search(rf"^{backend} +skipped", out, re.MULTILINE), out


def test_the_soak_runs_in_quick_mode():
    """The soak drives the example app under gunicorn; its quick mode must keep working."""
    output = run_quick("soak.py")
    assert "-> ok" in output, output


@pytest.mark.slow
def test_the_comparison_runs_in_quick_mode_and_only_tokenguard_refreshes_once(redis_url):
    """Correctness figures only: one refresh per burst, one presentation, nobody signed out.

    The peers are reported, not judged: the table must hold their rows, whatever they show.
    """
    out = run_quick("compare.py", timeout=150, TOKENGUARD_REDIS_URL=redis_url)
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in out.splitlines()
        if re.match(r"^\| \([abc]\) ", line)
    ]
    seen = set()
    for where, n, library, calls, rotations, most, revoked, failed, signed_in, _, _ in rows:
        seen.add((where[1], int(n), library))
        if library == "flask-tokenguard":
            assert (calls, rotations, most, revoked) == ("1", "1", "1", "0"), out
            assert failed == f"0/{n}", out
            assert signed_in == "yes", out
    for scenario in ("a", "b"):
        for n in (8, 16):
            for library in ("flask-tokenguard", "requests-oauthlib", "Authlib"):
                assert (scenario, n, library) in seen, out
    # every app, peers included, refreshes correctly when nothing races it
    assert re.search(r"^check, one request alone .*: ok$", out, re.MULTILINE), out
    users = re.search(r"^scale, 50 users at once .*$", out, re.MULTILINE)
    assert users, out
    assert "50 refresh calls, 50 rotations, max presentations 1, 0 failed" in users[0], out
    assert "0 replies with another user's token" in users[0], out
    assert users[0].endswith("-> ok"), out
    waiters = re.search(r"^scale, one user with 64 waiters .*$", out, re.MULTILINE)
    assert waiters, out
    assert "1 refresh call, max presentations 1, 0 failed, signed in after: yes" in waiters[0]
    assert "single-flight map after: 0 entries" in waiters[0], out
    assert waiters[0].endswith("-> ok"), out
    assert re.search(r"^summary: .* -> ok$", out, re.MULTILINE), out


@pytest.mark.slow
def test_the_burst_benchmark_runs_in_quick_mode_and_every_burst_refreshes_once():
    """Correctness figures only: every app of every round answers 32 x 200 after one refresh."""
    out = run_quick("burst.py")
    rows = [line for line in out.splitlines() if re.match(r"^\([abc]\) ", line)]
    assert [row[:3] for row in rows] == ["(a)", "(b)", "(c)"], out
    for row in rows:
        assert re.search(
            r"\b(\d+)/\1 bursts: 32 x 200, 1 refresh, 1 presentation, 1 token$", row
        ), out
    assert re.search(r"^check, every burst of every app .*: ok$", out, re.MULTILINE), out
    assert re.search(r"^summary: .* -> ok$", out, re.MULTILINE), out
