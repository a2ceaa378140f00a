"""Every page sends a Content-Security-Policy that its own scripts and styles satisfy: in a
real browser (headless Chromium, driven by Playwright), the public pages, the admin pages
(the issue editor's live preview too), captured mail and /docs report no violation, and
they still look as they should (the stylesheet applies, Swagger UI renders, offline: it is
served by mailmag itself).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.capture import free_port, read_captured
from subscriptions import staff as accounts
from subscriptions.app import create_app
from subscriptions.db import for_writing
from subscriptions.models import StaffRole, StaffUser
from subscriptions.runtime import Runtime
from subscriptions.settings import Settings
from tests.support.browser import require_chromium, shot
from tests.support.server import serving
from tests.support.staff import add_staff

pytestmark = pytest.mark.browser

require_chromium()

from playwright.sync_api import Browser, BrowserContext, Page, Response, expect  # noqa: E402

PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk"
    "YAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


@pytest.fixture
def capturing_site(settings: Settings, engine: Engine) -> Iterator[tuple[str, Runtime]]:
    """The app on the embedded default (no relay: mail is captured and shown at /_mail)."""
    port = free_port()
    live = settings.model_copy(
        update={
            "base_url": f"http://127.0.0.1:{port}",
            "smtp_host": None,
            "capture_smtp_port": free_port(),
        }
    )
    app = create_app(live, engine=engine)
    runtime: Runtime = app.state.runtime
    runtime.start_services()
    try:
        with serving(app, port) as base_url:
            yield base_url, runtime
    finally:
        runtime.stop_services()


class Watch:
    """What a browser context reports: CSP violations (from the console and the
    ``securitypolicyviolation`` event, in every frame) and each document's policy."""

    def __init__(self, context: BrowserContext) -> None:
        self.violations: list[str] = []
        self.policies: dict[str, str | None] = {}
        context.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => console.error("
            "'CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));"
        )
        context.on("console", self._console)
        context.on("response", self._response)

    def _console(self, message: object) -> None:
        text = str(getattr(message, "text", ""))
        if "Content Security Policy" in text or "CSP violation" in text:
            self.violations.append(text)

    def _response(self, response: Response) -> None:
        if response.request.resource_type == "document":
            self.policies[response.url] = response.headers.get("content-security-policy")


def session_cookie(context: BrowserContext, base_url: str, engine: Engine, email: str) -> None:
    """Logged in as ``email`` (past the second factor), as after the login forms."""
    with Session(for_writing(engine)) as session:
        user = session.exec(select(StaffUser).where(StaffUser.email == email)).one()
        _row, cookie = accounts.open_session(
            session, user, second_factor=True, source="127.0.0.1", user_agent="test"
        )
        session.commit()
    context.add_cookies([{"name": accounts.SESSION_COOKIE, "value": cookie, "url": base_url}])


def styled(page: Page) -> str:
    return str(page.evaluate("getComputedStyle(document.body).maxWidth"))


def test_no_page_violates_its_policy(
    browser: Browser, capturing_site: tuple[str, Runtime], engine: Engine
) -> None:
    base_url, runtime = capturing_site
    runtime.sync_magazines()
    context = browser.new_context(locale="en-US")
    watch = Watch(context)
    page = context.new_page()

    # the subscriber's pages, and the mail they cause, as captured mail shows it
    page.goto(f"{base_url}/subscribe?lang=ja")
    page.goto(f"{base_url}/contact")
    page.goto(f"{base_url}/subscribe")
    assert styled(page) == "736px"  # 46rem: the stylesheet applies under style-src 'self'
    page.locator("#email").fill("csp@example.org")
    page.get_by_role("checkbox", name="Sakura Weekly").check()
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    page.goto(f"{base_url}/u/not-a-real-link")
    deadline = time.monotonic() + 20  # the outbox sends the confirmation after the answer
    while not read_captured(runtime.captured_mail_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    page.goto(f"{base_url}/_mail")
    page.get_by_role("link", name="Confirm your subscription", exact=False).first.click()
    frame = page.frame_locator("iframe[title='HTML part']")
    expect(frame.get_by_role("link").first).to_be_visible()
    shot(page, "csp-captured-mail")

    # the API's documentation, from mailmag's own copy of Swagger UI
    page.goto(f"{base_url}/docs")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible(timeout=15_000)
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("mailmag")
    shot(page, "csp-docs")

    # the staff pages: the login, the dashboard, the editor's live preview, the registries
    page.goto(f"{base_url}/admin/login")
    marketer, _ = add_staff(engine, StaffRole.marketer)
    officer, _ = add_staff(engine, StaffRole.privacy_officer)
    session_cookie(context, base_url, engine, marketer)
    page.goto(f"{base_url}/admin")
    page.goto(f"{base_url}/admin/issues/new")
    page.locator("[name=subject]").fill("Hello {{ subscriber.name }}")
    page.locator("[name=html_body]").fill(
        f'<p style="color:#c62828">Styled inline</p><img src="{PIXEL}" alt="pixel">'
    )
    preview = page.frame_locator("#preview")
    expect(preview.get_by_text("Styled inline")).to_be_visible(timeout=10_000)
    shot(page, "csp-issue-editor")
    context.clear_cookies()
    session_cookie(context, base_url, engine, officer)
    page.goto(f"{base_url}/admin/registries")
    page.goto(f"{base_url}/admin/notices")

    assert watch.violations == []
    missing = [url for url, policy in watch.policies.items() if not policy]
    assert missing == []
    assert len(watch.policies) >= 12
    context.close()
