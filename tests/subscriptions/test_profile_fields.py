"""What a person types about themselves is checked the same way on every path that stores
it: sign-up (form and JSON API), the preferences form, corrections at the contact point and
by the privacy officer, and the CSV import. A value that would split a mail header or hide
text is refused with a message in the person's language, nothing is stored, and the form
comes back with what was typed."""

from __future__ import annotations

import html
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from subscriptions.app import create_app
from subscriptions.db import for_writing
from subscriptions.errors import InvalidFields, InvalidInput
from subscriptions.importing import Importer
from subscriptions.models import (
    AuditEvent,
    PrivacyRequest,
    RequestChannel,
    RequestKind,
    RequestStatus,
    StaffRole,
    Subscriber,
)
from subscriptions.profile import clean_field, clean_message, clean_profile
from subscriptions.registry import EXAMPLE_REGISTRY
from subscriptions.runtime import Runtime
from subscriptions.settings import Settings
from subscriptions.tokens import Action
from tests.mailer.test_sending import seed
from tests.subscriptions.test_privacy_requests import OFFICER
from tests.support.pages import hidden_fields
from tests.support.staff import add_staff, login

INJECTIONS = ["Bob\r\nBcc: x@example.net", "Bob\u2028Bcc: x", "Bob\x85Bcc: x", "Bob\nBcc: x"]
HIDDEN = [
    "Bob\u202egnp.exe",  # RIGHT-TO-LEFT OVERRIDE
    "Bob\u2066x\u2069",  # an isolate
    "Bob\u200bSmith",  # ZERO WIDTH SPACE
    "Bob\x00",
    "Bob\x1b[31m",
    "Bob\x9b",  # a C1 control
    "Bob\ud800",  # a lone surrogate
    "Bob\ufeff",
    "Bob\U000e0041",  # a tag character
    "\u3164",  # HANGUL FILLER: a letter that shows nothing
    "Bob\ufdd0",  # a noncharacter
]
JA_ONE_LINE = "改行を含めずに1行でご入力ください。"


def runtime_of(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


def rows_of(engine: Engine, model: type[SQLModel]) -> list[Any]:
    with Session(engine) as session:
        return list(session.exec(select(model)).all())


def name_of(engine: Engine, subscriber_id: int | None) -> str | None:
    with Session(engine) as session:
        person = session.get(Subscriber, subscriber_id)
        assert person is not None
        return person.name


# --- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", INJECTIONS)
def test_line_breaks_of_every_kind_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        clean_field("name", value)
    assert refused.value.field == "name"
    assert refused.value.message == "Please keep this on one line."


@pytest.mark.parametrize("value", HIDDEN)
def test_controls_and_characters_that_hide_text_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        clean_field("company", value)
    assert "invisible" in refused.value.message


@pytest.mark.parametrize(
    "value",
    [
        "山田　太郎",  # an ideographic space
        "葛\U000e0100城",  # an ideographic variation sequence
        "\ufa19田",  # a CJK compatibility ideograph, kept as typed (NFC would change it)
        "ｶﾌﾞｼｷｶﾞｲｼｬ",  # half-width katakana, kept as typed
        "Zoë 👩\u200d💻",  # ZERO WIDTH JOINER in an emoji sequence
        "می\u200cخواهم",  # noqa: RUF001 (ZERO WIDTH NON-JOINER, as Persian needs it)
        "Ｏ'Brien-Smith, Jr.",  # noqa: RUF001 (a full-width letter, kept as typed)
    ],
)
def test_real_names_are_stored_exactly_as_typed(value: str) -> None:
    assert clean_field("name", f"  {value}\t") == value


def test_private_use_characters_are_refused_with_their_own_message() -> None:
    with pytest.raises(InvalidInput) as refused:
        clean_field("name", "渡\ue000")
    assert "private-use" in refused.value.message


def test_the_length_is_the_columns_counted_in_characters() -> None:
    assert clean_field("name", "あ" * 200) == "あ" * 200
    with pytest.raises(InvalidInput, match="200 characters"):
        clean_field("name", "あ" * 201)
    with pytest.raises(InvalidInput, match="40 characters"):
        clean_field("phone", "1" * 41)


def test_a_phone_number_is_folded_to_ascii_and_must_look_like_one() -> None:
    assert clean_field("phone", "０３－１２３４－５６７８") == "03-1234-5678"  # noqa: RUF001
    assert clean_field("phone", "03ー1234ー5678 内線 12") == "03-1234-5678 内線 12"
    assert clean_field("phone", "+81 (3) 1234.5678 ext. 9") == "+81 (3) 1234.5678 ext. 9"
    for wrong in ("call me", "03-1234-5678; DROP", "---"):
        with pytest.raises(InvalidInput, match="telephone number"):
            clean_field("phone", wrong)


def test_every_refused_field_is_named_at_once() -> None:
    with pytest.raises(InvalidFields) as refused:
        clean_profile({"name": "Bob\r\nBcc: x", "company": "ok", "title": "\u202e"})
    assert set(refused.value.problems) == {"name", "title"}


def test_a_message_keeps_its_lines_but_not_its_controls() -> None:
    assert clean_message("text", "Hello,\r\nplease\rcorrect\u2028it.\n") == (
        "Hello,\nplease\ncorrect\nit."
    )
    with pytest.raises(InvalidInput):
        clean_message("text", "Hello\x00")
    with pytest.raises(InvalidInput):
        clean_message("text", "Hello \u202eevil")


# --- sign-up ----------------------------------------------------------------------------------


def sign_up_form(client: TestClient, lang: str = "en", **fields: Any) -> dict[str, Any]:
    page = client.get(f"/subscribe?lang={lang}")
    return {**hidden_fields(page.text), "magazines": ["weekly"], **fields}


@pytest.mark.parametrize("name", ["Bob\r\nBcc: x@example.net", "Bob\u2028Bcc: x"])
def test_the_sign_up_form_refuses_a_name_that_breaks_lines_and_keeps_what_was_typed(
    client: TestClient, engine: Engine, name: str
) -> None:
    answer = client.post(
        "/subscribe?lang=ja",
        data=sign_up_form(
            client, "ja", email="bob@example.org", name=name, company="Bob\u202eK.K."
        ),
    )
    assert answer.status_code == 422
    assert answer.text.count('class="error"') == 2  # next to the name and the company
    assert JA_ONE_LINE in answer.text
    assert "制御文字" in answer.text
    assert 'value="bob@example.org"' in answer.text
    assert not rows_of(engine, Subscriber)


def test_the_json_api_refuses_it_with_a_type_per_field(client: TestClient, engine: Engine) -> None:
    form = client.get("/api/v1/subscribe/form").json()
    answer = client.post(
        "/api/v1/subscribe",
        json={
            "email": "bob@example.org",
            "magazines": ["weekly"],
            "name": "Bob\u2028Bcc: x",
            "department": "Sales\u200b",
            "notice_hash": form["notice_hash"],
            "form_token": form["form_token"],
        },
    )
    assert answer.status_code == 422
    problems = {e["loc"][-1]: e["type"] for e in answer.json()["detail"]}
    assert problems == {"name": "line_break", "department": "invisible_character"}
    assert not rows_of(engine, Subscriber)


def test_a_sign_up_stores_the_name_stripped_and_the_phone_folded(
    client: TestClient, engine: Engine
) -> None:
    answer = client.post(
        "/subscribe",
        data=sign_up_form(
            client,
            email="hana@example.org",
            name=" 山田　花子 ",
            phone="０３－１",  # noqa: RUF001 (full-width, as typed in Japan)
        ),
    )
    assert answer.status_code == 200
    with Session(engine) as session:
        person = session.exec(select(Subscriber)).one()
    assert (person.name, person.phone) == ("山田　花子", "03-1")


def test_an_empty_sign_up_names_every_field_at_once(client: TestClient) -> None:
    data = sign_up_form(client, "ja", email="")
    data.pop("magazines")
    answer = client.post("/subscribe?lang=ja", data=data)
    assert answer.status_code == 422
    for message in (
        "メールアドレスを入力してください。",
        "メールマガジンを1つ以上選択してください。",
    ):
        assert message in answer.text


@pytest.fixture
def name_required(settings: Settings, engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    """The app with a registry that makes the name a required field of the sign-up form."""
    text = EXAMPLE_REGISTRY.read_text(encoding="utf-8")
    assert 'required = ["email"]' in text
    registry = tmp_path / "registry.toml"
    registry.write_text(text.replace('required = ["email"]', 'required = ["email", "name"]'))
    app = create_app(settings.model_copy(update={"registry_file": registry}), engine=engine)
    with TestClient(app) as client:
        yield client


def test_a_field_the_registry_requires_must_be_given_on_every_sign_up_path(
    name_required: TestClient, engine: Engine
) -> None:
    client = name_required
    answer = client.post(
        "/subscribe?lang=ja", data=sign_up_form(client, "ja", email="bob@example.org", name=" ")
    )
    assert answer.status_code == 422
    assert "この項目は必須です。" in answer.text
    form = client.get("/api/v1/subscribe/form").json()
    assert form["required_fields"] == ["email", "name"]
    refused = client.post(
        "/api/v1/subscribe",
        json={
            "email": "bob@example.org",
            "magazines": ["weekly"],
            "notice_hash": form["notice_hash"],
            "form_token": form["form_token"],
        },
    )
    assert refused.status_code == 422
    assert refused.json()["field"] == "name"
    assert not rows_of(engine, Subscriber)
    given = client.post(
        "/subscribe", data=sign_up_form(client, email="bob@example.org", name="Bob")
    )
    assert given.status_code == 200
    assert [p.name for p in rows_of(engine, Subscriber)] == ["Bob"]


# --- preferences ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Bob\r\nBcc: x@example.net", "Bob\u2028Bcc: x"])
def test_the_preferences_form_refuses_it_and_comes_back_with_what_was_typed(
    client: TestClient, app: FastAPI, engine: Engine, name: str
) -> None:
    _issue, people = seed(app, engine, 1)
    url = runtime_of(app).links.url(Action.preferences, people[0], lang="ja")
    answer = client.post(
        url.replace("http://testserver", ""),
        data={"magazines": ["weekly"], "name": name, "company": "New Co", "phone": "x"},
        follow_redirects=False,
    )
    assert answer.status_code == 422
    assert JA_ONE_LINE in answer.text
    assert "電話番号は" in answer.text
    assert 'value="New Co"' in answer.text  # what was typed, not what is stored
    assert html.escape(name.splitlines()[0]) in answer.text
    assert name_of(engine, people[0].id) == "Reader 0"


# --- corrections --------------------------------------------------------------------------------


def test_the_privacy_officer_cannot_store_it_and_keeps_what_was_typed(
    client: TestClient, app: FastAPI, engine: Engine
) -> None:
    _issue, people = seed(app, engine, 1)
    email, seed_ = add_staff(engine, StaffRole.privacy_officer, runtime_of(app).secret_box())
    csrf = login(client, email, seed_)
    path = f"/admin/subscribers/{people[0].id}/correct"
    refused = client.post(
        path,
        data={"csrf": csrf, "field": "name", "value": "Bob\u2028Bcc: x", "reason": "letter"},
    )
    assert refused.status_code == 422
    assert "Please keep this on one line." in refused.text
    assert 'value="letter"' in refused.text
    assert name_of(engine, people[0].id) == "Reader 0"
    done = client.post(
        path,
        data={"csrf": csrf, "field": "name", "value": " Bob Smith ", "reason": "letter"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert name_of(engine, people[0].id) == "Bob Smith"
    with Session(engine) as session:
        audited = session.exec(
            select(AuditEvent).where(AuditEvent.action == "subscriber.corrected")
        ).one()
    assert "Bob" not in audited.detail  # the fields and the reason, not the value
    assert "letter" in audited.detail


@pytest.mark.parametrize("value", ["Bob\r\nBcc: x@example.net", "Bob\u2028Bcc: x"])
def test_a_correction_request_with_it_is_refused_at_the_contact_point(
    client: TestClient, engine: Engine, value: str
) -> None:
    answer = client.post(
        "/contact?lang=ja",
        data={
            "kind": "correction",
            "address": "bob@example.org",
            "text": "Please fix my name.",
            "correction_field": "name",
            "correction_value": value,
        },
    )
    assert answer.status_code == 422
    assert JA_ONE_LINE in answer.text
    assert 'value="bob@example.org"' in answer.text
    assert "Please fix my name." in answer.text
    assert not rows_of(engine, PrivacyRequest)


def test_a_message_to_the_contact_point_may_not_hold_controls(
    client: TestClient, engine: Engine
) -> None:
    answer = client.post(
        "/contact",
        data={"kind": "complaint", "address": "bob@example.org", "text": "Hi\x00 \u202eevil"},
    )
    assert answer.status_code == 422
    assert "invisible" in answer.text
    assert not rows_of(engine, PrivacyRequest)


def test_a_correction_stored_before_the_checks_is_refused_when_completed(
    app: FastAPI, engine: Engine
) -> None:
    _issue, people = seed(app, engine, 1)
    desk = runtime_of(app).desk
    with Session(for_writing(engine)) as session:
        found = desk.receive(
            session,
            kind=RequestKind.correction,
            address=people[0].email,
            channel=RequestChannel.preferences,
            correction={"name": "Bob"},
        )
        found.correction = {"name": "Bob\u2028Bcc: x"}  # as an older version stored it
        session.add(found)
        session.commit()
        request_id = found.id
        with pytest.raises(InvalidInput):
            desk.complete(session, found, OFFICER, "done")
        session.rollback()
    with Session(engine) as session:
        stored = session.get(PrivacyRequest, request_id)
        assert stored is not None
        assert stored.status is RequestStatus.open
    assert name_of(engine, people[0].id) == "Reader 0"


# --- import -------------------------------------------------------------------------------------


def test_the_import_refuses_the_row_and_says_why(
    app: FastAPI, engine: Engine, tmp_path: Path
) -> None:
    runtime = runtime_of(app)
    runtime.sync_magazines()
    path = tmp_path / "list.csv"
    path.write_text(
        "email,name,company,phone\n"
        'ann@example.org,"Ann\r\nBcc: x@example.net",,\n'
        "ben@example.org,Ben\u2028Bcc: x,,\n"
        "cat@example.org,Cat,Cat\u202eK.K.,\n"
        "dan@example.org,Dan,,０３－１２３４－５６７８\n",  # noqa: RUF001 (full-width)
        encoding="utf-8",
        newline="",
    )
    report = Importer(runtime.engine, runtime.optin).run(path, magazine="weekly", actor=OFFICER)
    assert report.counts["refused"] == 3
    reasons = dict(report.problems)
    assert reasons[3] == "name: Please keep this on one line."  # the quoted row spans 2 lines
    assert reasons[4] == "name: Please keep this on one line."
    assert reasons[5].startswith("company: ")
    assert "invisible" in reasons[5]
    with Session(engine) as session:
        stored = {p.email: p for p in session.exec(select(Subscriber)).all()}
    assert set(stored) == {"dan@example.org"}
    assert stored["dan@example.org"].phone == "03-1234-5678"
