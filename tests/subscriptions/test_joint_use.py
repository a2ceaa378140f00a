"""Joint-use exports hand a group company only its categories, only for people who agreed,
and for a company abroad only with consent to that country under a notice describing it."""

from __future__ import annotations

import csv
import io

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from subscriptions.consent import Evidence
from subscriptions.db import for_writing
from subscriptions.errors import TransferRefused
from subscriptions.joint_use import export_for
from subscriptions.models import (
    ConsentChannel,
    ConsentPurpose,
    NoticeVersion,
    Subscriber,
    TransferRecord,
    TransferSubject,
)
from subscriptions.notice import record_notice
from subscriptions.runtime import Runtime

CANARY_PHONE = "+81-3-CANARY"


def people(app: FastAPI, engine: Engine) -> None:
    """ann: joint use + transfer abroad; ben: joint use only; cat: nothing;
    dan: both, but under an old notice that did not describe the USA."""
    runtime: Runtime = app.state.runtime
    lifecycle = runtime.optin.lifecycle
    with Session(for_writing(engine)) as session:
        current = record_notice(session, runtime.optin.notices.current("en")).content_hash
        old = NoticeVersion(content_hash="0" * 63 + "1", locale="en", body="An older notice.")
        session.add(old)
        for name, joint, abroad, notice in (
            ("ann", True, True, current),
            ("ben", True, False, current),
            ("cat", False, False, current),
            ("dan", True, True, old.content_hash),
        ):
            email = f"{name}@example.org"
            person = Subscriber(
                email=email,
                name=name.title(),
                company=f"{name} Co",
                phone=CANARY_PHONE,
                address_digest=runtime.optin.hasher.digest(email),
            )
            session.add(person)
            session.flush()
            evidence = Evidence(ConsentChannel.web_form, "192.0.2.1", "test", notice)
            if joint:
                lifecycle.grant_confirmed(session, person, ConsentPurpose.joint_use, evidence)
            if abroad:
                for code in ("US", "SG"):
                    lifecycle.grant_confirmed(
                        session, person, ConsentPurpose.foreign_transfer, evidence, scope=code
                    )
        session.commit()


def test_a_company_abroad_gets_its_categories_for_people_who_agreed_to_that_country(
    app: FastAPI, engine: Engine
) -> None:
    people(app, engine)
    runtime: Runtime = app.state.runtime
    with Session(for_writing(engine)) as session:
        export = export_for(session, runtime.registry, "sakura-america")
        session.commit()
    assert [row["email"] for row in export.rows] == ["ann@example.org"]
    assert set(export.fields) == {"company", "department", "title", "name", "email"}
    text = export.as_csv() + export.as_json()
    assert CANARY_PHONE not in text  # the phone is not a category shared with the USA
    assert "ben@" not in text
    assert "dan@" not in text
    assert export.left_out == {
        "no confirmed consent to transfer to US": 1,
        "no confirmed consent to joint use": 1,
        "the notice they saw did not describe US": 1,
    }
    with Session(engine) as session:
        record = session.get(TransferRecord, export.transfer_id)
        assert record is not None
        assert (record.party, record.party_kind, record.people) == (
            "sakura-america",
            "joint_user",
            1,
        )
        assert "Art. 28" in record.legal_basis
        [subject] = session.exec(select(TransferSubject)).all()
        ann = session.exec(select(Subscriber).where(Subscriber.email == "ann@example.org")).one()
        assert subject.subscriber_id == ann.id


def test_a_company_at_home_gets_everyone_who_agreed_to_joint_use(
    app: FastAPI, engine: Engine
) -> None:
    people(app, engine)
    runtime: Runtime = app.state.runtime
    with Session(for_writing(engine)) as session:
        export = export_for(session, runtime.registry, "sakura-solutions-jp")
        session.commit()
    rows = list(csv.DictReader(io.StringIO(export.as_csv())))
    assert sorted(r["email"] for r in rows) == [
        "ann@example.org",
        "ben@example.org",
        "dan@example.org",
    ]
    assert all(r["phone"] == f"'{CANARY_PHONE}" for r in rows)  # shared in Japan; as text


@pytest.mark.parametrize(
    ("company", "fields", "message"),
    [
        ("sakura-america", ("email", "phone"), "phone is not a category jointly used"),
        ("nobody-inc", None, "'nobody-inc' is not a joint user"),
    ],
)
def test_asking_for_more_than_the_notice_promised_is_refused(
    company: str, fields: tuple[str, ...] | None, message: str, app: FastAPI, engine: Engine
) -> None:
    people(app, engine)
    runtime: Runtime = app.state.runtime
    with Session(for_writing(engine)) as session, pytest.raises(TransferRefused, match=message):
        export_for(session, runtime.registry, company, fields=fields)
    with Session(engine) as session:
        assert session.exec(select(TransferRecord)).all() == []


def test_transfer_records_are_purged_after_their_retention_and_not_before(
    app: FastAPI, engine: Engine
) -> None:
    from datetime import timedelta

    from mailer.clock import utcnow
    from subscriptions import maintenance

    people(app, engine)
    runtime: Runtime = app.state.runtime
    with Session(for_writing(engine)) as session:
        old = export_for(session, runtime.registry, "sakura-solutions-jp")
        export_for(session, runtime.registry, "sakura-solutions-jp")
        record = session.get(TransferRecord, old.transfer_id)
        assert record is not None
        record.created_at = utcnow() - timedelta(days=3 * 365 + 2)
        session.add(record)
        session.commit()
    purged = maintenance.run_once(engine, runtime.optin, timedelta(hours=2))
    assert purged.transfer_records == 1
    with Session(engine) as session:
        assert len(session.exec(select(TransferRecord)).all()) == 1
        assert len(session.exec(select(TransferSubject)).all()) == 3
