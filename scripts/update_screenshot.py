"""Refresh docs/screenshot.png: the example page right after a protected burst.

Runs the browser test (tests/test_example_browser.py), which signs in, waits past the access
token's expiry and fires the burst in headless Chromium, with its screenshots sent to a
temporary folder; then copies the one after the protected burst. One flow, so the README's
picture is always what the test checked. Usage: ``python scripts/update_screenshot.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "screenshot.png"
SHOT = "02-protected-burst.png"  # named by tests/test_example_browser.py


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tokenguard-screenshot-") as folder:
        env = {**os.environ, "TOKENGUARD_SCREENSHOT_DIR": folder, "TOKENGUARD_REQUIRE_BROWSER": "1"}
        test = "tests/test_example_browser.py"
        command = [sys.executable, "-m", "pytest", "-q", test]  # fixed: no outside input
        done = subprocess.run(command, cwd=ROOT, env=env)  # noqa: S603
        shot = Path(folder) / SHOT
        if done.returncode != 0 or not shot.exists():
            print(f"the browser test failed; {TARGET} is unchanged", file=sys.stderr)
            return 1
        TARGET.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, TARGET)
    print(f"updated {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
