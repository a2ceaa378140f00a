"""Subscriber pages and system mails speak English and Japanese."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient

from subscriptions.i18n import pick_locale
from subscriptions.paths import LOCALE_DIR
from tests.support.pages import hidden_fields, link_in, local, text_of
from tests.support.smtp import SMTPSink

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout: messages come from its sources


def extracted_messages() -> set[str]:
    method_map = [
        ("subscriptions/**.py", "python"),
        ("templates/**.html", "jinja2"),
        ("templates/**.txt", "jinja2"),
    ]
    found = extract_from_dir(PROJECT_ROOT, method_map=method_map, keywords={"_": None, "N_": None})
    return {str(message) for _file, _line, message, _comments, _context in found}


def test_every_message_has_a_japanese_translation() -> None:
    path: Path = LOCALE_DIR / "ja" / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as fh:
        catalog = read_po(fh)
    translated = {m.id for m in catalog if m.id and m.string and not m.fuzzy}
    missing = extracted_messages() - translated
    assert not missing, f"untranslated: {sorted(missing)}"


def test_locale_comes_from_the_link_then_the_browser() -> None:
    assert pick_locale("ja", "en-US,en;q=0.9") == "ja"
    assert pick_locale(None, "fr-FR,ja;q=0.8,en;q=0.5") == "ja"
    assert pick_locale(None, "en;q=0.4,ja;q=0.9") == "ja"
    assert pick_locale("xx", "de") == "en"
    assert pick_locale(None, "ja;q=0,en") == "en"
    assert pick_locale(None, "garbage;q=abc") == "en"


def test_japanese_visitor_sees_japanese_pages_and_mail(
    client: TestClient, smtp_server: SMTPSink
) -> None:
    page = client.get("/subscribe", headers={"Accept-Language": "ja,en;q=0.5"})
    assert '<html lang="ja">' in page.text
    assert "個人情報の取得に際しての明示事項" in page.text
    assert "メールマガジンの購読申込み" in page.text
    data = {**hidden_fields(page.text), "email": "taro@example.jp", "magazines": ["weekly"]}
    answer = client.post("/subscribe", data=data)
    assert "メールをご確認ください" in answer.text
    mail = smtp_server.wait_for(1)[0].message()
    assert mail["Subject"] == "【要確認】メールマガジン購読のご確認"
    assert "購読申込みがありました" in text_of(mail)
    confirm = client.get(local(link_in(mail, "/confirm/")))
    assert "購読の確認" in confirm.text
    assert "さくらウィークリー" in confirm.text
