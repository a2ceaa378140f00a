"""Recording a hand-off of personal data: one transfer record and, per person, a subject row
(so a disclosure request can say who received this person's data and when)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session

from subscriptions.models import TransferRecord, TransferSubject

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
