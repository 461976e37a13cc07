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


def run_quick(script: str) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "error", f"benchmarks/{script}", "--quick"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
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
