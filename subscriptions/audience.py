"""The opt-in store's side of the sending engine's protocols: who may receive an issue.

``StoreAudience`` expands an issue into one delivery per person with a confirmed
subscription to its magazine whose address is not suppressed (one ``INSERT ... SELECT``,
idempotent through the unique (issue, subscriber) key), hands the worker a batch's
recipients re-checked at that moment and cut down to the merge fields the issue uses, and
reports withdrawals from the consent ledger. ``StorePreparer`` builds an issue's prepared
message from the store's magazine, the registries and the settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import bindparam, insert, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col, select

from mailer.audience import Expansion, IssueAudience, Recipient
from mailer.clock import utcnow
from mailer.columns import UTCDateTime
from mailer.compose import IssueContent, PreparedIssue, SenderProfile
from mailer.errors import MailerError, NotCompliant
from mailer.models import Issue
from mailer.signing import DKIMSigner
from subscriptions.db import refresh_statistics
from subscriptions.i18n import gettext_for
from subscriptions.models import (
    ConsentAction,
    ConsentEvent,
    ConsentPurpose,
    Magazine,
    TransferRecord,
    localised,
)
from subscriptions.paths import TEMPLATES_DIR
from subscriptions.registry import Registry

_EXPAND = """
    INSERT INTO delivery
        (issue_id, subscriber_id, processor, status, attempts, next_attempt_at, fence)
    SELECT :issue_id, s.subscriber_id, :processor, 'queued', 0, :now, 0
    FROM subscription s
    JOIN subscriber p ON p.id = s.subscriber_id
    WHERE s.magazine_id = :magazine_id AND s.status = 'confirmed'
      AND s.subscriber_id > :after AND p.id > :after {upto}
      AND NOT EXISTS (SELECT 1 FROM suppression x WHERE x.address_digest = p.address_digest)
      AND ({assigned})
    ORDER BY s.subscriber_id
    ON CONFLICT (issue_id, subscriber_id) DO NOTHING
"""
# The last subscriber of a chunk: a seek in the audience index (magazine, status, subscriber).
_CHUNK_END = text("""
    SELECT subscriber_id FROM subscription
    WHERE magazine_id = :magazine_id AND status = 'confirmed' AND subscriber_id > :after
    ORDER BY subscriber_id LIMIT 1 OFFSET :skip
""")
_HANDED_OVER = text("""
    SELECT processor, count(*) FROM delivery
    WHERE issue_id = :issue_id AND processor IS NOT NULL
    GROUP BY processor ORDER BY processor
""")


def _like(pattern: str) -> str:
    """A rule's domain as a LIKE pattern on the address (patterns hold only [a-z0-9.-])."""
    return f"%{pattern}" if pattern.startswith(".") else f"%@{pattern}"


def assignments(registry: Registry, route: str | None) -> list[tuple[str | None, str]]:
    """(processor, SQL condition on ``p.email``) per processor of the route; the conditions
    are disjoint and cover everyone, so each recipient goes to exactly one processor."""
    if route is None or registry.processor(route) is not None:
        return [(route, "1 = 1")]
    split = registry.split_route(route)
    if split is None:
        raise NotCompliant(f"there is no processor or route {route!r}")
    taken: list[str] = []
    conditions: dict[str, list[str]] = {}
    for rule in split.rules:
        matches = " OR ".join(f"lower(p.email) LIKE '{_like(d)}'" for d in rule.domains)
        earlier = " AND ".join(f"NOT ({t})" for t in taken) or "1 = 1"
        conditions.setdefault(rule.processor, []).append(f"(({matches}) AND {earlier})")
        taken.append(matches)
    rest = " AND ".join(f"NOT ({t})" for t in taken)
    conditions.setdefault(split.default, []).append(f"({rest})")
    return [(processor, " OR ".join(parts)) for processor, parts in conditions.items()]


_RECIPIENTS = """
    SELECT p.id, p.email, p.name, p.company, p.department, p.title
    FROM subscriber p
    JOIN subscription s ON s.subscriber_id = p.id
    WHERE s.subscriber_id IN :ids AND s.magazine_id = :magazine_id AND s.status = 'confirmed'
      AND NOT EXISTS (SELECT 1 FROM suppression x WHERE x.address_digest = p.address_digest)
"""
_MERGE_FIELDS = ("name", "company", "department", "title", "email")


class StoreAudience:
    def __init__(self, engine: Engine, registry: Registry) -> None:
        self.engine = engine
        self.registry = registry
        self._slugs: dict[str, int] = {}

    def expand(
        self, conn: Connection, audience: IssueAudience, after: int, limit: int
    ) -> Expansion:
        """One ``INSERT ... SELECT`` per processor of the route over the chunk's range of
        subscriber ids, so each recipient goes to exactly one processor. The statement is
        parsed in SQLite's "INSERT ... SELECT ... ON CONFLICT" form; the ORDER BY keeps its
        grammar unambiguous there and the delivery order stable. The last chunk records one
        transfer record per processor with the issue's whole count, and refreshes the
        planner's statistics of a large queue."""
        params = {
            "issue_id": audience.issue_id,
            "magazine_id": audience.magazine_id,
            "after": after,
            "now": utcnow(),
        }
        last = conn.execute(_CHUNK_END, {**params, "skip": max(limit, 1) - 1}).scalar()
        # The chunk's range on both tables: PostgreSQL otherwise joins the chunk's
        # subscriptions to a scan of every subscriber, on every chunk.
        upto = "" if last is None else "AND s.subscriber_id <= :upto AND p.id <= :upto"
        queued = 0
        for processor, condition in assignments(self.registry, audience.route):
            statement = text(_EXPAND.format(upto=upto, assigned=condition)).bindparams(
                bindparam("now", type_=UTCDateTime())
            )
            result = conn.execute(statement, {**params, "processor": processor, "upto": last})
            queued += int(result.rowcount)
        if last is None:
            self._record_hand_offs(conn, audience)
        if queued and (after == 0 or last is None):
            # The planner must not plan the workers' claims and reads for an empty queue (see
            # refresh_statistics): after the first chunk, and the last of several.
            refresh_statistics(conn, "delivery")
        return Expansion(queued, last)

    def _record_hand_offs(self, conn: Connection, audience: IssueAudience) -> None:
        purpose = conn.execute(
            select(Magazine.purpose).where(Magazine.id == audience.magazine_id)
        ).scalar()
        fields = ",".join(sorted(audience.fields | {"email"}))
        for processor, count in conn.execute(_HANDED_OVER, {"issue_id": audience.issue_id}):
            conn.execute(
                insert(TransferRecord),
                {
                    "party": processor,
                    "party_kind": "processor",
                    "issue_id": audience.issue_id,
                    "fields": fields,
                    "people": count,
                    "purpose": purpose or "",
                    "legal_basis": "entrustment (APPI Art. 27(5)(i))",
                },
            )

    def recipients(self, audience: IssueAudience, subscriber_ids: Iterable[int]) -> list[Recipient]:
        ids = list(subscriber_ids)
        if not ids:
            return []
        statement = text(_RECIPIENTS).bindparams(bindparam("ids", expanding=True))
        with self.engine.connect() as conn:
            rows = conn.execute(statement, {"magazine_id": audience.magazine_id, "ids": ids}).all()
        wanted = [k for k in audience.fields if k in _MERGE_FIELDS]
        return [
            Recipient(
                subscriber_id=row.id,
                address=row.email,
                fields={k: getattr(row, k) or "" for k in wanted},
            )
            for row in rows
        ]

    def _load_magazines(self, session: Session) -> None:
        # Slugs are permanent, so the map only ever grows: reload when one is missing.
        self._slugs = {m.slug: m.id or 0 for m in session.exec(select(Magazine)).all()}

    def withdrawn_since(self, cursor: int) -> tuple[int, set[tuple[int, int]]]:
        with Session(self.engine) as session:
            if cursor < 0:
                latest = session.exec(
                    select(col(ConsentEvent.seq)).order_by(col(ConsentEvent.seq).desc()).limit(1)
                ).first()
                return int(latest or 0), set()
            rows = session.exec(
                select(ConsentEvent.seq, ConsentEvent.subscriber_id, ConsentEvent.scope)
                .where(col(ConsentEvent.seq) > cursor)
                .where(ConsentEvent.action == ConsentAction.withdrawn)
                .where(ConsentEvent.purpose == ConsentPurpose.magazine)
                .order_by(col(ConsentEvent.seq))
            ).all()
            latest_seq = session.exec(
                select(col(ConsentEvent.seq)).order_by(col(ConsentEvent.seq).desc()).limit(1)
            ).first()
            if rows and any(scope not in self._slugs for _, _, scope in rows):
                self._load_magazines(session)
        withdrawn = {
            (subscriber_id, self._slugs.get(scope, 0))
            for _, subscriber_id, scope in rows
            if subscriber_id is not None
        }
        return int(latest_seq or cursor), withdrawn


@dataclass(frozen=True, slots=True)
class SenderIdentity:
    name: str
    address: str
    bounce_domain: str
    list_id_domain: str
    link_base: str


class StorePreparer:
    """Builds ``PreparedIssue``s from the store, the registries and the sender identity."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        identity: SenderIdentity,
        signer: DKIMSigner | None = None,
    ) -> None:
        self.engine = engine
        self.signer = signer
        self.registry = registry
        self.identity = identity
        self.layout = Environment(
            loader=FileSystemLoader(TEMPLATES_DIR), autoescape=select_autoescape(["html"])
        )

    def prepare(self, issue: Issue) -> tuple[PreparedIssue, IssueAudience]:
        with Session(self.engine) as session:
            magazine = session.get(Magazine, issue.magazine_id)
        if magazine is None:
            raise MailerError(f"there is no magazine {issue.magazine_id}")
        content = IssueContent(
            issue_id=issue.id or 0,
            subject=issue.subject,
            preheader=issue.preheader,
            html_body=issue.html_body,
            text_body=issue.text_body,
            locale=issue.locale,
            magazine_slug=magazine.slug,
            magazine_title=localised(magazine.title, issue.locale),
        )
        prepared = PreparedIssue(
            content,
            self.sender(issue.locale),
            self.layout,
            gettext_for(issue.locale),
            self.signer,
        )
        self.check_route(issue.route, prepared.fields)
        audience = IssueAudience(issue.id or 0, issue.magazine_id, prepared.fields, issue.route)
        return prepared, audience

    def check_route(self, route: str | None, fields: frozenset[str]) -> None:
        """Refuse an issue whose processors may not receive what its template uses."""
        if route is None:
            return
        keys = self.registry.route_processors(route)
        if keys is None:
            raise NotCompliant(f"there is no processor or route {route!r}")
        for key in keys:
            processor = self.registry.processor(key)
            assert processor is not None  # the registry checks a route's processors exist
            reason = processor.unusable(utcnow().date())
            if reason:
                raise NotCompliant(f"processor {processor.name} may receive nothing: {reason}")
            if processor.smtp is None and not processor.pull:
                raise NotCompliant(f"processor {processor.name} has no SMTP route or pull API")
            for field in sorted(fields | {"email"}):
                if field not in processor.fields:
                    raise NotCompliant(
                        f"the template uses subscriber.{field}, which processor "
                        f"{processor.name} may not receive"
                    )

    def sender(self, locale: str) -> SenderProfile:
        operator = self.registry.operator
        contact = self.registry.contact_point
        return SenderProfile(
            name=self.identity.name,
            address=self.identity.address,
            operator=operator.name(locale),
            postal_address=operator.postal_address(locale),
            contact=f"{contact.name(locale)} <{contact.email}> {contact.phone}",
            bounce_domain=self.identity.bounce_domain,
            list_id_domain=self.identity.list_id_domain,
            link_base=self.identity.link_base,
        )
