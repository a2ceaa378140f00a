"""Recording a hand-off of personal data: one transfer record and, per person, a subject row
(so a disclosure request can say who received this person's data and when)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, select

from mailer.models import Delivery
from subscriptions.models import Subscriber, TransferRecord, TransferSubject

Subject = tuple[int | None, str]  # (subscriber id, address digest): enough to find them later


def record_transfer(
    session: Session,
    *,
    party: str,
    party_kind: str,
    fields: Sequence[str],
    people: Sequence[Subject],
    issue_id: int | None = None,
    purpose: str,
    legal_basis: str,
    triggered_by: str,
) -> TransferRecord:
    record = TransferRecord(
        party=party[:64],
        party_kind=party_kind,
        fields=",".join(fields),
        people=len(people),
        purpose=purpose[:64],
        legal_basis=legal_basis[:200],
        triggered_by=triggered_by[:100],
        issue_id=issue_id,
    )
    session.add(record)
    session.flush()
    assert record.id is not None
    for subscriber_id, digest in people:
        session.add(
            TransferSubject(
                transfer_id=record.id, subscriber_id=subscriber_id, subject_digest=digest
            )
        )
    return record


def transfers_of(session: Session, subscriber: Subscriber) -> list[dict[str, Any]]:
    """Who received this person's data: joint-use exports naming them, and the processors
    that sent them issues."""
    named = session.exec(
        select(TransferRecord)
        .join(TransferSubject, col(TransferSubject.transfer_id) == TransferRecord.id)
        .where(TransferSubject.subject_digest == subscriber.address_digest)
    ).all()
    sent = session.exec(
        select(TransferRecord)
        .join(Delivery, col(Delivery.issue_id) == TransferRecord.issue_id)
        .where(
            Delivery.subscriber_id == subscriber.id,
            col(Delivery.processor).is_not(None),
            col(TransferRecord.party) == Delivery.processor,
        )
    ).all()
    seen: dict[int, TransferRecord] = {r.id or 0: r for r in [*named, *sent]}
    return [
        {
            "party": r.party,
            "party_kind": r.party_kind,
            "fields": r.fields.split(",") if r.fields else [],
            "purpose": r.purpose,
            "legal_basis": r.legal_basis,
            "at": r.created_at.isoformat(),
        }
        for _id, r in sorted(seen.items())
    ]
