"""Headless Chromium for the browser tests: Debian's package, driven by Playwright.

Without a chromium binary the tests skip with the reason, except under CI, where they must
run. Screenshots go to test-artifacts/ for people to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = os.environ.get("MAILMAG_TEST_CHROMIUM") or shutil.which("chromium") or ""
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Skip the calling test module without a browser (fail under CI)."""
    if CHROMIUM:
        return
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests, but no chromium binary was found")
    pytest.skip("no chromium installed (apt-get install chromium)", allow_module_level=True)


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
