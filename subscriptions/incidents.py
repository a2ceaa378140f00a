"""The privacy officer's incident register (APPI Art. 26, Enforcement Rules Art. 7 and 8).

An incident links the people it affects (by address digest, so erased people count too) and
says whether it must be reported to the Personal Information Protection Commission, and by
when. It must be when any of these holds, for a leak, loss or damage or its possibility:

1. sensitive personal information (要配慮個人情報) is involved;
2. data whose misuse may cause financial damage is involved;
3. it may have been done for a wrongful purpose (unauthorised access, theft, an insider);
4. more than 1,000 people are affected.

The preliminary report (速報) is due promptly: here, three days after discovery, the middle of
the "about three to five days" the Commission's guidelines give. The final report (確報) is due
30 days after discovery, 60 days in case 3. The affected people must be told promptly too.
Every change is written to the audit log.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, text
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from mailer.clock import utcnow
from subscriptions import audit
from subscriptions.audit import Actor
from subscriptions.errors import InvalidInput
from subscriptions.models import (
    Incident,
    IncidentKind,
    IncidentSubject,
    Magazine,
    Subscriber,
    Subscription,
)

REPORTABLE_PEOPLE = 1000
PRELIMINARY = timedelta(days=3)
FINAL = timedelta(days=30)
FINAL_WRONGFUL = timedelta(days=60)

_LINK_MAGAZINE = """
    INSERT INTO incident_subject (incident_id, subscriber_id, subject_digest)
    SELECT :incident, p.id, p.address_digest
    FROM subscriber p JOIN subscription s ON s.subscriber_id = p.id
    WHERE s.magazine_id = :magazine
      AND NOT EXISTS (SELECT 1 FROM incident_subject i
                      WHERE i.incident_id = :incident AND i.subject_digest = p.address_digest)
    ORDER BY p.id
"""


@dataclass(frozen=True, slots=True)
class Assessment:
    people: int
    must_report: bool
    reasons: tuple[str, ...]
    preliminary_due: datetime | None
    final_due: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "people": self.people,
            "must_report": self.must_report,
            "reasons": list(self.reasons),
            "preliminary_report_due": (
                self.preliminary_due.isoformat() if self.preliminary_due else None
            ),
            "final_report_due": self.final_due.isoformat() if self.final_due else None,
        }


def open_incident(
    session: Session,
    actor: Actor,
    *,
    title: str,
    kind: IncidentKind,
    discovered_at: datetime,
    description: str = "",
    sensitive_data: bool = False,
    financial_harm: bool = False,
    unauthorised_access: bool = False,
) -> Incident:
    if not title.strip():
        raise InvalidInput("title", "give the incident a title")
    if discovered_at > utcnow():
        raise InvalidInput("discovered_at", "lies in the future")
    incident = Incident(
        title=title.strip()[:300],
        description=description,
        kind=kind,
        discovered_at=discovered_at,
        sensitive_data=sensitive_data,
        financial_harm=financial_harm,
        unauthorised_access=unauthorised_access,
        recorded_by=actor.name,
    )
    session.add(incident)
    session.flush()
    audit.record(session, actor, "incident_opened", target=f"incident:{incident.id}")
    return incident


def get(session: Session, incident_id: int) -> Incident:
    incident = session.get(Incident, incident_id)
    if incident is None:
        raise InvalidInput("incident", f"there is no incident #{incident_id}")
    return incident


def link_addresses(
    session: Session, actor: Actor, incident: Incident, digests: Iterable[str]
) -> int:
    """Link people by address digest (whether or not still subscribed); return how many
    were new to the incident."""
    wanted = sorted(set(digests))
    known = set(
        session.exec(
            select(IncidentSubject.subject_digest).where(IncidentSubject.incident_id == incident.id)
        ).all()
    )
    fresh = [d for d in wanted if d not in known]
    ids = dict(
        session.exec(
            select(Subscriber.address_digest, Subscriber.id).where(
                col(Subscriber.address_digest).in_(fresh)
            )
        ).all()
    )
    for digest in fresh:
        session.add(
            IncidentSubject(
                incident_id=incident.id or 0, subscriber_id=ids.get(digest), subject_digest=digest
            )
        )
    audit.record(
        session, actor, "incident_linked", target=f"incident:{incident.id}", subjects=fresh
    )
    return len(fresh)


def link_magazine(session: Session, actor: Actor, incident: Incident, slug: str) -> int:
    """Link everyone who ever subscribed to a magazine (its list leaked, say)."""
    magazine = session.exec(select(Magazine).where(Magazine.slug == slug)).first()
    if magazine is None:
        raise InvalidInput("magazine", f"there is no magazine {slug!r}")
    params = {"incident": incident.id, "magazine": magazine.id}
    with tempfile.TemporaryFile("w+", encoding="ascii") as linked:
        # Whom the act concerns, found before they are linked, for the audit row's subjects
        # (on disk, not in memory: a magazine's list can be long).
        for digest in session.exec(_new_of_magazine(incident.id or 0, magazine.id or 0)):
            linked.write(f"{digest}\n")
        result = session.execute(
            text(_LINK_MAGAZINE).bindparams(bindparam("incident"), bindparam("magazine")),
            params,
        )
        added = int(result.rowcount)  # type: ignore[attr-defined]
        linked.seek(0)
        audit.record(
            session,
            actor,
            "incident_linked",
            target=f"incident:{incident.id}",
            detail={"magazine": slug, "people": added},
            subjects=(line.strip() for line in linked),
            presorted=True,
        )
    return added


def _new_of_magazine(incident_id: int, magazine_id: int) -> SelectOfScalar[str]:
    """The magazine's people not yet linked to the incident, as the audit log takes its
    subjects: address digests in ascending order, streamed."""
    linked = select(IncidentSubject.id).where(
        IncidentSubject.incident_id == incident_id,
        IncidentSubject.subject_digest == Subscriber.address_digest,
    )
    return (
        select(Subscriber.address_digest)
        .join(Subscription, col(Subscription.subscriber_id) == Subscriber.id)
        .where(Subscription.magazine_id == magazine_id)
        .where(~linked.exists())
        .order_by(col(Subscriber.address_digest))
        .execution_options(yield_per=5000)
    )


def assess(session: Session, incident: Incident) -> Assessment:
    people = int(
        session.exec(
            select(func.count())
            .select_from(IncidentSubject)
            .where(IncidentSubject.incident_id == incident.id)
        ).one()
    )
    reasons = []
    if incident.sensitive_data:
        reasons.append("sensitive personal information is involved (Rules Art. 7(i))")
    if incident.financial_harm:
        reasons.append("misuse may cause financial damage (Rules Art. 7(ii))")
    if incident.unauthorised_access:
        reasons.append("it may have been done for a wrongful purpose (Rules Art. 7(iii))")
    if people > REPORTABLE_PEOPLE:
        reasons.append(f"{people} people are affected, more than 1,000 (Rules Art. 7(iv))")
    if not reasons:
        return Assessment(people, False, (), None, None)
    final = FINAL_WRONGFUL if incident.unauthorised_access else FINAL
    return Assessment(
        people,
        True,
        tuple(reasons),
        incident.discovered_at + PRELIMINARY,
        incident.discovered_at + final,
    )


def mark(session: Session, actor: Actor, incident: Incident, what: str) -> None:
    """Record a step: ``reported`` (to the Commission), ``notified`` (the people), ``closed``."""
    now = utcnow()
    if what == "reported":
        incident.reported_at = now
    elif what == "notified":
        incident.people_notified_at = now
    elif what == "closed":
        incident.closed_at = now
    else:
        raise InvalidInput("step", "one of reported, notified, closed")
    session.add(incident)
    audit.record(session, actor, f"incident_{what}", target=f"incident:{incident.id}")


def summary(session: Session, incident: Incident) -> dict[str, Any]:
    return {
        "id": incident.id,
        "title": incident.title,
        "kind": incident.kind.value,
        "discovered_at": incident.discovered_at.isoformat(),
        "recorded_by": incident.recorded_by,
        "sensitive_data": incident.sensitive_data,
        "financial_harm": incident.financial_harm,
        "unauthorised_access": incident.unauthorised_access,
        "reported_at": incident.reported_at.isoformat() if incident.reported_at else None,
        "people_notified_at": (
            incident.people_notified_at.isoformat() if incident.people_notified_at else None
        ),
        "closed_at": incident.closed_at.isoformat() if incident.closed_at else None,
        **assess(session, incident).as_dict(),
    }
