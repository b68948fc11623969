"""Headless Chromium as the e2e tests look at the Prefect and MLflow UIs: a page's screenshot, and its
DOM once its scripts have rendered it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "e2e"  # where e2e runs leave screenshots
MISSING = "headless Chromium not installed (apt-get install chromium); .ci/run installs it"


def installed() -> str | None:
    """Chromium's path, where it is installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(profile: Path, url: str, *what: str) -> subprocess.CompletedProcess:
    chromium = installed()
    if not chromium:
        pytest.skip(MISSING)
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1600,1300",
         "--virtual-time-budget=20000", *what, url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def screenshot(url: str, shot: Path, profile: Path) -> None:
    """`shot` (PNG) of `url` at 1600x1300 once its scripts ran; fails when there is none."""
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    _chromium(profile, url, f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 20_000, f"no screenshot of {url}"


def rendered_dom(url: str, profile: Path) -> str:
    """The page's DOM as its scripts left it (what a user's browser shows, as HTML)."""
    return _chromium(profile, url, "--dump-dom").stdout
