"""The audit log: append-only and hash-chained like the consent ledger.

Every staff read, export, change or deletion of personal data, every login and role change is
one ``AuditEvent``: who (``actor``), what (``action``, ``target``, ``detail``), whose data
(the people's address digests, in ``audit_subject``, entering the row hash through
``subjects_digest``), when and from where (``source``). Appending locks the chain's head row,
so positions never collide; ``verify`` names the first row that was altered, removed or
reordered, or a head that does not match (a removed tail). ``mailmag audit verify`` runs it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from subscriptions.consent import GENESIS_HASH, Verification, locked_head
from subscriptions.models import AuditEvent, AuditSubject, LedgerHead

CHAIN = "audit"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts, and from where: ``staff:3 ann@example.com`` from an IP, ``cli:root`` from a
    terminal, ``system`` for scheduled jobs."""

    name: str
    source: str = ""


SYSTEM = Actor("system", "scheduler")


def _digest_of(subjects: Iterable[str]) -> tuple[int, str]:
    """How many and a SHA-256 over them, one per line, in the order given (sorted)."""
    hasher = hashlib.sha256()
    count = 0
    for digest in subjects:
        hasher.update(digest.encode("ascii") + b"\n")
        count += 1
    return count, hasher.hexdigest()


def row_hash(event: AuditEvent) -> str:
    content = [
        event.seq,
        event.occurred_at.isoformat(timespec="microseconds"),
        event.actor,
        event.action,
        event.target,
        event.detail,
        event.source,
        event.subjects,
        event.subjects_digest,
        event.prev_hash,
    ]
    encoded = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def record(
    session: Session,
    actor: Actor,
    action: str,
    *,
    target: str = "",
    detail: dict[str, Any] | None = None,
    subjects: Iterable[str] = (),
    presorted: bool = False,
) -> AuditEvent:
    """Append one event in the caller's transaction (so it stands or falls with the act).

    ``subjects`` are address digests; pass ``presorted=True`` with an iterator already in
    ascending order without repeats (a large export streams them instead of holding them)."""
    stream: Iterable[str] = subjects if presorted else sorted(set(subjects))
    head = locked_head(session, CHAIN)
    event = AuditEvent(
        seq=head.seq + 1,
        occurred_at=utcnow(),
        actor=actor.name[:200],
        action=action[:64],
        target=target[:200],
        detail=json.dumps(detail or {}, ensure_ascii=False, sort_keys=True),
        source=actor.source[:100],
        subjects_digest="",
        prev_hash=head.last_hash,
        row_hash=f"pending-{head.seq + 1}",
    )
    session.add(event)
    session.flush()
    assert event.id is not None
    hasher = hashlib.sha256()
    batch: list[dict[str, Any]] = []
    count = 0
    for digest in stream:
        hasher.update(digest.encode("ascii") + b"\n")
        batch.append({"audit_id": event.id, "subject_digest": digest})
        count += 1
        if len(batch) >= 5000:
            session.execute(insert(AuditSubject), batch)
            batch = []
    if batch:
        session.execute(insert(AuditSubject), batch)
    event.subjects = count
    event.subjects_digest = hasher.hexdigest()
    event.row_hash = row_hash(event)
    head.seq = event.seq
    head.last_hash = event.row_hash
    session.add(event)
    session.add(head)
    return event


def verify(session: Session, *, batch: int = 1000) -> Verification:
    """Walk the whole log: each row's hash, its link to the one before, its subjects."""
    expected_prev = GENESIS_HASH
    checked = 0
    while True:
        rows = session.exec(
            select(AuditEvent)
            .where(col(AuditEvent.seq) > checked)
            .order_by(col(AuditEvent.seq))
            .limit(batch)
        ).all()
        if not rows:
            break
        for event in rows:
            problem = _check(session, event, checked + 1, expected_prev)
            if problem:
                return Verification(False, checked, problem, event.seq)
            expected_prev = event.row_hash
            checked += 1
    head = session.exec(select(LedgerHead).where(LedgerHead.name == CHAIN)).one_or_none()
    if head is None:
        return Verification(False, checked, "the audit log head is missing")
    if head.seq != checked or head.last_hash != expected_prev:
        return Verification(
            False,
            checked,
            f"the audit log head records {head.seq} rows but the log has {checked}: "
            "rows at the end were removed or the head was altered",
            checked + 1,
        )
    return Verification(True, checked)


def _check(session: Session, event: AuditEvent, expected_seq: int, expected_prev: str) -> str:
    if event.seq != expected_seq:
        return f"row {expected_seq} is missing (next row found is {event.seq})"
    if event.prev_hash != expected_prev:
        return f"row {event.seq} does not follow row {event.seq - 1} (removed or reordered)"
    if row_hash(event) != event.row_hash:
        return f"row {event.seq} was altered after it was written"
    subjects = session.exec(
        select(AuditSubject.subject_digest)
        .where(AuditSubject.audit_id == event.id)
        .order_by(col(AuditSubject.id))
    ).all()
    if _digest_of(subjects) != (event.subjects, event.subjects_digest):
        return f"row {event.seq}: the people it concerns were altered"
    return ""


def as_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "occurred_at": event.occurred_at.isoformat(timespec="microseconds"),
        "actor": event.actor,
        "source": event.source,
        "action": event.action,
        "target": event.target,
        "detail": json.loads(event.detail or "{}"),
        "subjects": event.subjects,
        "subjects_digest": event.subjects_digest,
        "prev_hash": event.prev_hash,
        "row_hash": event.row_hash,
    }


def events_about(session: Session, subject_digest: str) -> list[AuditEvent]:
    """Every audited act that concerned one person (for a disclosure request)."""
    return list(
        session.exec(
            select(AuditEvent)
            .join(AuditSubject, col(AuditSubject.audit_id) == AuditEvent.id)
            .where(AuditSubject.subject_digest == subject_digest)
            .order_by(col(AuditEvent.seq))
        ).all()
    )
