"""The pull API for processors and joint users: ``/processor/v1``.

A party authenticates with its machine credential (``Authorization: Bearer mp_...``, created
by ``mailmag parties credential create``; stored hashed, expiring, revocable at once). What
the credential reaches is only that party's own work:

- ``POST /processor/v1/batches``: a processor with ``pull = true`` claims up to ``limit`` of
  the deliveries assigned to it under a lease, each re-checked at that moment. Each comes
  with its opaque delivery token, the address, the merge fields the issue uses that the
  processor may receive, and the rendered message (base64 of the RFC 5322 bytes, whose
  return path is the VERP address given). Every batch is recorded as a transfer, per person.
  A delivery whose message cannot be composed (a merge field that would break a header) is
  not handed out but recorded ``failed`` with the reason; a template refused while rendering
  pauses the issue, with the reason, and the rest of its batch goes back to the queue.
- ``POST /processor/v1/outcomes``: what happened to each token (sent, deferred, failed), and
  bounces that arrive later. Tokens of other parties are ignored without saying why. Once an
  issue is older than its sending window plus the processor's retention, it answers 403.
- ``GET /processor/v1/opt-outs`` and ``POST /processor/v1/opt-outs/ack``: the withdrawals of
  people whose data the party holds (processors and joint users), recorded as a hand-over
  when read and removed only when acknowledged, so a lost answer loses no notice.

There is no way to list subscribers, read consent, or see other issues or other parties'
recipients. A processor that is inactive, past its contract or overdue for review gets 403.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from mailer import issues, queue
from mailer.audience import Recipient
from mailer.bounces import enhanced_status
from mailer.clock import utcnow
from mailer.columns import RowId
from mailer.errors import MailerError
from mailer.feedback import Feedback, FeedbackKind, bounce
from mailer.messages import compose_each, pause_reason
from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus
from mailer.queue import Claim, Result
from mailer.transactions import for_writing
from mailer.verp import TOKEN_LENGTH
from mailer.worker import report_refusals
from subscriptions import parties
from subscriptions.auth import credential_for_token
from subscriptions.deps import RuntimeDep
from subscriptions.models import PartyCredential
from subscriptions.registry import Processor
from subscriptions.runtime import Runtime
from subscriptions.transfers import record_transfer

router = APIRouter(prefix="/processor/v1", tags=["processors"])
_bearer = HTTPBearer(auto_error=False, description="A processor's machine credential (mp_...).")

LEASE = timedelta(minutes=30)


def authenticate(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> PartyCredential:
    found = None
    if credentials is not None:
        with Session(runtime.engine, expire_on_commit=False) as session:
            found = credential_for_token(session, credentials.credentials)
    if found is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid processor credential is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return found


Party = Annotated[PartyCredential, Depends(authenticate)]


def pulling_processor(runtime: Runtime, party: PartyCredential) -> Processor:
    """The registry entry of a processor that may pull work today, or 403 saying why not."""
    processor = runtime.registry.processor(party.party) if party.party_kind == "processor" else None
    if processor is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only processors receive sending work")
    reason = processor.unusable(utcnow().date())
    if reason:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"processor may receive nothing: {reason}")
    if not processor.pull:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this processor receives work by SMTP")
    return processor


# --- batches ------------------------------------------------------------------------------------


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(default=100, ge=1, le=500)


class PulledDelivery(BaseModel):
    token: str
    issue_id: RowId
    address: str
    return_path: str
    fields: dict[str, str]
    message: str = Field(description="The complete message, base64 of its RFC 5322 bytes.")


class Batch(BaseModel):
    lease_seconds: int
    deliveries: list[PulledDelivery]


@router.post("/batches")
def claim_batch(runtime: RuntimeDep, party: Party, body: BatchRequest | None = None) -> Batch:
    """Claim deliveries assigned to this processor; answer them before the lease runs out."""
    processor = pulling_processor(runtime, party)
    claims = queue.claim(
        runtime.engine,
        worker=f"processor:{processor.key}",
        limit=(body or BatchRequest()).limit,
        lease=LEASE,
        processors=[processor.key],
        pulled=True,
    )
    by_issue: dict[int, list[Claim]] = {}
    for claim in claims:
        by_issue.setdefault(claim.issue_id, []).append(claim)
    handed: list[PulledDelivery] = []
    ended: list[Result] = []  # skipped, or failed because their message cannot be composed
    given_back: list[Claim] = []  # their issue was paused: back to the queue untouched
    pauses: dict[int, str] = {}
    transfers: list[tuple[int, list[str], list[Recipient]]] = []
    # Messages are composed with no transaction open: on SQLite a write transaction here
    # held the write lock for as long as rendering a whole batch takes.
    with Session(runtime.engine, expire_on_commit=False) as session:
        found = {i: session.get(Issue, i) for i in by_issue}
    for issue_id, issue_claims in by_issue.items():
        issue = found[issue_id]
        assert issue is not None
        try:
            prepared, audience = runtime.preparer.prepare(issue)
        except MailerError as exc:  # it can no longer be prepared: stop it, say why
            pauses[issue_id] = f"paused while sending: {exc}"[:300]
            given_back += issue_claims
            continue
        ids = [c.subscriber_id for c in issue_claims if c.subscriber_id is not None]
        eligible = {r.subscriber_id: r for r in runtime.audience.recipients(audience, ids)}
        given: list[tuple[Claim, Recipient]] = []
        for claim in issue_claims:
            recipient = eligible.get(claim.subscriber_id or -1)
            if recipient is None:
                ended.append(Result(claim, DeliveryStatus.skipped, reply="no longer eligible"))
            else:
                given.append((claim, recipient))
        # One recipient whose message cannot be composed fails alone; a template refused for
        # one pauses the issue, and the recipients after it go back to the queue.
        composed = compose_each(
            prepared, ((r, runtime.delivery_tokens.make(c.delivery_id)) for c, r in given)
        )
        given_back += [claim for claim, _ in given[len(composed) :]]
        if composed and composed[-1].pauses_issue:
            pauses[issue_id] = pause_reason(composed[-1])
        sent: list[Recipient] = []
        for (claim, recipient), one in zip(given, composed, strict=False):
            if one.message is None:
                ended.append(Result(claim, DeliveryStatus.failed, reply=one.reply))
                continue
            sent.append(recipient)
            handed.append(
                PulledDelivery(
                    token=one.token,
                    issue_id=issue_id,
                    address=recipient.address,
                    return_path=prepared.return_path(one.token),
                    fields=dict(recipient.fields),
                    message=base64.b64encode(one.message).decode(),
                )
            )
        if sent:
            transfers.append((issue_id, sorted(audience.fields | {"email"}), sent))
    with Session(for_writing(runtime.engine)) as session:
        for issue_id, reason in pauses.items():
            paused = session.exec(select(Issue).where(Issue.id == issue_id).with_for_update()).one()
            if paused.status is IssueStatus.sending:
                issues.pause(session, paused, reason)
        for issue_id, fields, people in transfers:
            record_transfer(
                session,
                party=processor.key,
                party_kind="processor",
                fields=fields,
                people=[(r.subscriber_id, runtime.optin.hasher.digest(r.address)) for r in people],
                purpose="pull batch",
                legal_basis="entrustment (APPI Art. 27(5)(i))",
                triggered_by=f"processor credential #{party.id}",
                issue_id=issue_id,
            )
        _touch(session, party)
        session.commit()
    queue.release(runtime.engine, given_back)
    if queue.record(runtime.engine, ended):  # a batch's last deliveries may end here
        with Session(for_writing(runtime.engine)) as session:
            for issue_id in {r.claim.issue_id for r in ended}:
                issues.finish_if_done(session, issue_id)
            session.commit()
    return Batch(lease_seconds=int(LEASE.total_seconds()), deliveries=handed)


def _touch(session: Session, party: PartyCredential) -> None:
    stored = session.get(PartyCredential, party.id)
    if stored is not None:
        stored.last_used_at = utcnow()
        session.add(stored)


# --- outcomes -----------------------------------------------------------------------------------


class Outcome(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=TOKEN_LENGTH, max_length=TOKEN_LENGTH)
    status: Literal["sent", "deferred", "failed", "bounced", "complained"]
    code: int | None = Field(default=None, ge=200, le=599)
    reply: str = Field(default="", max_length=500)


class OutcomeReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcomes: list[Outcome] = Field(min_length=1, max_length=1000)


class OutcomeAnswer(BaseModel):
    recorded: int
    ignored: list[str] = Field(description="Tokens not claimed by you or no longer open.")


def _later_feedback(delivery_id: int | None, outcome: Outcome) -> Feedback:
    """A bounce or complaint a processor reports after sending; a bounce is read by its
    enhanced status like any other (``mailer.bounces``): a 5.7.1 suppresses no one."""
    if outcome.status == "complained":
        return Feedback(FeedbackKind.complaint, delivery_id, outcome.reply)
    status = enhanced_status(outcome.reply)
    return bounce(delivery_id, outcome.reply, status, permanent=True)


@router.post("/outcomes")
def report_outcomes(runtime: RuntimeDep, party: Party, body: OutcomeReport) -> OutcomeAnswer:
    """Record what happened to pulled deliveries: the result of sending (while claimed), or a
    bounce or complaint that came in afterwards. Stored before the answer."""
    processor = pulling_processor(runtime, party)
    ids = {o.token: runtime.delivery_tokens.read(o.token) for o in body.outcomes}
    worker = f"processor:{processor.key}"
    now = utcnow()
    results: list[Result] = []
    ignored: list[str] = []
    feedback = runtime.feedback()
    retry = runtime.retry_policy  # the worker's: a processor's deferrals end by its deadline
    recorded = 0
    with Session(for_writing(runtime.engine), expire_on_commit=False) as session:
        rows = session.exec(
            select(Delivery, Issue)
            .join(Issue, col(Issue.id) == Delivery.issue_id)
            .where(col(Delivery.id).in_([i for i in ids.values() if i is not None]))
            .where(Delivery.processor == processor.key)
        ).all()
        found = {d.id: (d, i) for d, i in rows}
        for outcome in body.outcomes:
            row = found.get(ids[outcome.token] or -1)
            if row is None:
                ignored.append(outcome.token)
                continue
            delivery, issue = row
            ended = issue.finished_at or issue.started_at or now
            if ended + retry.deadline + timedelta(days=processor.retention_days) < now:
                raise HTTPException(
                    status.HTTP_403_FORBIDDEN,
                    f"the retention period for issue {issue.id} has ended",
                )
            if outcome.status in ("bounced", "complained"):
                if delivery.status is not DeliveryStatus.sent:
                    ignored.append(outcome.token)
                    continue
                feedback.apply_in(session, _later_feedback(delivery.id, outcome))
                recorded += 1
                continue
            if delivery.status is not DeliveryStatus.sending or delivery.lease_owner != worker:
                ignored.append(outcome.token)
                continue
            claim = Claim(
                delivery.id or 0,
                delivery.issue_id,
                delivery.subscriber_id,
                delivery.fence,
                delivery.attempts,
                delivery.processor,
            )
            if outcome.status == "deferred":
                results.append(
                    retry.deferral(claim, issue.started_at, outcome.code, outcome.reply, now=now)
                )
            else:
                state = DeliveryStatus(outcome.status)
                results.append(Result(claim, state, outcome.code, outcome.reply))
        _touch(session, party)
        session.commit()
    recorded += queue.record(runtime.engine, results)
    report_refusals(feedback, results)  # a refusal at sending counts as the worker's do
    with Session(for_writing(runtime.engine)) as session:
        for issue_id in {r.claim.issue_id for r in results}:
            issues.finish_if_done(session, issue_id)
        session.commit()
    return OutcomeAnswer(recorded=recorded, ignored=ignored)


# --- opt-out notices ----------------------------------------------------------------------------


class OptOut(BaseModel):
    id: int
    address: str
    change: str
    at: str


class OptOuts(BaseModel):
    notices: list[OptOut]


class Acknowledgement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[RowId] = Field(min_length=1, max_length=10_000)


class Acknowledged(BaseModel):
    removed: int


@router.get("/opt-outs")
def opt_outs(runtime: RuntimeDep, party: Party) -> OptOuts:
    """Withdrawals of people whose data you hold; act on them, then acknowledge them."""
    with Session(for_writing(runtime.engine)) as session:
        notices = parties.pending(session, party.party)
        parties.record_hand_over(
            session, party.party, notices, triggered_by=f"processor credential #{party.id}"
        )
        session.commit()
        return OptOuts(notices=[OptOut(**parties.as_dict(n)) for n in notices])


@router.post("/opt-outs/ack")
def acknowledge(runtime: RuntimeDep, party: Party, body: Acknowledgement) -> Acknowledged:
    with Session(for_writing(runtime.engine)) as session:
        removed = parties.acknowledge(session, party.party, body.ids)
        session.commit()
    return Acknowledged(removed=removed)
