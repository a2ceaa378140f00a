"""The preferences page in a real browser (headless Chromium, driven by Playwright), in
Japanese: a correction request picks the item to correct as /contact does, a refused entry
is explained in the page's language next to its field, and nothing typed is lost."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.models import (
    ConsentChannel,
    Magazine,
    PrivacyRequest,
    RequestKind,
    RequestStatus,
    Subscriber,
)
from subscriptions.runtime import Runtime
from subscriptions.tokens import Action
from tests.support.browser import require_chromium, shot

pytestmark = pytest.mark.browser

require_chromium()

from playwright.sync_api import Browser, Page, expect  # noqa: E402


def reader(runtime: Runtime, engine: Engine) -> Subscriber:
    """A confirmed subscriber of the weekly magazine, as after a sign-up."""
    runtime.sync_magazines()
    evidence = Evidence(ConsentChannel.web_form, "192.0.2.1", "test", "a" * 64)
    with Session(for_writing(engine), expire_on_commit=False) as session:
        weekly = session.exec(select(Magazine).where(Magazine.slug == "weekly")).one()
        person = Subscriber(
            email="hanako@example.jp",
            name="山田 花子",
            company="旧商事株式会社",
            locale="ja",
            address_digest=runtime.optin.hasher.digest("hanako@example.jp"),
        )
        session.add(person)
        session.flush()
        runtime.optin.lifecycle.request(session, person, weekly, evidence)
        runtime.optin.lifecycle.confirm(session, person, evidence)
        session.commit()
        return person


def open_preferences(browser: Browser, runtime: Runtime, person: Subscriber) -> Page:
    context = browser.new_context(locale="ja-JP")
    page = context.new_page()
    page.goto(runtime.links.url(Action.preferences, person, lang="ja"))
    expect(page.get_by_role("heading", name="配信設定")).to_be_visible()
    return page


def test_a_correction_request_from_the_preferences_page(
    browser: Browser, site: tuple[str, Runtime], engine: Engine
) -> None:
    _base_url, runtime = site
    person = reader(runtime, engine)
    page = open_preferences(browser, runtime, person)
    request_form = page.locator("#request-form")
    request_form.get_by_label("ご請求の内容").select_option(label="個人データを訂正してほしい")
    request_form.get_by_label("ご用件").fill("社名が変わりました。")
    request_form.get_by_role("button", name="送信").click()

    # No item chosen: said in Japanese, next to the picker, with the message kept.
    expect(page.locator("#request-field-error")).to_have_text("訂正する項目をお選びください。")
    request_form = page.locator("#request-form")
    expect(request_form.get_by_label("ご用件")).to_have_value("社名が変わりました。")
    expect(request_form.get_by_label("ご請求の内容")).to_have_value("correction")
    shot(page, "preferences-correction-refused-ja")

    request_form.get_by_label("訂正する項目").select_option(label="会社名")
    request_form.get_by_label("正しい内容").fill("新商事株式会社\u2028Bcc: x@example.net")
    request_form.get_by_role("button", name="送信").click()
    expect(page.locator("#request-value-error")).to_have_text("改行を含めずに1行でご入力ください。")
    request_form = page.locator("#request-form")
    expect(request_form.get_by_label("訂正する項目")).to_have_value("company")

    request_form.get_by_label("正しい内容").fill("新商事株式会社")
    request_form.get_by_role("button", name="送信").click()
    expect(page.get_by_role("heading", name="ご請求を受け付けました")).to_be_visible()

    with Session(engine) as session:
        (asked,) = session.exec(select(PrivacyRequest)).all()
    assert asked.kind is RequestKind.correction
    assert asked.status is RequestStatus.open  # the signed link proved the mailbox
    assert asked.correction == {"company": "新商事株式会社"}
    assert asked.message == "社名が変わりました。"
    page.context.close()


def test_a_refused_profile_entry_keeps_everything_typed(
    browser: Browser, site: tuple[str, Runtime], engine: Engine
) -> None:
    _base_url, runtime = site
    person = reader(runtime, engine)
    page = open_preferences(browser, runtime, person)
    page.locator("#name").fill("山田\u2028Bcc: x@example.net")
    page.locator("#department").fill("営業部")
    page.locator("#phone").fill("電話してください")
    page.get_by_role("checkbox", name="イベント・セミナー情報", exact=False).check()
    page.get_by_role("button", name="設定を保存する").click()

    expect(page.locator("#name-error")).to_have_text("改行を含めずに1行でご入力ください。")
    expect(page.locator("#phone-error")).to_contain_text("電話番号は")
    expect(page.locator("#department")).to_have_value("営業部")
    expect(page.locator("#name")).to_have_value("山田\u2028Bcc: x@example.net")
    expect(page.get_by_role("checkbox", name="イベント・セミナー情報", exact=False)).to_be_checked()
    shot(page, "preferences-refused-ja")
    with Session(engine) as session:
        stored = session.get(Subscriber, person.id)
        assert stored is not None
    assert (stored.name, stored.department) == ("山田 花子", None)
    page.context.close()
