"""Exporting a magazine's subscribers: the privacy officer's tool, minimised and audited.

Only the fields asked for leave (``EXPORTABLE`` lists what may be asked), only for people in
the chosen subscription states, streamed row by row so a large list is never held in memory.
The export is one audit event whose subjects are everyone in the file (their address digests,
kept in a temporary file while the export streams), written in the same transaction.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from typing import TextIO

from sqlmodel import Session, col, select

from subscriptions import audit, csvfiles
from subscriptions.audit import Actor
from subscriptions.errors import InvalidInput
from subscriptions.models import Magazine, Subscriber, Subscription, SubscriptionStatus
from subscriptions.registry import PROFILE_FIELDS

EXPORTABLE = (*PROFILE_FIELDS, "locale", "status", "subscribed_at", "confirmed_at")
FORMATS = ("csv", "json")


def check_request(fields: Sequence[str], fmt: str) -> tuple[str, ...]:
    """The fields asked for, or ``InvalidInput`` naming what may be asked."""
    if fmt not in FORMATS:
        raise InvalidInput("format", f"choose one of {', '.join(FORMATS)}")
    chosen = tuple(dict.fromkeys(f.strip() for f in fields if f.strip()))
    if not chosen:
        raise InvalidInput("fields", f"name the fields to export, from {', '.join(EXPORTABLE)}")
    unknown = [f for f in chosen if f not in EXPORTABLE]
    if unknown:
        raise InvalidInput(
            "fields",
            f"{', '.join(unknown)} cannot be exported; choose from {', '.join(EXPORTABLE)}",
        )
    return chosen


def export_magazine(
    session: Session,
    actor: Actor,
    *,
    magazine: str,
    fields: Sequence[str],
    fmt: str,
    out: TextIO,
    statuses: Sequence[SubscriptionStatus] = (SubscriptionStatus.confirmed,),
) -> int:
    """Write the export to ``out`` and record it in the audit log; return the row count."""
    chosen = check_request(fields, fmt)
    found = session.exec(select(Magazine).where(Magazine.slug == magazine)).first()
    if found is None:
        raise InvalidInput("magazine", f"there is no magazine {magazine!r}")
    query = (
        select(Subscriber, Subscription)
        .join(Subscription, col(Subscription.subscriber_id) == Subscriber.id)
        .where(Subscription.magazine_id == found.id)
        .where(col(Subscription.status).in_(list(statuses)))
        .order_by(col(Subscriber.address_digest))
        .execution_options(yield_per=2000)
    )
    writer = _Writer(out, chosen, fmt)
    with tempfile.TemporaryFile("w+", encoding="ascii") as digests:
        for subscriber, subscription in session.exec(query):
            values = {
                "status": subscription.status.value,
                "subscribed_at": subscription.created_at.isoformat(),
                "confirmed_at": (
                    subscription.confirmed_at.isoformat() if subscription.confirmed_at else ""
                ),
            }
            writer.row({f: values[f] if f in values else getattr(subscriber, f) for f in chosen})
            digests.write(subscriber.address_digest + "\n")
        writer.close()
        digests.seek(0)
        audit.record(
            session,
            actor,
            "export",
            target=f"magazine:{magazine}",
            detail={
                "fields": list(chosen),
                "format": fmt,
                "statuses": [s.value for s in statuses],
                "rows": writer.count,
            },
            subjects=_lines(digests),
            presorted=True,
        )
    return writer.count


def _lines(source: TextIO) -> Iterator[str]:
    previous = ""
    for line in source:
        digest = line.strip()
        if digest != previous:  # one person, one subject, however the rows came
            yield digest
        previous = digest


class _Writer:
    def __init__(self, out: TextIO, fields: tuple[str, ...], fmt: str) -> None:
        self.out = out
        self.fmt = fmt
        self.count = 0
        self.csv = csvfiles.DictWriter(out, fields) if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writeheader()
        else:
            out.write("[")

    def row(self, values: dict[str, object]) -> None:
        clean = {k: "" if v is None else v for k, v in values.items()}
        if self.csv is not None:
            self.csv.writerow(clean)
        else:
            self.out.write(
                ("," if self.count else "") + "\n  " + json.dumps(clean, ensure_ascii=False)
            )
        self.count += 1

    def close(self) -> None:
        if self.csv is None:
            self.out.write("\n]\n")
