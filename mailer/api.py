"""The marketing API: write issues, preview them, test-send, schedule, watch them go out.

``marketing_router`` is built by the composition root with the dependency that admits staff
(authorization is the opt-in store's business) and the services the routes use. Templates
are checked when an issue is saved: a template that breaks the sandbox's rules, or an issue
whose messages would lack the legally required footer, is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from email_validator import EmailNotValidError, validate_email
from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from mailer import issues, queue
from mailer.audience import Audience, Recipient
from mailer.columns import RowId
from mailer.compose import PreparedIssue
from mailer.errors import InvalidTransition, MailerError, TestSendLimited
from mailer.models import Issue, IssueBase, IssueStatus
from mailer.sending import queue_the_rest, start_issue
from mailer.transactions import for_writing
from mailer.transport import Envelope, Outcome, Transport
from mailer.worker import IssuePreparer

Locale = Literal["en", "ja"]


class IssueCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    magazine_id: RowId
    subject: str = Field(min_length=1, max_length=300)
    preheader: str = Field(default="", max_length=300)
    html_body: str = Field(min_length=1, max_length=200_000)
    text_body: str | None = Field(default=None, max_length=200_000)
    locale: Locale = "en"
    route: str | None = Field(default=None, max_length=64)


class IssueUpdate(BaseModel):
    """The fields to change; those left out stay as they are. Only ``text_body`` and
    ``route`` may be set to null (no text part of one's own; our own relay)."""

    model_config = ConfigDict(extra="forbid")

    subject: Annotated[str, Field(min_length=1, max_length=300)] | SkipJsonSchema[None] = None
    preheader: Annotated[str, Field(max_length=300)] | SkipJsonSchema[None] = None
    html_body: Annotated[str, Field(min_length=1, max_length=200_000)] | SkipJsonSchema[None] = None
    text_body: str | None = Field(default=None, max_length=200_000)
    locale: Locale | SkipJsonSchema[None] = None
    route: str | None = Field(default=None, max_length=64)

    @field_validator("subject", "preheader", "html_body", "locale")
    @classmethod
    def _not_null(cls, value: str | None) -> str:
        if value is None:  # only an explicit null gets here: defaults are not validated
            raise ValueError("may be left out, but not set to null")
        return value


class IssuePublic(IssueBase):
    id: int
    magazine_id: RowId
    status: IssueStatus
    scheduled_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    pause_reason: str | None = None
    complaints: int = 0
    hard_bounces: int = 0
    blocks: int = 0
    queuing: bool = Field(
        default=False, description="Its recipients are still being queued (total still grows)."
    )
    merge_fields: list[str] = Field(default_factory=list)


class SampleFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="Hanako Yamada", max_length=200)
    company: str = Field(default="Example K.K.", max_length=200)
    department: str = Field(default="Marketing", max_length=200)
    title: str = Field(default="Manager", max_length=200)
    email: str = Field(default="hanako@example.com", max_length=320)


class Preview(BaseModel):
    subject: str
    html: str
    text: str


class TestSend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    addresses: list[Annotated[str, Field(max_length=320)]] = Field(min_length=1, max_length=10)
    sample: SampleFields = SampleFields()


class TestSendResult(BaseModel):
    results: dict[str, str] = Field(
        description='Per address: "sent", "skipped: ..." (an address mailmag does not mail; '
        "nothing was sent to it) or the relay's refusal."
    )


SKIPPED = "skipped: not sent, this address does not receive mail from us"


@dataclass(frozen=True, slots=True)
class Operator:
    """The staff member behind a request, as the opt-in store names them: ``key`` for their
    limits, ``name`` and ``source`` for the audit log."""

    key: str
    name: str
    source: str = ""


@dataclass(frozen=True, slots=True)
class TestSendClearance:
    """Which of the addresses asked for may be mailed, and which may not."""

    __test__ = False  # not a pytest test class, whatever its name

    send: tuple[str, ...]
    skipped: tuple[str, ...]


class TestSendGate(Protocol):
    """The opt-in store's say on a test send, before anything is sent."""

    def clear(
        self, operator: Operator, issue_id: int, addresses: Sequence[str]
    ) -> TestSendClearance:
        """Admit it or raise ``TestSendLimited`` (the operator's or the issue's limit is
        reached), record it (durably, before any mail), and split ``addresses`` into those
        that may be mailed and those that may not (suppressed, unsubscribed)."""
        ...


class ScheduleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: AwareDatetime


class IssueProgress(BaseModel):
    issue_id: RowId
    status: str
    counts: dict[str, int]
    total: int
    done: int
    percent: float
    rate_per_second: float
    expected_finish: datetime | None
    queuing: bool = Field(description="Recipients are still being queued (total still grows).")


@dataclass
class MarketingServices:
    engine: Engine
    audience: Audience
    preparer: IssuePreparer
    transport: Callable[[], Transport]
    operator: Callable[..., Operator]  # a FastAPI dependency: who is calling
    test_sends: TestSendGate
    test_token: str  # the delivery token of test messages (verp.TEST_DELIVERY)
    on_scheduled: Callable[[int, datetime], None] = lambda _issue, _at: None
    on_started: Callable[[], None] = lambda: None


def _public(issue: Issue, fields: frozenset[str] = frozenset()) -> IssuePublic:
    return IssuePublic.model_validate(
        {
            **issue.model_dump(),
            "queuing": issue.expansion_cursor is not None,
            "merge_fields": sorted(fields),
        }
    )


def marketing_router(authorize: Callable[..., Any], services: MarketingServices) -> APIRouter:
    router = APIRouter(prefix="/api/v1/issues", tags=["issues"], dependencies=[Depends(authorize)])
    engine = services.engine

    def load(session: Session, issue_id: RowId, *, lock: bool = False) -> Issue:
        # A change locks the row it checks: else a pause that read "sending" could overwrite
        # the "sent" a worker committed meanwhile, or a save land on an issue going out.
        issue = session.get(Issue, issue_id, with_for_update=lock)
        if issue is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such issue")
        return issue

    def checked(issue: Issue) -> frozenset[str]:
        try:
            prepared, _audience = services.preparer.prepare(issue)
        except MailerError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        return prepared.fields

    def transition(issue_id: RowId, move: Callable[[Session, Issue], None]) -> IssuePublic:
        with Session(for_writing(engine), expire_on_commit=False) as session:
            issue = load(session, issue_id, lock=True)
            try:
                move(session, issue)
            except InvalidTransition as exc:
                raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
            session.commit()
            return _public(issue)

    @router.post("", status_code=status.HTTP_201_CREATED)
    def create_issue(data: IssueCreate) -> IssuePublic:
        """Save a draft; its templates are checked now, not at send time."""
        issue = Issue.model_validate(data.model_dump())
        fields = checked(issue)
        with Session(for_writing(engine), expire_on_commit=False) as session:
            session.add(issue)
            session.commit()
        return _public(issue, fields)

    @router.get("")
    def list_issues(limit: Annotated[int, Field(ge=1, le=200)] = 50) -> list[IssuePublic]:
        with Session(engine) as session:
            rows = session.exec(select(Issue).order_by(col(Issue.id).desc()).limit(limit)).all()
            return [_public(i) for i in rows]

    @router.get("/{issue_id}")
    def get_issue(issue_id: RowId) -> IssuePublic:
        with Session(engine) as session:
            return _public(load(session, issue_id))

    @router.patch("/{issue_id}")
    def update_issue(issue_id: RowId, data: IssueUpdate) -> IssuePublic:
        """Change a draft (a scheduled issue goes back to draft first)."""
        with Session(for_writing(engine), expire_on_commit=False) as session:
            issue = load(session, issue_id, lock=True)
            try:
                issues.require(issue, issues.Action.save)
            except InvalidTransition as exc:
                raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
            for key, value in data.model_dump(exclude_unset=True).items():
                setattr(issue, key, value)
            fields = checked(issue)
            session.add(issue)
            session.commit()
            return _public(issue, fields)

    def rendered(issue: Issue, sample: SampleFields | None) -> Preview:
        try:
            prepared, _audience = services.preparer.prepare(issue)
            subject, html, text = prepared.render(_sample(sample or SampleFields()), "preview")
        except MailerError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        return Preview(subject=subject, html=html, text=text)

    @router.post("/preview")
    def preview_draft(data: IssueCreate) -> Preview:
        """An unsaved draft as a sample subscriber would see it (the editor's live preview);
        422 names what the save would refuse."""
        return rendered(Issue.model_validate(data.model_dump()), None)

    @router.post("/{issue_id}/preview")
    def preview(issue_id: RowId, sample: SampleFields | None = None) -> Preview:
        """The message as a sample subscriber would see it."""
        with Session(engine) as session:
            issue = load(session, issue_id)
        return rendered(issue, sample)

    def cleared_test(
        issue_id: RowId, addresses: list[str], operator: Operator
    ) -> tuple[PreparedIssue, TestSendClearance]:
        """The issue prepared as a test ("[TEST]" before its subject), and the store's
        clearance; blocking work, run in a thread."""
        with Session(engine) as session:
            issue = load(session, issue_id)
        marked = Issue.model_validate(issue.model_dump())
        marked.subject = f"[TEST] {issue.subject}"  # past the stored field's 300 characters
        try:
            issues.require(issue, issues.Action.test_send)
        except InvalidTransition as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        try:
            prepared, _audience = services.preparer.prepare(marked)
        except MailerError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        try:
            clearance = services.test_sends.clear(operator, issue_id, addresses)
        except TestSendLimited as exc:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                str(exc),
                headers={"Retry-After": str(exc.retry_after)},
            ) from None
        return prepared, clearance

    @router.post(
        "/{issue_id}/test-send",
        responses={
            429: {
                "description": "The staff member's or the issue's test sends are "
                "used up for now; Retry-After says when to try again."
            }
        },
    )
    async def test_send(
        issue_id: RowId,
        data: TestSend,
        # A default, not an Annotated hint: the dependency is this router's, local to it.
        operator: Operator = Depends(services.operator),
    ) -> TestSendResult:
        """Send the issue as a test, "[TEST]" before its subject and sample values in it, to
        up to ten addresses. Limited per staff member and per issue, recorded in the audit
        log; an address mailmag does not mail (suppressed, unsubscribed) is skipped. The
        message's links open a page saying it was a test."""
        addresses: list[str] = []
        seen: set[str] = set()  # one message per address, whatever the letter case
        for raw in data.addresses:
            try:
                address = str(validate_email(raw, check_deliverability=False).normalized)
            except EmailNotValidError as exc:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT, f"{raw}: {exc}"
                ) from None
            if address.lower() not in seen:
                seen.add(address.lower())
                addresses.append(address)
        prepared, clearance = await run_in_threadpool(cleared_test, issue_id, addresses, operator)
        token = services.test_token
        results = dict.fromkeys(clearance.skipped, SKIPPED)
        transport = services.transport()
        try:
            for address in clearance.send:
                message = await run_in_threadpool(
                    prepared.message, _sample(data.sample, address), token
                )
                sent = await transport.send(
                    Envelope(prepared.return_path(token), address, message, transparent=True)
                )
                results[address] = (
                    sent.outcome.value
                    if sent.outcome is Outcome.sent
                    else (f"{sent.outcome.value}: {sent.code} {sent.reply}".strip())
                )
        finally:
            await transport.close()
        return TestSendResult(results={address: results[address] for address in addresses})

    @router.post("/{issue_id}/schedule")
    def schedule(issue_id: RowId, data: ScheduleRequest) -> IssuePublic:
        """Send at a time-zone-aware moment (stored in UTC)."""
        with Session(engine) as session:
            checked(load(session, issue_id))
        public = transition(issue_id, lambda s, i: issues.schedule(s, i, data.at))
        services.on_scheduled(issue_id, data.at)
        return public

    @router.post("/{issue_id}/unschedule")
    def unschedule(issue_id: RowId) -> IssuePublic:
        return transition(issue_id, issues.unschedule)

    @router.post("/{issue_id}/send-now")
    def send_now(issue_id: RowId, background: BackgroundTasks) -> IssuePublic:
        """Start sending at once. Answers when the first recipients are queued (and being
        sent); the rest are queued after the answer ("queuing" is true until then)."""
        with Session(engine) as session:
            issue = load(session, issue_id)
        try:
            # start_issue also resumes an expansion under way (the scheduler's retry): staff
            # may only start an issue that has not started.
            issues.require(issue, issues.Action.send_now)
            start_issue(engine, services.audience, services.preparer, issue_id, complete=False)
        except InvalidTransition as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        except MailerError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        services.on_started()
        background.add_task(queue_the_rest, engine, services.audience, services.preparer, issue_id)
        with Session(engine) as session:
            return _public(load(session, issue_id))

    @router.post("/{issue_id}/pause")
    def pause(issue_id: RowId) -> IssuePublic:
        return transition(issue_id, issues.pause)

    @router.post("/{issue_id}/resume")
    def resume(issue_id: RowId) -> IssuePublic:
        public = transition(issue_id, issues.resume)
        services.on_started()
        return public

    @router.post("/{issue_id}/cancel")
    def cancel(issue_id: RowId) -> IssuePublic:
        return transition(issue_id, issues.cancel)

    @router.get("/{issue_id}/status")
    def issue_status(issue_id: RowId) -> IssueProgress:
        """Counts per delivery state, the current rate and the expected finish."""
        with Session(engine) as session:
            found = queue.progress(session, issue_id)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such issue")
        return IssueProgress(
            issue_id=found.issue_id,
            status=found.status,
            counts=found.counts,
            total=found.total,
            done=found.done,
            percent=round(100 * found.done / found.total, 1) if found.total else 100.0,
            rate_per_second=round(found.rate_per_second, 2),
            expected_finish=found.expected_finish,
            queuing=found.queuing,
        )

    return router


def _sample(sample: SampleFields, address: str | None = None) -> Recipient:
    """A made-up recipient (previews name none; a test send names the address it goes to)."""
    return Recipient(subscriber_id=0, address=address or sample.email, fields=sample.model_dump())
