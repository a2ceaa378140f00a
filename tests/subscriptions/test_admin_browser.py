"""Staff in a real browser (headless Chromium from Debian's package, driven by Playwright):
a marketer logs in with TOTP, writes and schedules an issue and watches it reach 100%
against a real SMTP server; a privacy officer answers a disclosure request end to end.

The issue editor is tested at 1920x1080 and 1280x800 for what a person sees: one status in
its header and its progress row as the issue moves (by a click, the scheduler or the
worker), only the actions that status allows, fields that cannot be changed once it is no
longer a draft, and a preview that shows the top of the message after a save and fits the
page at both widths.

Script payloads sit in every free-text field staff pages show (subscriber names, issue
subjects, bounce replies, user agents); each test listens for dialogs and fails on any.
Screenshots of the dashboard, the issue report, the editor in each status and the others go
to test-artifacts/.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer import issues
from mailer.capture import free_port
from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus
from subscriptions.app import create_app
from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.models import ConsentChannel, Magazine, StaffRole, Subscriber
from subscriptions.runtime import Runtime
from subscriptions.settings import Settings
from tests.support.browser import require_chromium, shot
from tests.support.pages import link_in
from tests.support.server import serving
from tests.support.smtp import SMTPSink
from tests.support.staff import PASSWORD, add_staff, fresh_code

pytestmark = pytest.mark.browser

require_chromium()

from playwright.sync_api import Browser, Dialog, Page, ViewportSize, expect  # noqa: E402

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
    expect(page.locator("#editor-status")).to_contain_text("scheduled")

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


# --- the issue editor ---------------------------------------------------------------------------

VIEWPORTS = [
    pytest.param(ViewportSize(width=1920, height=1080), id="1920x1080"),
    pytest.param(ViewportSize(width=1280, height=800), id="1280x800"),
]
# Each action as staff see it offered: the button that takes it.
BUTTONS = {
    "save": "Save draft",
    "test-send": "Send a test",
    "schedule": "Schedule",
    "send-now": "Send now",
    "unschedule": "Unschedule",
    "pause": "Pause",
    "resume": "Resume",
    "cancel": "Cancel sending",
}
FIELDS = ("Subject", "Preheader", "HTML body", "Text body")
CHOICES = ("Language", "Sent by")
# Every change to the header or the progress row's status is recorded with the other's text
# at that moment: the two must never disagree, not even between two polls.
WATCH_STATUS = """() => {
  const header = document.querySelector('#editor-status [data-show="status"]');
  const row = document.querySelector('#send [data-field="status"]');
  window.seenStatus = [[header.textContent, row.textContent]];
  const note = () => window.seenStatus.push([header.textContent, row.textContent]);
  const observer = new MutationObserver(note);
  const changes = {childList: true, characterData: true, subtree: true};
  for (const el of [header, row]) observer.observe(el, changes);
  window.sameDocument = true;
}"""


@pytest.fixture
def slow_site(
    settings: Settings, engine: Engine, smtp_server: SMTPSink
) -> Iterator[tuple[str, Runtime]]:
    """The whole app with one connection to a relay that takes half a second per message:
    an issue stays "sending" long enough to pause, resume and cancel it."""
    smtp_server.delay = 0.5
    port = free_port()
    live = settings.model_copy(update={"base_url": f"http://127.0.0.1:{port}", "smtp_pool_size": 1})
    app = create_app(live, engine=engine)
    with serving(app, port) as base_url:
        yield base_url, app.state.runtime


def in_flight(engine: Engine, issue_id: int) -> bool:
    with Session(engine) as session:
        return (
            session.exec(
                select(Delivery.id)
                .where(Delivery.issue_id == issue_id)
                .where(Delivery.status == DeliveryStatus.sending)
            ).first()
            is not None
        )


def size(viewport: ViewportSize) -> str:
    return f"{viewport['width']}x{viewport['height']}"


def marketer_at(
    browser: Browser, base_url: str, runtime: Runtime, engine: Engine, viewport: ViewportSize
) -> Page:
    email, seed = add_staff(engine, StaffRole.marketer, runtime.secret_box())
    assert seed is not None
    page = browser.new_context(timezone_id="Asia/Tokyo", viewport=viewport).new_page()
    log_in(page, base_url, email, seed)
    return page


def write_issue(page: Page, base_url: str, body: str) -> int:
    page.goto(f"{base_url}/admin/issues/new")
    page.get_by_label("Subject").fill("Spring seminars")
    page.get_by_label("HTML body", exact=False).fill(body)
    expect(page.locator("#compliance")).to_contain_text("passes")
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("heading", name=re.compile(r"Issue #\d+"))).to_be_visible()
    return int(page.url.rsplit("/", 1)[1])


def expect_status(page: Page, status: IssueStatus) -> None:
    """The header and the progress row say ``status``; exactly its actions are offered,
    and can be taken; the fields can be changed only when it can be saved."""
    expect(page.locator('#editor-status [data-show="status"]')).to_have_text(
        re.compile(rf"^{status.value}(, queuing)?$"), timeout=30_000
    )
    expect(page.locator('#send [data-field="status"]')).to_have_text(
        re.compile(rf"^{status.value}(, queuing)?$")
    )
    allowed = [a.value for a in issues.actions_for(status)]
    shown = [
        a
        for a, name in BUTTONS.items()
        if page.get_by_role("button", name=name, exact=True).is_visible()
    ]
    assert shown == allowed, f"{status.value}: offered {shown}, the table says {allowed}"
    for action in allowed:
        expect(page.get_by_role("button", name=BUTTONS[action], exact=True)).to_be_enabled()
    editable = "save" in allowed
    for label in FIELDS:
        field = page.get_by_label(label, exact=False)
        expect(field).to_be_editable() if editable else expect(field).not_to_be_editable()
    for label in CHOICES:
        choice = page.get_by_label(label, exact=True)
        expect(choice).to_be_enabled() if editable else expect(choice).to_be_disabled()


def open_new_issue(
    browser: Browser,
    site: tuple[str, Runtime],
    engine: Engine,
    viewport: ViewportSize,
    audience: int,
) -> tuple[Page, int]:
    """A marketer's page on a saved draft for ``audience`` readers, its header and progress
    row watched from then on."""
    base_url, runtime = site
    readers(runtime, engine, audience)
    page = marketer_at(browser, base_url, runtime, engine, viewport)
    issue_id = write_issue(page, base_url, "<h1>Hello {{ subscriber.name }}</h1><p>News.</p>")
    page.evaluate(WATCH_STATUS)
    return page, issue_id


def schedule_at(page: Page, when: datetime) -> None:
    """Schedule in the form, which takes the browser's local time (Tokyo here)."""
    local = when.astimezone(ZoneInfo("Asia/Tokyo")).strftime("%Y-%m-%dT%H:%M:%S")
    page.get_by_label("Send at", exact=False).fill(local)
    page.get_by_role("button", name="Schedule", exact=True).click()


def assert_never_disagreed(page: Page) -> None:
    seen = page.evaluate("window.seenStatus")
    assert all(header == row for header, row in seen), seen
    assert page.evaluate("window.sameDocument === true"), "the page was reloaded"


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_the_editor_follows_the_issue_as_the_scheduler_sends_it(
    browser: Browser,
    site: tuple[str, Runtime],
    smtp_server: SMTPSink,
    engine: Engine,
    viewport: ViewportSize,
) -> None:
    page, issue_id = open_new_issue(browser, site, engine, viewport, 3)
    dialogs = watch_dialogs(page)
    expect_status(page, IssueStatus.draft)
    shot(page, f"admin-editor-draft-{size(viewport)}")

    schedule_at(page, datetime.now(UTC) + timedelta(hours=1))
    expect_status(page, IssueStatus.scheduled)
    expect(page.locator("#editor-status")).to_contain_text("Unschedule it to change it")
    shot(page, f"admin-editor-scheduled-{size(viewport)}")
    page.get_by_role("button", name="Unschedule").click()
    expect_status(page, IssueStatus.draft)

    # Scheduled a moment ahead, the issue is started by the scheduler and finished by the
    # worker: no click, and the page follows.
    schedule_at(page, datetime.now(UTC) + timedelta(seconds=2))
    expect_status(page, IssueStatus.sent)
    expect(page.locator('#send [data-field="percent"]')).to_have_text(re.compile(r"^100(\.0)?$"))
    expect(page.locator("#editor-status")).to_contain_text("Nothing more can be done")
    assert_never_disagreed(page)
    shot(page, f"admin-editor-sent-{size(viewport)}")
    assert len(smtp_server.wait_for(3)) == 3
    with Session(engine) as session:
        assert session.get_one(Issue, issue_id).status is IssueStatus.sent
    assert dialogs == []
    page.context.close()


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_pause_resume_and_cancel_are_offered_while_it_goes_out(
    browser: Browser,
    slow_site: tuple[str, Runtime],
    smtp_server: SMTPSink,
    engine: Engine,
    viewport: ViewportSize,
) -> None:
    page, issue_id = open_new_issue(browser, slow_site, engine, viewport, 40)

    # An edit not saved yet holds back what would send the saved issue.
    page.get_by_label("Subject").fill("Spring seminars, changed")
    expect(page.get_by_text("You have unsaved changes")).to_be_visible()
    expect(page.get_by_role("button", name="Send now")).to_be_disabled()
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_text("Saved.")).to_be_visible()
    expect(page.locator('#send [data-field="subject"]')).to_have_text("Spring seminars, changed")
    expect(page.get_by_role("button", name="Send now")).to_be_enabled()

    page.get_by_role("button", name="Send now").click()
    expect_status(page, IssueStatus.sending)
    expect(page.locator("#action-result")).to_have_text("Sending has started.")
    shot(page, f"admin-editor-sending-{size(viewport)}")
    # the server refuses a change as well: the page is not the only guard
    refused = page.evaluate(
        """async (id) => (await fetch('/api/v1/issues/' + id, {method: 'PATCH',
             headers: {'Content-Type': 'application/json', 'X-CSRF-Token':
               document.querySelector('meta[name="csrf-token"]').content},
             body: JSON.stringify({subject: 'Too late'})})).status""",
        issue_id,
    )
    assert refused == 409

    page.get_by_role("button", name="Pause").click()
    expect_status(page, IssueStatus.paused)
    with Session(for_writing(engine)) as session:  # as the complaint brake gives its reason
        paused = session.get_one(Issue, issue_id)
        paused.pause_reason = "complaint rate 0.20% is above 0.10%"
        session.add(paused)
        session.commit()
    expect(page.locator("#editor-status")).to_contain_text(
        "Paused: complaint rate 0.20% is above 0.10%."
    )
    shot(page, f"admin-editor-paused-{size(viewport)}")
    page.get_by_role("button", name="Resume").click()
    expect_status(page, IssueStatus.sending)
    page.get_by_role("button", name="Cancel sending").click()
    expect_status(page, IssueStatus.cancelled)
    expect(page.locator("#editor-status")).to_contain_text("Nothing more leaves")
    assert_never_disagreed(page)
    shot(page, f"admin-editor-cancelled-{size(viewport)}")
    with Session(engine) as session:
        issue = session.get_one(Issue, issue_id)
        assert (issue.status, issue.subject) == (IssueStatus.cancelled, "Spring seminars, changed")
    # Let what the worker had under way finish before the app stops.
    smtp_server.delay = 0
    deadline = time.monotonic() + 20
    while in_flight(engine, issue_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not in_flight(engine, issue_id)
    page.context.close()


LONG_BODY = "<h1>Top of the body</h1>" + "".join(f"<p>Paragraph {n}.</p>" for n in range(80))


def frame_fits(page: Page, mail_width: int) -> None:
    """The preview lays the mail out at ``mail_width`` and stays inside the editor and the
    window: nothing runs past the right edge, and the page does not scroll sideways."""
    frame = page.locator("#preview").bounding_box()
    editor = page.locator("#editor").bounding_box()
    assert frame is not None
    assert editor is not None
    page_width = page.evaluate("document.documentElement.clientWidth")
    assert frame["x"] >= editor["x"] >= 0
    assert frame["x"] + frame["width"] <= editor["x"] + editor["width"] + 0.5
    assert editor["x"] + editor["width"] <= page_width
    assert page.evaluate("document.documentElement.scrollWidth") <= page_width
    inside = page.frame_locator("#preview").locator("html")
    assert inside.evaluate("() => window.innerWidth") == mail_width


def top_of_body_in_view(page: Page) -> None:
    """The message's first line shows: inside the window and inside the frame, the frame's
    document at its top."""
    heading = page.frame_locator("#preview").get_by_role("heading", name="Top of the body")
    expect(heading).to_be_visible()
    box = heading.bounding_box()
    frame = page.locator("#preview").bounding_box()
    assert box is not None
    assert frame is not None
    height = page.viewport_size["height"] if page.viewport_size else 0
    assert 0 <= frame["y"] <= box["y"]
    assert box["y"] + box["height"] <= height
    assert box["y"] + box["height"] <= frame["y"] + frame["height"]
    assert heading.evaluate("() => window.scrollY") == 0


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_the_preview_shows_the_top_of_the_body_after_a_save_and_fits_the_page(
    browser: Browser, site: tuple[str, Runtime], engine: Engine, viewport: ViewportSize
) -> None:
    base_url, runtime = site
    page = marketer_at(browser, base_url, runtime, engine, viewport)
    write_issue(page, base_url, LONG_BODY)
    top_of_body_in_view(page)
    frame_fits(page, 600)  # desktop is the first view
    shot(page, f"admin-editor-preview-desktop-{size(viewport)}")

    # Read far down the preview, change the subject and save from the end of the form.
    page.frame_locator("#preview").locator("html").evaluate("() => window.scrollTo(0, 1500)")
    page.get_by_label("Subject").fill("Spring seminars: the programme")
    page.get_by_role("button", name="Save draft").click()
    expect(page.locator("#save-result")).to_have_text("Saved.")
    expect(page.locator("#preview-subject")).to_have_text("Subject: Spring seminars: the programme")
    top_of_body_in_view(page)
    shot(page, f"admin-editor-saved-{size(viewport)}")

    page.get_by_role("button", name="mobile").click()
    frame_fits(page, 360)
    top_of_body_in_view(page)
    shot(page, f"admin-editor-preview-mobile-{size(viewport)}")

    # In a window narrower than the desktop view (a tablet's), the preview is scaled down to
    # its box, still laid out at 600 px, and says so.
    page.get_by_role("button", name="desktop").click()
    page.set_viewport_size({"width": 540, "height": viewport["height"]})
    expect(page.locator("#preview-scale")).to_contain_text("% of its size")
    frame = page.locator("#preview").evaluate("el => el.getBoundingClientRect().toJSON()")
    box = page.locator("#preview-box").evaluate("el => el.getBoundingClientRect().toJSON()")
    assert frame["right"] <= box["right"] + 0.5
    assert frame["width"] < 600
    assert page.evaluate("document.documentElement.scrollWidth") <= 540
    assert page.frame_locator("#preview").locator("html").evaluate("() => innerWidth") == 600
    page.context.close()
