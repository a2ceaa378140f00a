"""Joint-use exports: a group company receives only what the notice promised it.

An export for one joint user contains only the data categories the registry lists for that
company, and only people whose latest joint-use consent is confirmed; for a company abroad,
also a confirmed consent to the transfer to its country given under a notice version that
described that country. Anyone else is left out and counted by reason. Asking for a field
the company may not receive, or for an unknown company, is refused. Every export writes a
transfer record and, per person, a transfer subject row.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass

from sqlmodel import Session, col, select

from subscriptions import consent, csvfiles
from subscriptions.errors import TransferRefused
from subscriptions.models import (
    ConsentAction,
    ConsentPurpose,
    NoticeVersion,
    Subscriber,
)
from subscriptions.registry import Registry
from subscriptions.transfers import record_transfer


@dataclass(frozen=True, slots=True)
class JointUseExport:
    company: str
    fields: tuple[str, ...]
    rows: list[dict[str, str]]
    left_out: dict[str, int]
    transfer_id: int

    def as_json(self) -> str:
        return json.dumps(
            {"company": self.company, "fields": self.fields, "people": self.rows},
            ensure_ascii=False,
            indent=2,
        )

    def as_csv(self) -> str:
        buffer = io.StringIO()
        writer = csvfiles.DictWriter(buffer, self.fields)
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()


def _allowed_fields(registry: Registry, company: str) -> tuple[str, ...]:
    user = registry.joint_user(company)
    if user is None:
        raise TransferRefused(f"{company!r} is not a joint user in the registry")
    fields = [registry.category(key).field for key in user.categories]
    return tuple(f for f in fields if f is not None)


def export_for(
    session: Session,
    registry: Registry,
    company: str,
    *,
    fields: tuple[str, ...] | None = None,
    triggered_by: str = "mailmag",
) -> JointUseExport:
    allowed = _allowed_fields(registry, company)
    wanted = fields or allowed
    for field in wanted:
        if field not in allowed:
            raise TransferRefused(f"{field} is not a category jointly used with {company}")
    user = registry.joint_user(company)
    assert user is not None
    abroad = user.country != registry.operator.country
    country = registry.country_names.get(user.country)
    notices = {n.content_hash: n.body for n in session.exec(select(NoticeVersion)).all()}
    rows: list[dict[str, str]] = []
    chosen: list[Subscriber] = []
    left_out: Counter[str] = Counter()
    for subscriber in session.exec(select(Subscriber).order_by(col(Subscriber.id))).all():
        latest: dict[tuple[ConsentPurpose, str], tuple[ConsentAction, str | None]] = {}
        for event in consent.history(session, subscriber_id=subscriber.id or 0):
            latest[(event.purpose, event.scope)] = (event.action, event.notice_hash)
        joint = latest.get((ConsentPurpose.joint_use, ""))
        if joint is None or joint[0] is not ConsentAction.confirmed:
            left_out["no confirmed consent to joint use"] += 1
            continue
        if abroad:
            transfer = latest.get((ConsentPurpose.foreign_transfer, user.country))
            if transfer is None or transfer[0] is not ConsentAction.confirmed:
                left_out[f"no confirmed consent to transfer to {user.country}"] += 1
                continue
            shown = notices.get(transfer[1] or "", "")
            if country is None or not (country.en in shown or country.ja in shown):
                left_out[f"the notice they saw did not describe {user.country}"] += 1
                continue
        rows.append({field: getattr(subscriber, field) or "" for field in wanted})
        chosen.append(subscriber)
    record = record_transfer(
        session,
        party=company,
        party_kind="joint_user",
        fields=wanted,
        people=[(p.id, p.address_digest) for p in chosen],
        purpose="joint use",
        legal_basis="joint use with consent (APPI Art. 27(5)(iii))"
        + ("; transfer abroad with consent (APPI Art. 28)" if abroad else ""),
        triggered_by=triggered_by,
    )
    assert record.id is not None
    return JointUseExport(company, wanted, rows, dict(left_out), record.id)
