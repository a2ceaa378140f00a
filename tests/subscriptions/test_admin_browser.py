"""Staff in a real browser (headless Chromium from Debian's package, driven by Playwright):
a marketer logs in with TOTP, writes and schedules an issue and watches it reach 100%
against a real SMTP server; a privacy officer answers a disclosure request end to end.

Script payloads sit in every free-text field staff pages show (subscriber names, issue
subjects, bounce replies, user agents); each test listens for dialogs and fails on any.
Screenshots of the dashboard, the issue report and the others go to test-artifacts/.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.models import ConsentChannel, Magazine, StaffRole, Subscriber
from subscriptions.runtime import Runtime
from tests.support.browser import require_chromium, shot
from tests.support.pages import link_in
from tests.support.smtp import SMTPSink
from tests.support.staff import PASSWORD, add_staff, fresh_code

pytestmark = pytest.mark.browser

require_chromium()

from playwright.sync_api import Browser, Dialog, Page, expect  # noqa: E402

XSS = '<img src=x onerror=alert("xss")><script>alert("xss")</script>'
READERS = 25


def readers(runtime: Runtime, engine: Engine, count: int) -> list[Subscriber]:
    """Confirmed readers of the weekly, the first one with a hostile name and user agent."""
    evidence = Evidence(ConsentChannel.web_form, "192.0.2.7", XSS, None)
    people = []
    with Session(for_writing(engine), expire_on_commit=False) as session:
        weekly = session.exec(select(Magazine).where(Magazine.slug == "weekly")).one()
        for n in range(count):
            email = f"reader{n}@example.org"
            person = Subscriber(
                email=email,
                name=XSS if n == 0 else f"Reader {n}",
                company=XSS if n == 0 else None,
                address_digest=runtime.optin.hasher.digest(email),
            )
            session.add(person)
            session.flush()
            runtime.optin.lifecycle.request(session, person, weekly, evidence)
            runtime.optin.lifecycle.confirm(session, person, evidence)
            people.append(person)
        session.commit()
    return people


def watch_dialogs(page: Page) -> list[str]:
    seen: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        seen.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return seen


def log_in(page: Page, base_url: str, email: str, seed: str) -> None:
    page.goto(f"{base_url}/admin")
    expect(page.get_by_role("heading", name="Staff login")).to_be_visible()
    page.get_by_label("Address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Two-factor code")).to_be_visible()
    page.get_by_label("The six-digit code", exact=False).fill(fresh_code(seed))
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


def test_a_marketer_writes_schedules_and_watches_an_issue_go_out(
    browser: Browser, site: tuple[str, Runtime], smtp_server: SMTPSink, engine: Engine
) -> None:
    base_url, runtime = site
    readers(runtime, engine, READERS)
    email, seed = add_staff(engine, StaffRole.marketer, runtime.secret_box())
    assert seed is not None
    context = browser.new_context(timezone_id="UTC", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    dialogs = watch_dialogs(page)
    log_in(page, base_url, email, seed)

    page.get_by_role("link", name="Issues").click()
    page.get_by_role("link", name="New issue").click()
    page.get_by_label("Subject").fill(f"Weekly {XSS}")
    page.get_by_label("HTML body", exact=False).fill(
        "<h1>Hello {{ subscriber.name }}</h1><p>This week: spring seminars.</p>"
    )
    compliance = page.locator("#compliance")
    expect(compliance).to_contain_text("passes")
    preview = page.frame_locator("#preview")
    expect(preview.get_by_role("heading", name="Hello Hanako Yamada")).to_be_visible()
    page.get_by_role("button", name="mobile").click()
    shot(page, "admin-issue-editor")
    page.get_by_label("HTML body", exact=False).fill("<p>{{ subscriber.__class__ }}</p>")
    expect(compliance).to_contain_text("refused")
    page.get_by_label("HTML body", exact=False).fill(
        "<h1>Hello {{ subscriber.name }}</h1><p>This week: spring seminars.</p>"
    )
    expect(compliance).to_contain_text("passes")
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("heading", name=re.compile(r"Issue #\d+"))).to_be_visible()
    issue_id = int(page.url.rsplit("/", 1)[1])

    page.get_by_label("Test send to", exact=False).fill("proof@example.com")
    page.get_by_role("button", name="Send a test").click()
    expect(page.locator("#test-result")).to_contain_text("proof@example.com: sent")

    at = datetime.now(UTC) + timedelta(seconds=3)
    page.get_by_label("Send at", exact=False).fill(at.strftime("%Y-%m-%dT%H:%M:%S"))
    page.get_by_role("button", name="Schedule", exact=True).click()
    expect(page.locator("#action-result")).to_contain_text("scheduled")

    page.goto(f"{base_url}/admin/issues/{issue_id}/report")
    row = page.locator(f'tr[data-issue="{issue_id}"]')
    expect(row.locator('[data-field="percent"]')).to_have_text(
        re.compile(r"^100(\.0)?$"), timeout=30_000
    )
    expect(row.locator('[data-field="status"]')).to_have_text("sent", timeout=10_000)
    with Session(engine) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        assert issue.status is IssueStatus.sent
        # a refused recipient's reply, hostile, is grouped by its status, never shown
        failed = session.exec(select(Delivery).where(Delivery.issue_id == issue_id)).first()
        assert failed is not None
    with Session(for_writing(engine)) as session:
        failed = session.get(Delivery, failed.id)
        assert failed is not None
        reply = f"5.1.1 <refused@example.org> {XSS}"
        failed.status, failed.last_code, failed.last_reply = DeliveryStatus.failed, 550, reply
        failed.last_enhanced_status = "5.1.1"
        session.add(failed)
        session.commit()
    page.reload()
    expect(page.locator("#failures")).to_contain_text("bad destination mailbox address")
    expect(page.get_by_text("refused@example.org")).to_have_count(0)
    expect(page.locator("#report-figures")).to_contain_text("Recipients")
    shot(page, "admin-issue-report")

    page.get_by_role("link", name="Dashboard").click()
    expect(page.locator("svg.chart").first).to_be_visible()
    expect(page.get_by_text("Subscribers per magazine")).to_be_visible()
    shot(page, "admin-dashboard")
    assert len(smtp_server.wait_for(READERS + 1)) >= READERS + 1  # the test and every reader
    # a marketer sees no person: the subscriber pages are not theirs
    assert "Subscribers" not in page.locator("nav.admin").inner_text()
    refused = page.goto(f"{base_url}/admin/subscribers")
    assert refused is not None
    assert refused.status == 403
    assert dialogs == [], f"a script ran: {dialogs}"
    context.close()


def test_a_privacy_officer_answers_a_disclosure_request_end_to_end(
    browser: Browser, site: tuple[str, Runtime], smtp_server: SMTPSink, engine: Engine
) -> None:
    base_url, runtime = site
    person = readers(runtime, engine, 1)[0]
    email, seed = add_staff(engine, StaffRole.privacy_officer, runtime.secret_box())
    assert seed is not None

    # the person asks on the contact page, in a browser whose user agent is hostile
    visitor = browser.new_context(user_agent=XSS, accept_downloads=True)
    page = visitor.new_page()
    visitor_dialogs = watch_dialogs(page)
    page.goto(f"{base_url}/contact")
    page.get_by_label("What would you like?").select_option("disclosure")
    page.get_by_label("Email address").fill(person.email)
    page.get_by_label("Your message", exact=False).fill(f"What do you hold? {XSS}")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    verify_mail = smtp_server.wait_for(1)[0].message()
    page.goto(link_in(verify_mail, "/verify/"))
    page.get_by_role("button", name="Yes, this request is mine").click()
    expect(page.get_by_role("heading", name="your request is confirmed")).to_be_visible()

    staff = browser.new_context(viewport={"width": 1280, "height": 900})
    desk = staff.new_page()
    dialogs = watch_dialogs(desk)
    log_in(desk, base_url, email, seed)
    desk.get_by_role("link", name="Requests").click()
    desk.get_by_role("link", name=re.compile(r"#\d+")).first.click()
    expect(desk.locator('[data-field="status"]')).to_have_text("open")
    expect(desk.get_by_text("confirmed by mail loop")).to_be_visible()
    shot(desk, "admin-request")
    desk.get_by_label("Answer to the person", exact=False).fill(
        "Here is everything we hold about you."
    )
    desk.get_by_role("button", name=re.compile("Complete")).click()
    expect(desk.locator('[data-field="status"]')).to_have_text("completed")

    desk.get_by_role("link", name="Subscribers").click()
    desk.get_by_label("Address", exact=False).fill("reader0")
    desk.get_by_role("button", name="Search").click()
    desk.get_by_role("link", name=person.email).click()
    expect(desk.get_by_role("heading", name="Consent history")).to_be_visible()
    expect(desk.get_by_text(XSS).first).to_be_visible()  # shown as text, not run
    shot(desk, "admin-subscriber")
    desk.get_by_role("link", name="Audit log").click()
    expect(desk.get_by_text("privacy_request.completed")).to_be_visible()
    expect(desk.get_by_text("subscriber.viewed")).to_be_visible()

    done_mail = smtp_server.wait_for(2)[1].message()
    page.goto(link_in(done_mail, "/disclosure/"))
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download (JSON)").click()
    bundle = json.loads(Path(download_info.value.path()).read_text(encoding="utf-8"))
    assert bundle["profile"]["email"] == person.email
    assert [s["magazine"] for s in bundle["subscriptions"]] == ["weekly"]
    assert [e["action"] for e in bundle["consent_events"]] == ["granted", "confirmed"]
    assert set(bundle) >= {"deliveries", "transfers"}
    assert dialogs == [], f"a script ran in the admin pages: {dialogs}"
    assert visitor_dialogs == []
    staff.close()
    visitor.close()
