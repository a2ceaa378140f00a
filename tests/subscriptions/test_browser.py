"""A person in a real browser (headless Chromium from Debian's package, driven by
Playwright) subscribes, confirms from the mail, edits preferences, downloads their data,
unsubscribes and erases themselves, clicking the links from the captured mails.

Without a browser installed the tests skip with the reason, except under CI, where they
must run. Screenshots go to test-artifacts/ for people to look at.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from subscriptions.models import Subscriber, Subscription, SubscriptionStatus, Suppression
from subscriptions.runtime import Runtime
from subscriptions.tokens import Action
from tests.support.browser import require_chromium, shot
from tests.support.pages import link_in
from tests.support.smtp import SMTPSink

pytestmark = pytest.mark.browser

require_chromium()

from playwright.sync_api import Browser, Dialog, expect  # noqa: E402


def test_a_person_goes_through_every_self_service_step(
    browser: Browser, site: tuple[str, Runtime], smtp_server: SMTPSink, engine: Engine
) -> None:
    base_url, runtime = site
    context = browser.new_context(accept_downloads=True, locale="en-US")
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)

    page.goto(f"{base_url}/subscribe")
    expect(page.get_by_role("heading", name="Subscribe to our e-mail magazines")).to_be_visible()
    expect(page.get_by_label("I agree to the joint use", exact=False)).not_to_be_checked()
    page.locator("#email").fill("browser@example.org")
    page.locator("#name").fill("<script>alert(1)</script>")
    page.get_by_role("checkbox", name="Sakura Weekly").check()
    page.get_by_label("I agree to the joint use", exact=False).check()
    shot(page, "subscribe-form")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()

    confirm_mail = smtp_server.wait_for(1)[0].message()
    page.goto(link_in(confirm_mail, "/confirm/"))
    page.get_by_role("button", name="Yes, confirm my subscription").click()
    expect(page.get_by_role("heading", name="You are subscribed")).to_be_visible()

    page.get_by_role("link", name="Manage your preferences").click()
    expect(page.get_by_text("browser@example.org")).to_be_visible()
    page.locator("#company").fill("Browser K.K.")
    page.get_by_role("checkbox", name="Events and Seminars").check()
    page.get_by_role("button", name="Save my preferences").click()
    expect(page.get_by_text("Your changes are saved.")).to_be_visible()
    shot(page, "preferences")

    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download all my data (JSON)").click()
    exported = json.loads(Path(download_info.value.path()).read_text(encoding="utf-8"))
    assert exported["profile"]["company"] == "Browser K.K."
    assert sorted(s["magazine"] for s in exported["subscriptions"]) == ["events", "weekly"]

    with Session(engine) as session:
        subscriber = session.exec(select(Subscriber)).one()
        unsubscribe_url = runtime.links.url(Action.unsubscribe, subscriber, "weekly")
        preferences_url = runtime.links.url(Action.preferences, subscriber)
    page.goto(unsubscribe_url)
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
    with Session(engine) as session:
        statuses = sorted(s.status for s in session.exec(select(Subscription)).all())
    assert statuses == [SubscriptionStatus.confirmed, SubscriptionStatus.unsubscribed]

    page.goto(preferences_url)
    page.get_by_role("button", name="Delete my data").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    erase_mail = smtp_server.wait_for(2)[1].message()
    page.goto(link_in(erase_mail, "/erase/"))
    page.get_by_role("button", name="Delete my data now").click()
    expect(page.get_by_role("heading", name="Your data has been deleted")).to_be_visible()
    with Session(engine) as session:
        assert session.exec(select(Subscriber)).all() == []
        assert len(session.exec(select(Suppression)).all()) == 1
    assert dialogs == [], "a script from a form field ran"
    context.close()


def test_the_japanese_form_in_a_japanese_browser(
    browser: Browser, site: tuple[str, Runtime]
) -> None:
    base_url, _runtime = site
    context = browser.new_context(locale="ja-JP")
    page = context.new_page()
    page.goto(f"{base_url}/subscribe")
    expect(page.get_by_role("heading", name="メールマガジンの購読申込み")).to_be_visible()
    expect(page.get_by_text("個人情報の取得に際しての明示事項")).to_be_visible()
    shot(page, "subscribe-form-ja")
    context.close()
