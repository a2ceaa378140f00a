"""The operator's commands: exports, the audit log, backups, imports, retention, incidents."""

from __future__ import annotations

import getpass
import io
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichProgress
from sqlmodel import Session, col, select

from mailer.clock import utcnow
from mailer.private_files import open_private, write_private
from subscriptions import audit, backup, csvfiles, incidents
from subscriptions.addresses import normalise_address
from subscriptions.audit import Actor
from subscriptions.cli_support import (
    connect,
    err,
    fail,
    out,
    require_schema,
    runtime_for,
    store_for,
)
from subscriptions.db import for_writing
from subscriptions.errors import InvalidInput
from subscriptions.exports import EXPORTABLE, export_magazine
from subscriptions.importing import Importer
from subscriptions.models import (
    AuditEvent,
    Incident,
    IncidentKind,
    LegalHold,
    SubscriptionStatus,
)
from subscriptions.settings import load_settings

audit_app = typer.Typer(help="The audit log: verify it, export it.", no_args_is_help=True)
incident_app = typer.Typer(
    help="The incident register: affected people, whether to report, by when.",
    no_args_is_help=True,
)
hold_app = typer.Typer(
    help="Legal holds: keep everything about an address from retention purges.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
    app.command("export")(export_command)
    app.command("backup")(backup_command)
    app.command("restore")(restore_command)
    app.command("import")(import_command)
    app.add_typer(hold_app, name="hold")
    app.add_typer(incident_app, name="incident")


def shell_actor(staff: str) -> Actor:
    """Who acts from the shell: the login user, and the staff member they say they are."""
    return Actor(f"cli:{getpass.getuser()} as {staff}", "terminal")


def export_command(
    magazine: Annotated[str, typer.Argument(help="The magazine's slug.")],
    fields: Annotated[str, typer.Option(help=f"Comma-separated, from: {', '.join(EXPORTABLE)}.")],
    output: Annotated[Path, typer.Option("--out", help="File to write.")],
    staff: Annotated[str, typer.Option(help="Who exports (the privacy officer), for the audit.")],
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    status: Annotated[
        list[SubscriptionStatus] | None, typer.Option(help="Subscription states (repeat).")
    ] = None,
) -> None:
    """Export a magazine's subscribers, only the fields named; recorded in the audit log."""
    settings = load_settings()
    engine = store_for(settings)
    partial = output.with_name(output.name + ".partial")
    partial.unlink(missing_ok=True)  # so that it is created anew, 0600
    with Session(for_writing(engine)) as session:
        try:
            with open_private(partial, "w", encoding="utf-8", newline="") as handle:
                rows = export_magazine(
                    session,
                    shell_actor(staff),
                    magazine=magazine,
                    fields=fields.split(","),
                    fmt=fmt,
                    out=handle,
                    statuses=status or [SubscriptionStatus.confirmed],
                )
        except InvalidInput as exc:
            partial.unlink(missing_ok=True)
            fail(str(exc))
        session.commit()
    partial.replace(output)
    out.print(f"{rows} subscribers of {magazine} written to {output} (audited)")


@audit_app.command("verify")
def audit_verify() -> None:
    """Walk the whole audit log and prove it intact, or name the first bad row (exit 1)."""
    settings = load_settings()
    engine = store_for(settings)
    with Session(engine) as session:
        result = audit.verify(session)
    if result.ok:
        out.print(f"audit log intact: {result.checked} rows verified")
        return
    err.print(f"audit log BROKEN at row {result.seq}: {result.problem}", markup=False)
    raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    since: Annotated[int, typer.Option(help="Only rows after this position.")] = 0,
) -> None:
    """Print the audit log as JSON lines (one event per line)."""
    settings = load_settings()
    engine = store_for(settings)
    with Session(engine) as session:
        rows = session.exec(
            select(AuditEvent)
            .where(col(AuditEvent.seq) > since)
            .order_by(col(AuditEvent.seq))
            .execution_options(yield_per=1000)
        )
        for event in rows:
            sys.stdout.write(json.dumps(audit.as_dict(event), ensure_ascii=False) + "\n")


def backup_command(
    output: Annotated[Path, typer.Argument(help="The backup file to write.")],
    staff: Annotated[str, typer.Option(help="Who makes the backup, for the audit.")] = "operator",
) -> None:
    """Back up the whole store while it runs (SQLite online backup, or pg_dump)."""
    settings = load_settings()
    engine = store_for(settings)
    with Session(for_writing(engine)) as session:
        audit.record(session, shell_actor(staff), "backup", target=str(output))
        session.commit()
    try:
        digest = backup.backup(engine, output)
    except backup.BackupError as exc:
        fail(str(exc))
    out.print(f"backup written to {output}  sha256 {digest}")


def restore_command(
    source: Annotated[Path, typer.Argument(help="A file written by mailmag backup.")],
    force: Annotated[bool, typer.Option(help="Replace a store that holds subscribers.")] = False,
    staff: Annotated[str, typer.Option(help="Who restores, for the audit.")] = "operator",
) -> None:
    """Replace the store with a backup (stop the service first), then verify both chains."""
    settings = load_settings()
    engine = connect(settings)
    try:
        checked = backup.restore(engine, source, force=force)
    except backup.BackupError as exc:
        fail(str(exc))
    require_schema(engine)
    with Session(for_writing(engine)) as session:
        audit.record(
            session,
            shell_actor(staff),
            "restore",
            target=str(source),
            detail={"sha256": backup.sha256_of(source)},
        )
        session.commit()
    out.print(
        f"restored {checked.subscribers} subscribers; consent ledger intact "
        f"({checked.consent_rows} rows), audit log intact ({checked.audit_rows} rows)"
    )


def import_command(
    file: Annotated[Path, typer.Argument(help="CSV with a header row; see docs/operations.md.")],
    magazine: Annotated[str, typer.Option(help="The magazine's slug.")],
    staff: Annotated[str, typer.Option(help="Who imports, for the record.")],
    basis: Annotated[
        str,
        typer.Option(help="Legal basis of the batch; without it every row comes in pending."),
    ] = "",
    notice_file: Annotated[
        Path | None, typer.Option(help="The notice text those people saw (stored by its hash).")
    ] = None,
    confirm_by_mail: Annotated[
        bool, typer.Option(help="Send pending rows the usual confirmation request.")
    ] = False,
    errors: Annotated[
        Path | None, typer.Option(help="Write the refused rows (line, reason) to this CSV.")
    ] = None,
) -> None:
    """Import subscribers from CSV: streaming, resumable, never re-subscribing anyone."""
    settings = load_settings()
    runtime = runtime_for(settings)
    if not file.is_file():
        fail(f"there is no file {file}")
    runtime.sync_magazines()
    importer = Importer(runtime.engine, runtime.optin)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with RichProgress(*columns, console=err) as bar:
        task = bar.add_task(f"importing {file.name}", total=file.stat().st_size)
        try:
            report = importer.run(
                file,
                magazine=magazine,
                actor=shell_actor(staff),
                basis=basis,
                notice_file=notice_file,
                confirm_by_mail=confirm_by_mail,
                progress=lambda done: bar.update(task, completed=done),
            )
        except InvalidInput as exc:
            fail(str(exc))
        bar.update(task, completed=file.stat().st_size)
    if report.already_imported:
        out.print(f"{file} was imported before (batch {report.batch_id}): nothing changed")
        return
    if errors is not None:
        table = io.StringIO(newline="")
        writer = csvfiles.writer(table)
        writer.writerow(["line", "reason"])
        writer.writerows(report.problems)
        write_private(errors, table.getvalue())
    counts = report.counts
    out.print(
        f"batch {report.batch_id}: {counts['rows']} rows, {counts['confirmed']} confirmed, "
        f"{counts['pending']} pending, {counts['unchanged']} unchanged, "
        f"{counts['refused']} refused"
    )
    for line, reason in report.problems[:10]:
        err.print(f"  line {line}: {reason}", markup=False, highlight=False)


@hold_app.command("add")
def hold_add(
    address: Annotated[str, typer.Argument(help="The address (also of an erased person).")],
    reason: Annotated[str, typer.Option(help="Why: the dispute, order or request it serves.")],
    staff: Annotated[str, typer.Option(help="Who sets it, for the record.")],
) -> None:
    """Stop every retention purge of this address's records until the hold is released."""
    settings = load_settings()
    runtime = runtime_for(settings)
    try:
        digest = runtime.optin.hasher.digest(normalise_address(address))
    except InvalidInput as exc:
        fail(str(exc))
    if not reason.strip():
        fail("give the reason for the hold")
    with Session(for_writing(runtime.engine)) as session:
        hold = LegalHold(subject_digest=digest, reason=reason.strip()[:500], created_by=staff)
        session.add(hold)
        session.flush()
        audit.record(
            session, shell_actor(staff), "legal_hold", target=f"hold:{hold.id}", subjects=[digest]
        )
        session.commit()
        out.print(f"legal hold #{hold.id} set")


@hold_app.command("release")
def hold_release(
    hold_id: Annotated[int, typer.Argument(help="The hold's number.")],
    staff: Annotated[str, typer.Option(help="Who releases it, for the record.")],
) -> None:
    """Release a hold: the address's records follow the retention rules again."""
    settings = load_settings()
    engine = store_for(settings)
    with Session(for_writing(engine)) as session:
        hold = session.get(LegalHold, hold_id)
        if hold is None or hold.released_at is not None:
            fail(f"there is no active legal hold #{hold_id}")
        hold.released_at = utcnow()
        session.add(hold)
        audit.record(
            session,
            shell_actor(staff),
            "legal_hold_released",
            target=f"hold:{hold_id}",
            subjects=[hold.subject_digest],
        )
        session.commit()
    out.print(f"legal hold #{hold_id} released")


@hold_app.command("list")
def hold_list() -> None:
    """The active holds."""
    settings = load_settings()
    engine = store_for(settings)
    with Session(engine) as session:
        holds = session.exec(
            select(LegalHold)
            .where(col(LegalHold.released_at).is_(None))
            .order_by(col(LegalHold.id))
        ).all()
    if not holds:
        out.print("no active legal holds")
    for hold in holds:
        out.print(
            f"#{hold.id}  since {hold.created_at:%Y-%m-%d}  by {hold.created_by}: {hold.reason}"
        )


@incident_app.command("open")
def incident_open(
    title: Annotated[str, typer.Option(help="What happened, in a line.")],
    kind: Annotated[IncidentKind, typer.Option(help="leak, loss, damage or suspected.")],
    discovered: Annotated[
        datetime, typer.Option(help="When it was discovered (ISO 8601, UTC if no zone).")
    ],
    staff: Annotated[str, typer.Option(help="Who records it.")],
    description: Annotated[str, typer.Option(help="Details.")] = "",
    sensitive: Annotated[bool, typer.Option(help="Sensitive personal information.")] = False,
    financial: Annotated[bool, typer.Option(help="Misuse may cause financial damage.")] = False,
    wrongful: Annotated[
        bool, typer.Option(help="Unauthorised access, theft or another wrongful purpose.")
    ] = False,
) -> None:
    """Open an incident."""
    settings = load_settings()
    engine = store_for(settings)
    when = discovered if discovered.tzinfo else discovered.replace(tzinfo=UTC)
    with Session(for_writing(engine)) as session:
        try:
            incident = incidents.open_incident(
                session,
                shell_actor(staff),
                title=title,
                kind=kind,
                discovered_at=when,
                description=description,
                sensitive_data=sensitive,
                financial_harm=financial,
                unauthorised_access=wrongful,
            )
        except InvalidInput as exc:
            fail(str(exc))
        session.commit()
        out.print(f"incident #{incident.id} opened")


@incident_app.command("link")
def incident_link(
    incident_id: Annotated[int, typer.Argument(help="The incident's number.")],
    staff: Annotated[str, typer.Option(help="Who links them.")],
    address: Annotated[list[str] | None, typer.Option(help="An affected address (repeat).")] = None,
    addresses: Annotated[
        Path | None, typer.Option(help="A file of affected addresses, one per line.")
    ] = None,
    magazine: Annotated[str, typer.Option(help="Everyone who subscribed to this magazine.")] = "",
) -> None:
    """Link affected people to an incident."""
    settings = load_settings()
    runtime = runtime_for(settings)
    raw = list(address or [])
    if addresses is not None:
        raw += [line.strip() for line in addresses.read_text(encoding="utf-8").splitlines()]
    digests = []
    for line in filter(None, raw):
        try:
            digests.append(runtime.optin.hasher.digest(normalise_address(line)))
        except InvalidInput as exc:
            fail(f"{line}: {exc.message}")
    actor = shell_actor(staff)
    with Session(for_writing(runtime.engine)) as session:
        try:
            incident = incidents.get(session, incident_id)
            added = incidents.link_addresses(session, actor, incident, digests) if digests else 0
            if magazine:
                added += incidents.link_magazine(session, actor, incident, magazine)
        except InvalidInput as exc:
            fail(str(exc))
        assessment = incidents.assess(session, incident)
        session.commit()
    out.print(f"{added} people linked; {assessment.people} affected in all")


@incident_app.command("show")
def incident_show(
    incident_id: Annotated[int, typer.Argument(help="The incident's number.")],
) -> None:
    """The incident, how many people it affects, whether and by when it must be reported."""
    settings = load_settings()
    engine = store_for(settings)
    with Session(engine) as session:
        try:
            incident = incidents.get(session, incident_id)
        except InvalidInput as exc:
            fail(str(exc))
        sys.stdout.write(
            json.dumps(incidents.summary(session, incident), ensure_ascii=False, indent=2) + "\n"
        )


@incident_app.command("list")
def incident_list() -> None:
    """Open incidents first, with their report deadlines."""
    settings = load_settings()
    engine = store_for(settings)
    with Session(engine) as session:
        rows = session.exec(
            select(Incident).order_by(col(Incident.closed_at).is_not(None), col(Incident.id))
        ).all()
        if not rows:
            out.print("no incidents recorded")
        for incident in rows:
            found = incidents.assess(session, incident)
            due = (
                f"report: preliminary by {found.preliminary_due:%Y-%m-%d}, "
                f"final by {found.final_due:%Y-%m-%d}"
                if found.must_report and found.final_due and found.preliminary_due
                else "no report required"
            )
            state = "closed" if incident.closed_at else "open"
            out.print(
                f"#{incident.id} [{state}] {incident.title}: {found.people} people; {due}",
                markup=False,
            )


@incident_app.command("mark")
def incident_mark(
    incident_id: Annotated[int, typer.Argument(help="The incident's number.")],
    step: Annotated[str, typer.Argument(help="reported, notified or closed.")],
    staff: Annotated[str, typer.Option(help="Who records the step.")],
) -> None:
    """Record a step: reported to the Commission, people notified, closed."""
    settings = load_settings()
    engine = store_for(settings)
    with Session(for_writing(engine)) as session:
        try:
            incidents.mark(session, shell_actor(staff), incidents.get(session, incident_id), step)
        except InvalidInput as exc:
            fail(str(exc))
        session.commit()
    out.print(f"incident #{incident_id}: {step}")
