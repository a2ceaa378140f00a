"""Importing subscribers from CSV: streaming, idempotent, and never against anyone's wishes.

The file is read row by row and written in chunks (one transaction each), so a million rows
never sit in memory and an interrupted import resumes where it stopped when run again.

Columns (a header row is required; names are case-insensitive):

- ``email`` (required); ``name``, ``company``, ``department``, ``title``, ``phone``,
  ``locale`` (``en``/``ja``) optional;
- evidence of consent: ``consented_at`` (ISO 8601; a time without zone is taken as UTC),
  ``consent_method`` (how: "paper form at the 2026 seminar") and ``notice_hash`` (the
  SHA-256 of the notice the person saw, stored by ``--notice-file`` or already known).

A row with all three evidence columns, in a batch given a legal basis (``--basis``), comes in
confirmed: its ledger rows say when, how and under which notice the person agreed, and point
at the import batch. Any other row comes in pending, as if the person had asked but not yet
confirmed: it receives nothing until the person confirms (``--confirm-by-mail`` sends them the
usual confirmation request) and is purged with other unconfirmed sign-ups.

Never imported: a suppressed or erased address, or anyone whose subscription to the magazine
ended (unsubscribed, bounced, complained). Existing subscriptions stay as they are. Each
problem is reported with its line number and reason; nothing else about the row is kept.
A file is recognised by its SHA-256: importing the same file again changes nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from subscriptions import audit, consent
from subscriptions.addresses import normalise_address
from subscriptions.audit import Actor
from subscriptions.db import for_writing, refresh_statistics, table_of
from subscriptions.errors import InvalidInput
from subscriptions.models import (
    ConsentAction,
    ConsentChannel,
    ConsentEvent,
    ConsentPurpose,
    ImportBatch,
    Magazine,
    NoticeVersion,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
)
from subscriptions.profile import PROFILE, clean_line, clean_profile
from subscriptions.subscribing import OptIn
from subscriptions.tokens import new_token_key

EVIDENCE = ("consented_at", "consent_method", "notice_hash")
COLUMNS = ("email", *PROFILE, "locale", *EVIDENCE)
HEX64 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 2000


@dataclass
class Report:
    batch_id: int
    rows: int = 0
    confirmed: int = 0
    pending: int = 0
    unchanged: int = 0
    refused: int = 0
    already_imported: bool = False
    problems: list[tuple[int, str]] = field(default_factory=list)  # kept to the first 10,000

    def problem(self, line: int, reason: str) -> None:
        self.refused += 1
        if len(self.problems) < 10_000:
            self.problems.append((line, reason))

    @property
    def counts(self) -> dict[str, int]:
        return {
            "rows": self.rows,
            "confirmed": self.confirmed,
            "pending": self.pending,
            "unchanged": self.unchanged,
            "refused": self.refused,
        }


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    email: str
    digest: str
    profile: dict[str, str | None]
    locale: str
    consented_at: datetime | None
    method: str
    notice_hash: str | None

    @property
    def has_evidence(self) -> bool:
        return self.consented_at is not None and bool(self.method) and bool(self.notice_hash)


def file_hash(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


class Importer:
    def __init__(self, engine: Engine, optin: OptIn) -> None:
        self.engine = engine
        self.optin = optin

    def run(
        self,
        path: Path,
        *,
        magazine: str,
        actor: Actor,
        basis: str = "",
        notice_file: Path | None = None,
        confirm_by_mail: bool = False,
        progress: Callable[[int], None] = lambda _: None,
    ) -> Report:
        """Import ``path`` into ``magazine``; ``progress`` gets the bytes read so far."""
        with path.open(encoding="utf-8-sig", newline="", errors="replace") as handle:
            _header(csv.DictReader(handle))  # refuse a bad file before writing anything
        digest = file_hash(path)
        with Session(for_writing(self.engine), expire_on_commit=False) as session:
            magazine_row = session.exec(select(Magazine).where(Magazine.slug == magazine)).first()
            if magazine_row is None:
                raise InvalidInput("magazine", f"there is no magazine {magazine!r}")
            notices = self._notices(session, notice_file)
            found = session.exec(
                select(ImportBatch).where(ImportBatch.file_sha256 == digest)
            ).first()
            if found is not None and found.finished_at is not None:
                return Report(found.id or 0, already_imported=True)
            if found is None:
                found = ImportBatch(
                    file_sha256=digest,
                    file_name=path.name[:300],
                    magazine=magazine,
                    legal_basis=basis.strip()[:300],
                    triggered_by=actor.name,
                )
                session.add(found)
                session.commit()
        assert found.id is not None
        assert magazine_row.id is not None
        report = Report(found.id)
        with path.open("rb") as binary:
            handle = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
            chunks = self._chunks(handle, report, notices, bool(found.legal_basis))
            try:
                for chunk in chunks:
                    self._write(chunk, magazine_row, found.id, report, confirm_by_mail)
                    progress(binary.tell())
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    "file", f"not UTF-8 near byte {binary.tell() - len(exc.object) + exc.start}"
                ) from None
            except csv.Error as exc:
                raise InvalidInput("file", f"after line {report.rows}: {exc}") from None
        refresh_statistics(self.engine, "subscriber", "subscription", "consent_event")
        with Session(for_writing(self.engine)) as session:
            stored = session.get(ImportBatch, found.id)
            assert stored is not None
            stored.finished_at = utcnow()
            stored.counts = report.counts
            session.add(stored)
            audit.record(
                session,
                actor,
                "import",
                target=f"magazine:{magazine}",
                detail={"batch": found.id, "sha256": digest, **report.counts},
                subjects=self._brought_in(session, found.id),
                presorted=True,
            )
            session.commit()
        return report

    @staticmethod
    def _brought_in(session: Session, batch_id: int) -> Iterator[str]:
        """The people this batch subscribed (confirmed or pending), over every run of it
        (an interrupted import resumes), as sorted address digests streamed from their
        consent rows: one scan of the ledger per import, none of them held in memory."""
        query = (
            select(ConsentEvent.subject_digest)
            .where(ConsentEvent.import_batch_id == batch_id)
            .distinct()
            .order_by(col(ConsentEvent.subject_digest))
            .execution_options(yield_per=5000)
        )
        yield from session.exec(query)

    # --- reading --------------------------------------------------------------------------------

    def _notices(self, session: Session, notice_file: Path | None) -> set[str]:
        """Hashes of notices rows may cite: those stored, plus ``notice_file`` (stored now)."""
        if notice_file is not None:
            body = notice_file.read_text(encoding="utf-8")
            content_hash = hashlib.sha256(body.encode("utf-8")).hexdigest()
            exists = session.exec(
                select(NoticeVersion.id).where(NoticeVersion.content_hash == content_hash)
            ).first()
            if exists is None:
                session.add(NoticeVersion(content_hash=content_hash, locale="ja", body=body))
                session.commit()
        return set(session.exec(select(NoticeVersion.content_hash)).all())

    def _chunks(
        self,
        handle: TextIO,
        report: Report,
        notices: set[str],
        has_basis: bool,
    ) -> Iterator[list[Row]]:
        reader = csv.DictReader(handle)
        seen: set[str] = set()
        header = _header(reader)
        chunk: list[Row] = []
        for raw in reader:
            report.rows += 1
            line = reader.line_num
            values = {header[k]: (v or "").strip() for k, v in raw.items() if k is not None}
            if None in raw:
                report.problem(line, "more fields than the header has")
                continue
            try:
                row = self._row(line, values, notices, has_basis)
            except InvalidInput as exc:
                report.problem(line, str(exc))
                continue
            if row.digest in seen:
                report.problem(line, "the address appears earlier in the file")
                continue
            seen.add(row.digest)
            chunk.append(row)
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
                seen.clear()  # later repeats find the person stored: counted as unchanged
        if chunk:
            yield chunk

    def _row(self, line: int, values: dict[str, str], notices: set[str], has_basis: bool) -> Row:
        email = normalise_address(values.get("email", ""))
        profile = clean_profile({name: values.get(name) for name in PROFILE})
        locale = values.get("locale") or "ja"
        if locale not in ("en", "ja"):
            raise InvalidInput("locale", "must be en or ja")
        when = values.get("consented_at") or ""
        consented_at = _when(when) if when else None
        notice_hash = (values.get("notice_hash") or "").lower() or None
        if notice_hash is not None and notice_hash not in notices:
            raise InvalidInput(
                "notice_hash", "no stored notice has this hash (store it with --notice-file)"
            )
        method = clean_line("consent_method", (values.get("consent_method") or "")[:400], limit=400)
        if any(v for v in (when, method, notice_hash)) and not all((when, method, notice_hash)):
            raise InvalidInput("consent", "give consented_at, consent_method and notice_hash")
        if consented_at is not None and not has_basis:
            consented_at = None  # evidence without a batch legal basis: comes in pending
        return Row(
            line,
            email,
            self.optin.hasher.digest(email),
            profile,
            locale,
            consented_at,
            method,
            notice_hash,
        )

    # --- writing --------------------------------------------------------------------------------

    def _write(
        self,
        chunk: list[Row],
        magazine: Magazine,
        batch_id: int,
        report: Report,
        confirm_by_mail: bool,
    ) -> None:
        digests = [r.digest for r in chunk]
        now = utcnow()
        with Session(for_writing(self.engine)) as session:
            blocked = set(
                session.exec(
                    select(Suppression.address_digest).where(
                        col(Suppression.address_digest).in_(digests)
                    )
                ).all()
            )
            existing = {
                d: (sid, status)
                for d, sid, status in session.execute(
                    text(
                        "SELECT p.address_digest, p.id, s.status FROM subscriber p "
                        "LEFT JOIN subscription s ON s.subscriber_id = p.id "
                        "AND s.magazine_id = :magazine WHERE p.address_digest IN :digests"
                    ).bindparams(bindparam("digests", expanding=True)),
                    {"magazine": magazine.id, "digests": digests},
                ).all()
            }
            new_people: list[Row] = []
            new_subscriptions: list[tuple[Row, int]] = []
            for row in chunk:
                if row.digest in blocked:
                    report.problem(row.line, "the address is suppressed or erased: not imported")
                    continue
                if row.digest in existing:
                    subscriber_id, status = existing[row.digest]
                    if status is None:
                        new_subscriptions.append((row, subscriber_id))
                    elif status in ("pending", "confirmed"):
                        report.unchanged += 1
                    else:
                        report.problem(
                            row.line, f"the person's subscription ended ({status}): not imported"
                        )
                    continue
                new_people.append(row)
            if new_people:
                table = table_of(Subscriber)
                ids = (
                    session.connection()
                    .execute(
                        table.insert().returning(table.c.id, table.c.address_digest),
                        [
                            {
                                "email": r.email,
                                "address_digest": r.digest,
                                "token_key": new_token_key(),
                                "locale": r.locale,
                                "bounce_score": 0.0,
                                "created_at": now,
                                "updated_at": now,
                                **r.profile,
                            }
                            for r in new_people
                        ],
                    )
                    .all()
                )
                by_digest = {d: i for i, d in ids}
                new_subscriptions += [(r, by_digest[r.digest]) for r in new_people]
            self._subscribe(session, new_subscriptions, magazine, batch_id, now, report)
            if confirm_by_mail:
                pending = [sid for r, sid in new_subscriptions if r.consented_at is None]
                for subscriber in session.exec(
                    select(Subscriber).where(col(Subscriber.id).in_(pending))
                ).all():
                    self.optin.ask_to_confirm(session, subscriber)
            session.commit()

    def _subscribe(
        self,
        session: Session,
        rows: list[tuple[Row, int]],
        magazine: Magazine,
        batch_id: int,
        now: datetime,
        report: Report,
    ) -> None:
        if not rows:
            return
        subscriptions: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for row, subscriber_id in sorted(rows, key=lambda pair: pair[0].line):
            confirmed = row.consented_at is not None
            at = row.consented_at or now
            subscriptions.append(
                {
                    "subscriber_id": subscriber_id,
                    "magazine_id": magazine.id,
                    "status": SubscriptionStatus.confirmed
                    if confirmed
                    else SubscriptionStatus.pending,
                    "created_at": at,
                    "confirmed_at": at if confirmed else None,
                    "ended_at": None,
                }
            )
            actions = [ConsentAction.granted] + ([ConsentAction.confirmed] if confirmed else [])
            for action in actions:
                events.append(
                    {
                        "subscriber_id": subscriber_id,
                        "subject_digest": row.digest,
                        "purpose": ConsentPurpose.magazine.value,
                        "scope": magazine.slug,
                        "action": action.value,
                        "channel": ConsentChannel.import_.value,
                        "notice_hash": row.notice_hash if confirmed else None,
                        "occurred_at": at,
                        "user_agent": f"import: {row.method}" if confirmed else "import",
                        "import_batch_id": batch_id,
                    }
                )
            if confirmed:
                report.confirmed += 1
            else:
                report.pending += 1
        session.connection().execute(table_of(Subscription).insert(), subscriptions)
        consent.append_many(session, events)


def _header(reader: csv.DictReader[str]) -> dict[str, str]:
    """Column names as given, mapped to the names mailmag knows; ``InvalidInput`` if unusable."""
    if reader.fieldnames is None:
        raise InvalidInput("file", "the file is empty: a header row is required")
    header = {name: (name or "").strip().lower() for name in reader.fieldnames}
    if "email" not in header.values():
        raise InvalidInput("file", "the header has no email column")
    unknown = sorted(set(header.values()) - set(COLUMNS) - {""})
    if unknown:
        raise InvalidInput("file", f"unknown columns {unknown}; known: {', '.join(COLUMNS)}")
    return header


def _when(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            "consented_at", "not an ISO 8601 time (2026-04-01T10:00:00+09:00)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    parsed = parsed.astimezone(UTC)
    if parsed > utcnow():
        raise InvalidInput("consented_at", "lies in the future")
    return parsed
