"""The example page in headless Chromium, used as a person would use it.

Sign in, wait past the access token's expiry, press the burst button: every request succeeds
and the provider saw one refresh. Wait again and press the naive burst (``/api/profile-naive``,
from ``example_naive.py``): requests fail, the provider revokes the token family, and the next
protected request finds the user signed out. The example runs without ``OAUTHLIB_*`` in its
environment, so its entry point is what lets requests-oauthlib use the local plain-http provider.

Needs playwright (the Python package) and a Chromium at /usr/bin/chromium (or ``CHROMIUM``);
never downloads a browser. Skips without them, and fails instead when
``TOKENGUARD_REQUIRE_BROWSER=1`` (as CI sets). Screenshots go to a temporary folder named in
the output, or to ``TOKENGUARD_SCREENSHOT_DIR`` (scripts/update_screenshot.py uses that).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_example_app import Example, run_example

pytestmark = pytest.mark.slow

REQUIRE = "TOKENGUARD_REQUIRE_BROWSER"
ACCESS_TTL = 3  # seconds: short, so the test waits little for an expired token
BURST = 20
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    required = os.environ.get(REQUIRE, "").strip().lower() in ("1", "true", "yes")

    def missing(reason: str) -> None:
        if required:
            pytest.fail(f"{reason} (and {REQUIRE}=1 requires the browser test)", pytrace=False)
        pytest.skip(reason)

    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("playwright (the Python package) is not installed")
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        missing(f"no Chromium at {path}")
    return path


@pytest.fixture
def screenshots(
    capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Where screenshots go (pytest keeps its last 3 runs); named in the output under ``-q``."""
    target = os.environ.get("TOKENGUARD_SCREENSHOT_DIR")
    folder = Path(target) if target else tmp_path_factory.mktemp("example-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\nexample page screenshots: {folder}")
    return folder


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile for every run
            executable_path=executable,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1180, "height": 820},
        )
        try:
            context.set_default_timeout(15_000)
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def sign_in(page: Any, example: Example) -> None:
    page.goto(example.url + "/")
    page.click("#login")  # -> the provider, which auto-approves -> /callback -> /
    page.wait_for_url(example.url + "/")
    assert "Alice" in page.inner_text("#who")


def wait_for_expiry(page: Any) -> None:
    page.wait_for_selector('#expiry[data-state="expired"]', timeout=(ACCESS_TTL + 5) * 1000)


def press(page: Any, kind: str) -> dict[str, str]:
    """Press a burst button and return its summary's data attributes once it is done."""
    page.fill("#count", str(BURST))
    page.evaluate("delete document.body.dataset.done")
    page.click(f"#burst-{kind}")
    page.wait_for_selector(f'body[data-done="{kind}"]', timeout=30_000)
    data: dict[str, str] = page.eval_on_selector(
        f"#{kind}-summary", "el => Object.assign({}, el.dataset)"
    )
    return data


def statuses(page: Any, kind: str) -> list[str]:
    result: list[str] = page.eval_on_selector_all(
        f"#{kind}-results .cell", "cells => cells.map(c => c.dataset.status)"
    )
    return result


def test_the_burst_wins_the_race_and_the_naive_one_loses_it(
    page: Any, screenshots: Path, tmp_path: Path
) -> None:
    env = {"EXAMPLE_ACCESS_TTL": str(ACCESS_TTL)}
    with run_example(tmp_path / "instance", **env) as example:
        sign_in(page, example)
        page.screenshot(path=str(screenshots / "01-signed-in.png"), full_page=True)

        # With the extension: every request succeeds; the provider saw exactly one refresh.
        wait_for_expiry(page)
        summary = press(page, "guarded")
        page.screenshot(path=str(screenshots / "02-protected-burst.png"), full_page=True)
        assert statuses(page, "guarded") == ["200"] * BURST, example.output()
        assert summary["ok"] == str(BURST)
        assert summary["refreshes"] == "1"
        assert summary["reuse"] == "0" and summary["revoked"] == "0"
        assert page.get_attribute("#expiry", "data-state") == "fresh"

        # The naive route on the next expiry: reuse, family revoked, then signed out.
        wait_for_expiry(page)
        summary = press(page, "naive")
        page.screenshot(path=str(screenshots / "03-naive-burst.png"), full_page=True)
        results = statuses(page, "naive")
        assert len(results) == BURST
        assert int(summary["failed"]) >= 1 and "401" in results
        assert int(summary["reuse"]) >= 1
        assert summary["revoked"] == "1"
        assert page.get_attribute("#after-naive", "data-status") == "401"
        assert page.is_visible("#signed-out")
        assert "revoked the token family" in page.inner_text("#signed-out")
        assert page.get_attribute("body", "data-logged-in") == "false"
        assert "Traceback" not in example.output()
