"""The consent ledger: append-only, hash-chained evidence of every grant and withdrawal.

Each ``ConsentEvent`` row has a position ``seq`` (1, 2, 3... without gaps), the hash of the
row before it, and its own hash over its content and that previous hash. Appending locks the
chain's ``LedgerHead`` row (``FOR UPDATE`` on PostgreSQL; SQLite transactions are already
serialised by ``BEGIN IMMEDIATE``), so two appends can never claim the same position.

The personal fields (IP address, user agent) enter the row hash only through
``personal_digest``. Erasure blanks them and sets ``personal_erased``; the chain still
verifies, and everything else about the event stays provable.

``verify`` walks the chain in order and names the first row that was altered, removed,
inserted or reordered, or a head that does not match the last row (a removed tail).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, insert, text, update
from sqlalchemy.engine import Connection, Result
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from mailer.columns import stored_utc
from subscriptions.db import table_of
from subscriptions.models import (
    ConsentAction,
    ConsentChannel,
    ConsentEvent,
    ConsentPurpose,
    LedgerHead,
    NoticeVersion,
    Subscriber,
)

CHAIN = "consent"
GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class Evidence:
    """How a consent event came about: when, through what, and from where."""

    channel: ConsentChannel
    ip: str | None = None
    user_agent: str | None = None
    notice_hash: str | None = None


def personal_digest(ip: str | None, user_agent: str | None) -> str:
    encoded = json.dumps([ip, user_agent], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def row_hash(event: ConsentEvent) -> str:
    """SHA-256 over the row's content and the previous row's hash, in a fixed order."""
    return _hash_row(
        seq=event.seq,
        subject_digest=event.subject_digest,
        purpose=event.purpose.value,
        scope=event.scope,
        action=event.action.value,
        channel=event.channel.value,
        notice_hash=event.notice_hash,
        occurred_at=event.occurred_at,
        personal_digest=event.personal_digest,
        prev_hash=event.prev_hash,
        import_batch_id=event.import_batch_id,
    )


def _hash_row(**row: Any) -> str:
    content = [
        row["seq"],
        row["subject_digest"],
        row["purpose"],
        row["scope"],
        row["action"],
        row["channel"],
        row["notice_hash"],
        row["occurred_at"].isoformat(timespec="microseconds"),
        row["personal_digest"],
        row["prev_hash"],
    ]
    if row.get("import_batch_id") is not None:  # rows from before imports hash as they did
        content.append(row["import_batch_id"])
    encoded = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def locked_head(session: Session, chain: str = CHAIN) -> LedgerHead:
    """The tip of a hash chain, locked until the transaction ends (appends are serialised)."""
    head = session.exec(
        select(LedgerHead).where(LedgerHead.name == chain).with_for_update()
    ).one_or_none()
    if head is None:  # the migration creates it; a missing head is tampering
        raise RuntimeError(f"the {chain} ledger head is missing")
    return head


_EVENTS = table_of(ConsentEvent)
_HEADS = table_of(LedgerHead)
_INSERT_EVENT = insert(_EVENTS)
_MOVE_HEAD = (
    update(_HEADS)
    .where(_HEADS.c.name == CHAIN)
    .values(seq=bindparam("new_seq"), last_hash=bindparam("new_hash"))
)
# A compare-and-set that locks the head in any case: it moves the head to the new tip only
# from the tip guessed, and returns where the head is now (the new tip, or the real one).
# PostgreSQL runs the same in ``_PG_APPEND_GUESSED``, together with the insert.
_GUESSED = and_(_HEADS.c.seq == bindparam("seq"), _HEADS.c.last_hash == bindparam("last_hash"))
_MOVE_HEAD_FROM = (
    update(_HEADS)
    .where(_HEADS.c.name == CHAIN)
    .values(
        seq=case((_GUESSED, bindparam("new_seq")), else_=_HEADS.c.seq),
        last_hash=case((_GUESSED, bindparam("new_hash")), else_=_HEADS.c.last_hash),
    )
    .returning(_HEADS.c.seq, _HEADS.c.last_hash)
)
# Where a connection left the chain when it last appended (``Connection.info`` lives as long
# as the database connection): the guess ``_MOVE_HEAD_FROM`` checks.
_LAST_TIP = "mailmag.consent.tip"
_NO_GUESS = {"seq": -1, "last_hash": "", "new_seq": -1, "new_hash": ""}


# PostgreSQL appends in one statement where it can, so that the head, once locked, is held
# for as few round trips as possible (two web processes take turns with it): the rows go
# in as one array per column (written by psycopg in C), with the head's move in the same
# statement.
_NEW_ROWS = """
    INSERT INTO consent_event (
        seq, subscriber_id, subject_digest, purpose, scope, action, channel, notice_hash,
        occurred_at, ip, user_agent, personal_digest, personal_erased, import_batch_id,
        purged, prev_hash, row_hash)
    SELECT * FROM unnest(
        CAST(:seq_ AS integer[]), CAST(:subscriber_id_ AS integer[]),
        CAST(:subject_digest_ AS varchar[]), CAST(:purpose_ AS varchar[]),
        CAST(:scope_ AS varchar[]), CAST(:action_ AS varchar[]), CAST(:channel_ AS varchar[]),
        CAST(:notice_hash_ AS varchar[]), CAST(:occurred_at_ AS timestamp[]),
        CAST(:ip_ AS varchar[]), CAST(:user_agent_ AS varchar[]),
        CAST(:personal_digest_ AS varchar[]), CAST(:personal_erased_ AS boolean[]),
        CAST(:import_batch_id_ AS integer[]), CAST(:purged_ AS boolean[]),
        CAST(:prev_hash_ AS varchar[]), CAST(:row_hash_ AS varchar[]))
"""
_ARRAYS = (
    "seq", "subscriber_id", "subject_digest", "purpose", "scope", "action", "channel",
    "notice_hash", "occurred_at", "ip", "user_agent", "personal_digest", "personal_erased",
    "import_batch_id", "purged", "prev_hash", "row_hash",
)  # fmt: skip
# The guessed move (``_MOVE_HEAD_FROM``'s compare-and-set, written in SQL to share a WITH
# with the rows) and the rows, which go in only if the guess held; where the head is now.
_GUESSED_MOVE = """
    WITH moved AS (
        UPDATE ledger_head SET
            seq = CASE WHEN seq = :seq AND last_hash = :last_hash THEN :new_seq ELSE seq END,
            last_hash = CASE WHEN seq = :seq AND last_hash = :last_hash
                THEN :new_hash ELSE last_hash END
        WHERE name = :chain
        RETURNING seq, last_hash
    ), added AS ("""
_IF_MOVED = """
        WHERE EXISTS (SELECT 1 FROM moved WHERE seq = :new_seq AND last_hash = :new_hash)
    )
    SELECT seq, last_hash FROM moved
"""
_PG_APPEND_GUESSED = text(_GUESSED_MOVE + _NEW_ROWS + _IF_MOVED)
# The head (locked by the statement above) moved, and the rows, placed after it, added.
_MOVE = """
    WITH moved AS (
        UPDATE ledger_head SET seq = :new_seq, last_hash = :new_hash WHERE name = :chain
    )"""
_PG_APPEND = text(_MOVE + _NEW_ROWS)


def _append_on_postgresql(
    conn: Connection, rows: list[dict[str, Any]], guess: tuple[int, str] | None
) -> dict[str, Any]:
    """``append_rows`` on PostgreSQL: one statement when the guess holds, else two."""
    if guess is not None:
        tip, columns = _chain(rows, *guess), _columns(rows)
    else:  # nothing to add yet: where the head is, locked
        tip, columns = _NO_GUESS, {f"{name}_": [] for name in _ARRAYS}
    head = _head(
        conn.execute(_PG_APPEND_GUESSED, {"chain": CHAIN, **_guess(guess), **tip, **columns})
    )
    if head != (tip["new_seq"], tip["new_hash"]):
        tip = _chain(rows, *head)  # the head, locked, is here
        conn.execute(_PG_APPEND, {"chain": CHAIN, **tip, **_columns(rows)})
    return tip


def _head(result: Result[Any]) -> tuple[int, str]:
    """Where the head is, as the statement that locked it returned."""
    head = result.one_or_none()
    if head is None:  # the migration creates it; a missing head is tampering
        raise RuntimeError(f"the {CHAIN} ledger head is missing")
    return int(head.seq), str(head.last_hash)


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    columns = {f"{name}_": [row[name] for row in rows] for name in _ARRAYS}
    columns["occurred_at_"] = [stored_utc(at) for at in columns["occurred_at_"]]
    return columns


def event_row(
    *,
    subscriber_id: int | None,
    subject_digest: str,
    purpose: ConsentPurpose,
    action: ConsentAction,
    evidence: Evidence,
    scope: str = "",
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """An event as ``append_rows`` takes it: everything but its place in the chain."""
    return {
        "subscriber_id": subscriber_id,
        "subject_digest": subject_digest,
        "purpose": purpose.value,
        "scope": scope,
        "action": action.value,
        "channel": evidence.channel.value,
        "notice_hash": evidence.notice_hash,
        # microsecond precision is what both databases keep, so the hash survives storage
        "occurred_at": occurred_at or utcnow(),
        "ip": evidence.ip[:45] if evidence.ip else None,
        "user_agent": evidence.user_agent[:512] if evidence.user_agent else None,
        "import_batch_id": None,
    }


def append_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Add events at the end of the chain, in order, in the transaction of ``conn`` (an ORM
    caller flushes first and passes ``session.connection()``): the head locked and moved
    (``_chain`` says how), the rows inserted in one statement. ``rows`` hold
    ``subscriber_id``, ``subject_digest``, ``purpose``, ``scope``, ``action``, ``channel``,
    ``notice_hash``, ``occurred_at``, ``ip``, ``user_agent`` and ``import_batch_id``
    (``event_row`` builds one); positions and hashes are assigned here."""
    if not rows:
        return
    for row in rows:
        row["personal_digest"] = personal_digest(row["ip"], row["user_agent"])
        row["personal_erased"] = False
        row["purged"] = False
    guess = conn.info.get(_LAST_TIP)
    if conn.dialect.name == "postgresql":
        tip = _append_on_postgresql(conn, rows, guess)
    else:
        tip = _chain(rows, *guess) if guess is not None else _NO_GUESS
        head = _head(conn.execute(_MOVE_HEAD_FROM, {**_guess(guess), **tip}))
        if head != (tip["new_seq"], tip["new_hash"]):
            tip = _chain(rows, *head)  # the head, locked, is here
            conn.execute(_MOVE_HEAD, tip)
        conn.execute(_INSERT_EVENT, rows)
    conn.info[_LAST_TIP] = (tip["new_seq"], tip["new_hash"])


def _guess(guess: tuple[int, str] | None) -> dict[str, Any]:
    return {"seq": guess[0], "last_hash": guess[1]} if guess is not None else _NO_GUESS


def _chain(rows: list[dict[str, Any]], seq: int, prev: str) -> dict[str, Any]:
    """Place ``rows`` after the tip (``seq``, ``prev``): their positions and hashes, and the
    new tip.

    A connection that appended before guesses the tip it left, places the rows after it and
    moves the head there in the one statement that locks it, if the guess still holds
    (``_MOVE_HEAD_FROM``): two statements for a writer that appends batch after batch (one on
    PostgreSQL, which adds the rows in the same statement). Else (no guess; another
    connection appended meanwhile; the transaction was rolled back) that statement tells
    where the head is, locked, and the rows are placed again: three statements (two)."""
    for row in rows:
        seq += 1
        row["seq"] = seq
        row["prev_hash"] = prev
        prev = row["row_hash"] = _hash_row(**row)
    return {"new_seq": seq, "new_hash": prev}


def append_many(session: Session, rows: list[dict[str, Any]]) -> None:
    """Append many events at once (imports): ``rows`` hold ``subscriber_id``,
    ``subject_digest``, ``purpose``, ``scope``, ``action``, ``channel``, ``notice_hash``,
    ``occurred_at``, ``user_agent`` and ``import_batch_id``; no IP address is kept."""
    if not rows:
        return
    session.flush()
    for row in rows:
        row["ip"] = None
    append_rows(session.connection(), rows)


def erase_personal_fields(session: Session, *, subscriber_id: int) -> int:
    """Blank IP and user agent of a subscriber's events; the chain still verifies."""
    result = session.execute(
        update(ConsentEvent)
        .where(col(ConsentEvent.subscriber_id) == subscriber_id)
        .values(ip=None, user_agent=None, personal_erased=True)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    checked: int
    problem: str = ""
    seq: int | None = None  # the first row found wrong


def verify(
    session: Session, *, digest: Callable[[str], str] | None = None, batch: int = 1000
) -> Verification:
    """Walk the whole chain; with ``digest``, also check each linked subscriber's address."""
    expected_prev = GENESIS_HASH
    expected_seq = 1
    checked = 0
    last_id = 0
    while True:
        rows = session.exec(
            select(ConsentEvent, Subscriber.email)
            .join(Subscriber, col(Subscriber.id) == ConsentEvent.subscriber_id, isouter=True)
            .where(col(ConsentEvent.seq) > last_id)
            .order_by(col(ConsentEvent.seq))
            .limit(batch)
        ).all()
        if not rows:
            break
        for event, email in rows:
            problem = _check(event, email, expected_seq, expected_prev, digest)
            if problem:
                return Verification(False, checked, problem, event.seq)
            expected_prev = event.row_hash
            expected_seq += 1
            checked += 1
            last_id = event.seq
    head = session.exec(select(LedgerHead).where(LedgerHead.name == CHAIN)).one_or_none()
    if head is None:
        return Verification(False, checked, "the ledger head is missing")
    if head.seq != checked or head.last_hash != expected_prev:
        return Verification(
            False,
            checked,
            f"the ledger head records {head.seq} rows but the chain has {checked}: "
            "rows at the end were removed or the head was altered",
            checked + 1,
        )
    return Verification(True, checked)


def _check(
    event: ConsentEvent,
    email: str | None,
    expected_seq: int,
    expected_prev: str,
    digest: Callable[[str], str] | None,
) -> str:
    if event.seq != expected_seq:
        return f"row {expected_seq} is missing (next row found is {event.seq})"
    if event.prev_hash != expected_prev:
        return f"row {event.seq} does not follow row {event.seq - 1} (removed or reordered)"
    if event.purged:  # past retention: only its place in the chain is still provable
        return ""
    if row_hash(event) != event.row_hash:
        return f"row {event.seq} was altered after it was written"
    if not event.personal_erased and personal_digest(event.ip, event.user_agent) != (
        event.personal_digest
    ):
        return f"row {event.seq}: IP or user agent was altered"
    if digest is not None and email is not None and digest(email) != event.subject_digest:
        return f"row {event.seq} was moved to another subscriber"
    return ""


def evidence(session: Session, *, subject_digest: str) -> dict[str, Any]:
    """Every event about one address (found by its digest, so erased people too), with the
    full text of each notice they cite: what a regulator or a court would ask for."""
    events = session.exec(
        select(ConsentEvent)
        .where(ConsentEvent.subject_digest == subject_digest)
        .order_by(col(ConsentEvent.seq))
    ).all()
    hashes = sorted({e.notice_hash for e in events if e.notice_hash})
    notices = session.exec(
        select(NoticeVersion).where(col(NoticeVersion.content_hash).in_(hashes))
    ).all()
    return {
        "subject_digest": subject_digest,
        "generated_at": utcnow().isoformat(),
        "events": [evidence_row(e) for e in events],
        "notices": {
            n.content_hash: {
                "locale": n.locale,
                "first_stored": n.created_at.isoformat(),
                "text": n.body,
            }
            for n in notices
        },
    }


def evidence_row(event: ConsentEvent) -> dict[str, Any]:
    """One ledger row as evidence: everything needed to check its hash by hand."""
    return {
        "seq": event.seq,
        "purpose": event.purpose.value,
        "scope": event.scope,
        "action": event.action.value,
        "channel": event.channel.value,
        "notice_hash": event.notice_hash,
        "occurred_at": event.occurred_at.isoformat(timespec="microseconds"),
        "ip": event.ip,
        "user_agent": event.user_agent,
        "personal_erased": event.personal_erased,
        "personal_digest": event.personal_digest,
        "subject_digest": event.subject_digest,
        "prev_hash": event.prev_hash,
        "row_hash": event.row_hash,
    }


def history(session: Session, *, subscriber_id: int) -> list[ConsentEvent]:
    """A subscriber's events, oldest first."""
    return list(
        session.exec(
            select(ConsentEvent)
            .where(ConsentEvent.subscriber_id == subscriber_id)
            .order_by(col(ConsentEvent.seq))
        ).all()
    )
