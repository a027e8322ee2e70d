"""Headless Chromium (Debian's package) for tests that need a real browser."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]


def chromium() -> str:
    path = (
        os.environ.get("CARLOS_REG_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if not path:
        if os.environ.get("CARLOS_REG_REQUIRE_BROWSER"):
            pytest.fail(
                "headless Chromium is required (CARLOS_REG_REQUIRE_BROWSER is set) but was not found"
            )
        pytest.skip("Chromium not installed (apt-get install chromium)")
    return path


def _run(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="carlos-chromium-") as profile:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def dump_dom(url: str) -> str:
    proc = _run(["--virtual-time-budget=5000", "--dump-dom", url])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def screenshot(url: str, out: Path, size: str = "1280,2000") -> Path:
    proc = _run([f"--screenshot={out}", f"--window-size={size}", "--virtual-time-budget=5000", url])
    assert out.is_file(), proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def browser():
    """One Playwright Chromium per test module (import this fixture into the module)."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium(), args=[f for f in FLAGS if f != "--headless"]
        )
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page (own context: no history, storage or hash shared between tests), 1400 px wide."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    yield pg
    context.close()
