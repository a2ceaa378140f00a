"""Fixtures of the browser tests: one Chromium per module, the app served over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from sqlalchemy.engine import Engine

from mailer.capture import free_port
from subscriptions.app import create_app
from subscriptions.runtime import Runtime
from subscriptions.settings import Settings
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.server import serving

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def site(settings: Settings, engine: Engine) -> Iterator[tuple[str, Runtime]]:
    """The whole app (worker and scheduler too) on a free loopback port."""
    port = free_port()
    live = settings.model_copy(update={"base_url": f"http://127.0.0.1:{port}"})
    app = create_app(live, engine=engine)
    with serving(app, port) as base_url:
        yield base_url, app.state.runtime
