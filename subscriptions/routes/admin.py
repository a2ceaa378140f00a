"""The admin web UI: dashboard, issues (list, editor, report), registries and notices, the
audit log. Server-rendered; the editor and the live progress bars use ``admin.js``, which
talks to the same JSON API as any other client (with the session's CSRF token).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from sqlmodel import Session, col, select

from mailer import issues
from mailer.columns import RowId
from mailer.models import Issue, IssueStatus
from subscriptions import audit, dashboard
from subscriptions.access import CurrentContext
from subscriptions.db import for_writing
from subscriptions.deps import RuntimeDep
from subscriptions.models import AuditEvent, Magazine, NoticeVersion, TransferRecord, localised
from subscriptions.notice import compare_versions
from subscriptions.paths import TEMPLATES_DIR
from subscriptions.routes.admin_common import actor_of, render, secure

router = APIRouter(prefix="/admin", tags=["admin"])
STATIC = TEMPLATES_DIR / "admin" / "static"
STATIC_FILES = {
    "admin.js": "text/javascript; charset=utf-8",
    "admin.css": "text/css; charset=utf-8",
}


@router.get("/static/{name}")
def static(name: Annotated[str, Path(max_length=40)]) -> Response:
    if name not in STATIC_FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    response = FileResponse(STATIC / name, media_type=STATIC_FILES[name])
    response.headers["Cache-Control"] = "max-age=300"
    return response


@router.get("", response_class=HTMLResponse)
def dashboard_page(request: Request, runtime: RuntimeDep, staff: CurrentContext) -> Response:
    today = dashboard.today()
    with Session(runtime.engine) as session:
        lines = dashboard.recent_issues(session)
        charts = [
            dashboard.subscribers_over_time(session, today),
            dashboard.confirmations_and_unsubscribes(session, today),
            dashboard.feedback_rates(session, lines),
        ]
    live = [line for line in lines if line.status in {s.value for s in dashboard.LIVE}]
    return render(
        request,
        "admin/dashboard.html",
        {"charts": charts, "live": live or lines[:5], "lines": lines},
        staff=staff,
    )


@router.get("/progress")
def progress(
    runtime: RuntimeDep,
    ids: Annotated[str, Query(max_length=500, pattern=r"^\d{1,9}(,\d{1,9}){0,49}$")],
) -> JSONResponse:
    """Progress of the given issues, for the bars that move while an issue goes out."""
    wanted = [int(i) for i in ids.split(",")]
    with Session(runtime.engine) as session:
        found = session.exec(select(Issue).where(col(Issue.id).in_(wanted))).all()
        lines = [dashboard.issue_line(session, issue, "") for issue in found]
    body = {
        str(line.id): {
            "status": line.status,
            "percent": line.percent,
            "done": line.done,
            "total": line.total,
            "counts": line.counts,
            "rate": line.rate,
            "issue": _state(issue),
        }
        for issue, line in zip(found, lines, strict=True)
    }
    response = JSONResponse(body)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/issues", response_class=HTMLResponse)
def issues_page(request: Request, runtime: RuntimeDep, staff: CurrentContext) -> Response:
    with Session(runtime.engine) as session:
        lines = dashboard.recent_issues(session, limit=200)
    return render(request, "admin/issues.html", {"lines": lines}, staff=staff)


def _state(issue: Issue) -> dict[str, object]:
    """What the issue editor shows and offers follows from (the fields of ``IssuePublic``
    that the marketing API's answers carry too)."""
    return {
        "status": issue.status.value,
        "queuing": issue.expansion_cursor is not None,
        "pause_reason": issue.pause_reason,
        "scheduled_at": issue.scheduled_at.isoformat() if issue.scheduled_at else None,
    }


def _editor(
    request: Request, runtime: RuntimeDep, staff: CurrentContext, issue: Issue | None
) -> Response:
    with Session(runtime.engine) as session:
        magazines = [
            (m.id, localised(m.title, "en") or m.slug)
            for m in session.exec(select(Magazine).where(Magazine.active)).all()
        ]
        line = None
        if issue is not None:
            magazine = session.get(Magazine, issue.magazine_id)
            line = dashboard.issue_line(session, issue, magazine.slug if magazine else "")
    routes = [p.key for p in runtime.registry.processors] + [r.key for r in runtime.registry.routes]
    return render(
        request,
        "admin/issue_edit.html",
        {
            "issue": issue,
            "line": line,
            "magazines": magazines,
            "routes": routes,
            # One table decides what is offered in each status, the one the API enforces.
            "actions": issues.actions_by_status(),
            "state": _state(issue) if issue else {"status": IssueStatus.draft.value},
        },
        staff=staff,
    )


@router.get("/issues/new", response_class=HTMLResponse)
def new_issue(request: Request, runtime: RuntimeDep, staff: CurrentContext) -> Response:
    return _editor(request, runtime, staff, None)


@router.get("/issues/{issue_id}", response_class=HTMLResponse)
def edit_issue(
    request: Request, runtime: RuntimeDep, staff: CurrentContext, issue_id: RowId
) -> Response:
    with Session(runtime.engine) as session:
        issue = session.get(Issue, issue_id)
    if issue is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such issue")
    return _editor(request, runtime, staff, issue)


@router.get("/issues/{issue_id}/report", response_class=HTMLResponse)
def issue_report(
    request: Request, runtime: RuntimeDep, staff: CurrentContext, issue_id: RowId
) -> Response:
    with Session(runtime.engine) as session:
        issue = session.get(Issue, issue_id)
        magazine = session.get(Magazine, issue.magazine_id) if issue else None
        if issue is None or magazine is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such issue")
        found = dashboard.report(session, issue, magazine)
    return render(request, "admin/report.html", {"issue": issue, "report": found}, staff=staff)


# --- registries and notices -------------------------------------------------------------------


@router.get("/registries", response_class=HTMLResponse)
def registries(request: Request, runtime: RuntimeDep, staff: CurrentContext) -> Response:
    with Session(runtime.engine) as session:
        notices = session.exec(
            select(NoticeVersion).order_by(col(NoticeVersion.locale), col(NoticeVersion.id))
        ).all()
    return render(
        request,
        "admin/registries.html",
        {"registry": runtime.registry, "notices": notices},
        staff=staff,
    )


@router.get("/notices", response_class=HTMLResponse)
def notice_diff(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    a: RowId | None = None,
    b: RowId | None = None,
) -> Response:
    """Two notice versions side by side: what was removed and what was added. Without
    ``a`` or ``b``, the newest change (see ``compare_versions``), and a picker for others."""
    with Session(runtime.engine) as session:
        comparison = compare_versions(session, a, b)
    if comparison is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such notice version")
    return render(request, "admin/notice_diff.html", {"c": comparison}, staff=staff)


@router.get("/transfers", response_class=HTMLResponse)
def transfers(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    before: RowId | None = None,
) -> Response:
    """Every hand-off of personal data (to processors, joint users), newest first."""
    query = select(TransferRecord).order_by(col(TransferRecord.id).desc()).limit(100)
    if before:
        query = query.where(col(TransferRecord.id) < before)
    with Session(runtime.engine) as session:
        rows = session.exec(query).all()
    return render(request, "admin/transfers.html", {"rows": rows}, staff=staff)


# --- the audit log ------------------------------------------------------------------------------


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    runtime: RuntimeDep,
    staff: CurrentContext,
    action: Annotated[str | None, Query(max_length=64)] = None,
    before: RowId | None = None,
    verify: bool = False,
) -> Response:
    query = select(AuditEvent).order_by(col(AuditEvent.seq).desc()).limit(100)
    if action:
        query = query.where(AuditEvent.action == action)
    if before:
        query = query.where(col(AuditEvent.seq) < before)
    with Session(runtime.engine) as session:
        events = session.exec(query).all()
        verification = audit.verify(session) if verify else None
    return render(
        request,
        "admin/audit.html",
        {"events": events, "action": action or "", "verification": verification},
        staff=staff,
    )


@router.get("/audit/export")
def audit_export(request: Request, runtime: RuntimeDep, staff: CurrentContext) -> Response:
    """The whole log as JSON lines; the export is itself audited first."""
    with Session(for_writing(runtime.engine)) as session:
        audit.record(session, actor_of(staff.user, request), "audit.exported")
        session.commit()

    def lines() -> Iterator[str]:
        with Session(runtime.engine) as session:
            rows = session.exec(
                select(AuditEvent).order_by(col(AuditEvent.seq)).execution_options(yield_per=1000)
            )
            for event in rows:
                yield json.dumps(audit.as_dict(event), ensure_ascii=False) + "\n"

    return secure(
        StreamingResponse(
            lines(),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": 'attachment; filename="audit.jsonl"'},
        )
    )
