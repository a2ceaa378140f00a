"""The ``mailmag`` command.

Every command reads the settings (``MAILMAG_*``, see docs/configuration.md) and fails on bad
configuration with one line naming the setting, exit status 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import gc
import getpass
import json
import signal
import sys
import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from sqlalchemy import func
from sqlmodel import Session, col, select

from mailer import queue
from mailer.clock import utcnow
from mailer.errors import MailerError
from mailer.inbound import inbound_server
from mailer.private_files import write_private
from mailer.queue import Progress
from subscriptions import audit, consent, edge, operations_cli, parties, provision, schema
from subscriptions.addresses import AddressHasher, normalise_address
from subscriptions.app import create_app
from subscriptions.auth import issue_party_credential, issue_token
from subscriptions.cli_support import (
    connect,
    err,
    fail,
    out,
    run_loop,
    runtime_for,
    start_logging,
    store_for,
)
from subscriptions.db import for_writing
from subscriptions.errors import (
    ConfigurationError,
    InvalidInput,
    MailmagError,
    TransferRefused,
)
from subscriptions.joint_use import export_for
from subscriptions.models import (
    PartyCredential,
    PartyNotice,
    StaffRole,
    StaffUser,
    StaffUserCreate,
)
from subscriptions.settings import load_settings
from subscriptions.staff import create_staff_user, normalise_staff_email
from subscriptions.suppression import suppress_by_staff

app = typer.Typer(
    name="mailmag",
    help="mailmag: e-mail magazines with provable consent.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
admin_app = typer.Typer(help="Staff accounts.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
consent_app = typer.Typer(
    help="The consent ledger: verify it, export evidence.", no_args_is_help=True
)
app.add_typer(consent_app, name="consent")
operations_cli.register(app)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema to the latest version (safe to repeat)."""
    settings = load_settings()
    engine = connect(settings)
    schema.upgrade(engine)
    state = schema.revision_state(engine)
    out.print(f"schema at {state.current} on {engine.url.render_as_string()}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (MAILMAG_HTTP_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (MAILMAG_HTTP_PORT).")] = None,
) -> None:
    """Run the web app and, with no SMTP relay set, a local capture server for outgoing mail.

    This is the embedded default: one process, a SQLite file, nothing else to install.
    """
    settings = load_settings()
    start_logging(settings)
    settings.resolved_secret()
    engine = store_for(settings)
    tune_interpreter()
    listen_host = host or settings.http_host
    listen_port = port or settings.http_port
    if settings.web_processes > 1:
        if settings.captures_mail:
            raise ConfigurationError(
                "MAILMAG_WEB_PROCESSES: more than one web process needs an SMTP relay "
                "(MAILMAG_SMTP_HOST); the capture server belongs to a single process"
            )
        engine.dispose()
        out.print(
            f"mailmag serving on http://{listen_host}:{listen_port} with "
            f"{settings.web_processes} processes  (database {engine.url})"
        )
        uvicorn.run(
            "subscriptions.cli:web_app",
            factory=True,
            workers=settings.web_processes,
            host=listen_host,
            port=listen_port,
            log_config=None,
            log_level=settings.log_level.lower(),
            **edge.uvicorn_options(),
        )
        return
    web = create_app(settings, engine=engine)
    settle_heap()
    runtime = web.state.runtime
    try:
        runtime.start_services()
    except OSError as exc:
        raise ConfigurationError(
            f"MAILMAG_CAPTURE_SMTP_PORT: cannot listen on 127.0.0.1:"
            f"{settings.capture_smtp_port}: {exc.strerror or exc}"
        ) from None
    out.print(f"mailmag serving on http://{listen_host}:{listen_port}  (database {engine.url})")
    if runtime.capture is not None:
        out.print(
            f"no SMTP relay set: capturing mail on 127.0.0.1:{runtime.capture.port}, "
            f"see http://{listen_host}:{listen_port}/_mail"
        )
    uvicorn.run(
        web,
        host=listen_host,
        port=listen_port,
        log_config=None,
        log_level=settings.log_level.lower(),
        **edge.uvicorn_options(),
    )


def web_app() -> FastAPI:
    """The app of one of several web processes (``MAILMAG_WEB_PROCESSES``): uvicorn starts
    each process afresh, and each builds its own from the environment."""
    settings = load_settings()
    start_logging(settings)
    tune_interpreter()
    web = create_app(settings, engine=store_for(settings))
    settle_heap()
    return web


def tune_interpreter() -> None:
    """A web process switches threads every 0.5 ms instead of Python's 5: a request thread
    that holds the store's write turn, then waits on the database, gets the interpreter back
    sooner from the threads parsing other requests, so the turn is held for less time (one
    A/B run under load: about a tenth more one-click unsubscribes a second)."""
    sys.setswitchinterval(0.0005)


def settle_heap() -> None:
    """Once the app is built, move everything alive to the collector's permanent generation
    (``gc.freeze``): the modules, the schema, the routes and the templates are never
    traversed again. A full collection under load had taken 100 ms, a pause every few
    seconds that set the 99th percentile of one-click unsubscribes; now it only walks what
    was made since."""
    gc.collect()
    gc.freeze()


@app.command()
def worker(
    batch: Annotated[int, typer.Option(help="Deliveries claimed at a time.", min=1)] = 500,
) -> None:
    """Run a delivery worker only: claim queued deliveries and send them until stopped.

    Any number of workers may share one PostgreSQL database; stop one with SIGTERM or
    Ctrl-C and it finishes the message in hand first.
    """
    settings = load_settings()
    start_logging(settings)
    runtime = runtime_for(settings)
    delivery = runtime.delivery_worker()
    delivery.config = replace(delivery.config, batch=batch)
    settle_heap()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, delivery.stop)
        out.print(f"delivery worker {delivery.config.name} started")
        await delivery.run()

    run_loop(main())
    out.print(f"delivery worker stopped after {delivery.sent} messages")


@app.command()
def inbound(
    host: Annotated[str | None, typer.Option(help="Listen address (MAILMAG_INBOUND_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (MAILMAG_INBOUND_PORT).")] = None,
) -> None:
    """Receive bounces, complaints and unsubscribe mails for the bounce domain (SMTP).

    Point the MX of MAILMAG_BOUNCE_DOMAIN here (or relay it from your MTA). Only addresses
    mailmag owns are accepted; each message is stored before it is acknowledged.
    """
    settings = load_settings()
    start_logging(settings)
    runtime = runtime_for(settings)
    listen_host = host or settings.inbound_host
    listen_port = port or settings.inbound_port
    server = inbound_server(
        runtime.inbound_handler(), listen_host, listen_port, max_size=settings.inbound_max_bytes
    )
    try:
        server.start()
    except OSError as exc:
        raise ConfigurationError(
            f"MAILMAG_INBOUND_PORT: cannot listen on {listen_host}:{listen_port}: {exc}"
        ) from None
    out.print(f"mailmag inbound listening on {listen_host}:{listen_port}")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop()


@app.command()
def send(
    issue_id: Annotated[int, typer.Argument(help="The issue to send.")],
) -> None:
    """Start an issue (unless it is already sending) and send it from this process, with a
    progress bar, until nothing is left to send now."""
    settings = load_settings()
    runtime = runtime_for(settings)
    try:
        queued = runtime.start_issue(issue_id)
    except MailerError as exc:
        fail(str(exc))
    delivery = runtime.delivery_worker()
    out.print(f"issue {issue_id}: {queued} recipients queued now")

    def progress_of(issue_id: int) -> Progress | None:
        with Session(runtime.engine) as session:
            return queue.progress(session, issue_id)

    async def main() -> Progress | None:
        with RichProgress(
            TextColumn("[bold]issue {task.fields[issue]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.0f}/s"),
            TimeRemainingColumn(),
            console=out,
        ) as bar:
            task = bar.add_task("send", total=None, issue=issue_id, rate=0.0)
            while True:
                handled = await delivery.run_once()
                found = await asyncio.to_thread(progress_of, issue_id)  # off the worker's loop
                if found is None:
                    return None
                bar.update(
                    task, total=found.total, completed=found.done, rate=found.rate_per_second
                )
                if not handled:
                    await delivery.close()
                    return found

    found = run_loop(main())
    if found is None:
        fail(f"there is no issue {issue_id}")
    counts = ", ".join(f"{k} {v}" for k, v in found.counts.items() if v)
    out.print(f"issue {issue_id} is {found.status}: {counts or 'no recipients'}")
    if found.counts.get("deferred"):
        out.print("deferred deliveries are retried later by `mailmag serve` or `mailmag worker`")


joint_app = typer.Typer(help="Joint use with group companies.", no_args_is_help=True)
app.add_typer(joint_app, name="joint-use")


@joint_app.command("export")
def joint_use_export(
    company: Annotated[str, typer.Argument(help="The joint user's key in the registry.")],
    output: Annotated[Path, typer.Option("--out", help="File to write.")],
    fmt: Annotated[str, typer.Option("--format", help="json or csv.")] = "csv",
    fields: Annotated[str, typer.Option(help="Comma-separated subset of its categories.")] = "",
) -> None:
    """Export, for one group company, only its categories and only consenting people;
    the hand-off is recorded as a transfer."""
    if fmt not in ("json", "csv"):
        fail("--format: json or csv")
    settings = load_settings()
    runtime = runtime_for(settings)
    wanted = tuple(f.strip() for f in fields.split(",") if f.strip()) or None
    with Session(for_writing(runtime.engine)) as session:
        try:
            export = export_for(
                session,
                runtime.registry,
                company,
                fields=wanted,
                triggered_by="mailmag joint-use export",
            )
        except TransferRefused as exc:
            fail(str(exc))
        write_private(output, export.as_json() if fmt == "json" else export.as_csv())
        session.commit()
    out.print(f"{len(export.rows)} people exported to {output} (transfer {export.transfer_id})")
    for reason, count in export.left_out.items():
        out.print(f"left out, {reason}: {count}")


parties_app = typer.Typer(
    help="Opt-outs to pass on to processors and joint users.", no_args_is_help=True
)
app.add_typer(parties_app, name="parties")


@parties_app.command("pending")
def parties_pending() -> None:
    """How many opt-out notices wait for each party."""
    settings = load_settings()
    runtime = runtime_for(settings)
    with Session(runtime.engine) as session:
        rows = session.exec(
            select(PartyNotice.party, func.count()).group_by(col(PartyNotice.party))
        ).all()
    if not rows:
        out.print("no notices pending")
    for party, count in rows:
        out.print(f"{party}: {count}")


@parties_app.command("export")
def parties_export(
    party: Annotated[str, typer.Argument(help="Processor or joint-user key.")],
    output: Annotated[Path, typer.Option("--out", help="JSON file to write.")],
) -> None:
    """Write a party's pending opt-out notices to a file for them, and clear them (the
    hand-over is recorded as a transfer)."""
    settings = load_settings()
    runtime = runtime_for(settings)
    with Session(for_writing(runtime.engine)) as session:
        notices = parties.hand_over(session, party, triggered_by="mailmag parties export")
        write_private(
            output, json.dumps({"party": party, "notices": notices}, ensure_ascii=False, indent=2)
        )
        session.commit()
    out.print(f"{len(notices)} notices for {party} written to {output}")


credential_app = typer.Typer(
    help="Machine credentials of processors and joint users for /processor/v1.",
    no_args_is_help=True,
)
parties_app.add_typer(credential_app, name="credential")


@credential_app.command("create")
def credential_create(
    party: Annotated[str, typer.Argument(help="Processor or joint-user key in the registry.")],
    days: Annotated[int, typer.Option(help="Days until it expires.", min=1, max=366)] = 90,
    label: Annotated[str, typer.Option(help="What the credential is for.")] = "",
) -> None:
    """Create a credential and print it once (only its hash is kept)."""
    settings = load_settings()
    runtime = runtime_for(settings)
    if runtime.registry.processor(party) is not None:
        kind = "processor"
    elif runtime.registry.joint_user(party) is not None:
        kind = "joint_user"
    else:
        fail(f"{party!r} is neither a processor nor a joint user in the registry")
    with Session(for_writing(runtime.engine)) as session:
        credential, token = issue_party_credential(
            session, party, kind, expires_at=utcnow() + timedelta(days=days), label=label
        )
        session.commit()
        out.print(
            f"credential #{credential.id} for {party}, expires {credential.expires_at:%Y-%m-%d}"
        )
    typer.echo(token)


@credential_app.command("revoke")
def credential_revoke(
    credential_id: Annotated[int, typer.Argument(help="The credential's number.")],
) -> None:
    """Revoke a credential; it is refused from the next request on."""
    settings = load_settings()
    runtime = runtime_for(settings)
    with Session(for_writing(runtime.engine)) as session:
        credential = session.get(PartyCredential, credential_id)
        if credential is None:
            fail(f"there is no credential #{credential_id}")
        credential.revoked_at = credential.revoked_at or utcnow()
        session.add(credential)
        session.commit()
    out.print(f"credential #{credential_id} revoked")


@app.command("provide")
def provide_command(
    party: Annotated[str, typer.Option(help="Who receives the data (e.g. a police station).")],
    basis: Annotated[str, typer.Option(help="law | life | public-health | authority")],
    reference: Annotated[str, typer.Option(help="The request: order number, letter reference.")],
    address: Annotated[list[str], typer.Option(help="Whose data (repeat the option).")],
    fields: Annotated[str, typer.Option(help="Comma-separated fields to hand over.")],
    staff: Annotated[str, typer.Option(help="Who decided, for the record.")],
    output: Annotated[Path, typer.Option("--out", help="JSON file to write.")],
) -> None:
    """Provide personal data to a third party: only with a legal basis, always recorded."""
    settings = load_settings()
    runtime = runtime_for(settings)
    with Session(for_writing(runtime.engine)) as session:
        try:
            bundle = provision.provide(
                session,
                runtime.optin.hasher,
                party=party,
                basis=basis,
                reference=reference,
                addresses=address,
                fields=tuple(f.strip() for f in fields.split(",") if f.strip()),
                staff=staff,
            )
        except (TransferRefused, InvalidInput) as exc:
            fail(str(exc))
        write_private(output, provision.as_json(bundle))
        session.commit()
    out.print(f"{len(bundle['people'])} people provided to {party}; recorded as a transfer")


@app.command("suppress")
def suppress_command(
    address: Annotated[str, typer.Argument(help="The address never to mail again.")],
    note: Annotated[str, typer.Option(help="Why: who asked, when, how (kept with the entry).")],
) -> None:
    """Suppress an address at once on a person's request by phone or letter: every
    subscription stops, with consent events; only a fresh confirmed sign-up lifts it."""
    settings = load_settings()
    runtime = runtime_for(settings)
    with Session(for_writing(runtime.engine)) as session:
        try:
            ended = suppress_by_staff(
                session,
                hasher=runtime.optin.hasher,
                lifecycle=runtime.optin.lifecycle,
                address=address,
                note=note,
            )
        except InvalidInput as exc:
            fail(str(exc))
        session.commit()
    out.print(f"suppressed; {ended} subscription(s) stopped")


@admin_app.command("create")
def admin_create(
    email: Annotated[str, typer.Option(prompt=True, help="The staff member's login address.")],
    role: Annotated[StaffRole, typer.Option(help="What the account may do.")] = StaffRole.admin,
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Create a staff account (asks for the password twice unless --password-stdin)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            fail("the passwords differ")
    try:
        data = StaffUserCreate(email=email, role=role, display_name=name, password=password)
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"{first['loc'][0]}: {first['msg']}")
    settings = load_settings()
    engine = store_for(settings)
    with Session(for_writing(engine)) as session:
        user = create_staff_user(session=session, data=data)
        audit.record(
            session,
            operations_cli.shell_actor(getpass.getuser()),
            "staff.account_created",
            target=f"staff:{user.id} {user.email}",
            detail={"role": user.role.value},
        )
        session.commit()
        out.print(f"created {user.role.value} account {user.email}")


@admin_app.command("token")
def admin_token(
    email: Annotated[str, typer.Option(help="The staff member the token acts for.")],
    label: Annotated[str, typer.Option(help="What the token is for.")] = "",
    days: Annotated[int, typer.Option(help="Days until it expires (0: never).", min=0)] = 90,
) -> None:
    """Create a personal API token for the JSON API; it is shown once, store it safely."""
    settings = load_settings()
    engine = store_for(settings)
    with Session(for_writing(engine)) as session:
        user = session.exec(
            select(StaffUser).where(StaffUser.email == normalise_staff_email(email))
        ).first()
        if user is None or not user.active:
            fail(f"no active staff account {email}")
        expires = utcnow() + timedelta(days=days) if days else None
        token = issue_token(session, user, label=label, expires_at=expires)
        audit.record(
            session,
            operations_cli.shell_actor(getpass.getuser()),
            "staff.token_created",
            target=f"staff:{user.id} {user.email}",
            detail={"label": label},
        )
        session.commit()
    sys.stdout.write(token + "\n")


@consent_app.command("verify")
def consent_verify() -> None:
    """Walk the whole consent ledger and prove it intact, or name the first bad row.

    Exit status 0 when intact, 1 when a row was altered, removed, inserted or reordered.
    """
    settings = load_settings()
    engine = store_for(settings)
    hasher = AddressHasher(settings.resolved_secret())
    with Session(engine) as session:
        result = consent.verify(session, digest=hasher.digest)
    if result.ok:
        out.print(f"consent ledger intact: {result.checked} rows verified")
        return
    err.print(f"consent ledger BROKEN at row {result.seq}: {result.problem}", markup=False)
    raise typer.Exit(1)


@consent_app.command("evidence")
def consent_evidence(
    email: Annotated[str, typer.Argument(help="The person's address (also after erasure).")],
) -> None:
    """Print, as JSON, every ledger row about one address and the notice texts they cite."""
    settings = load_settings()
    engine = store_for(settings)
    hasher = AddressHasher(settings.resolved_secret())
    try:
        address = normalise_address(email)
    except InvalidInput as exc:
        fail(str(exc))
    with Session(engine) as session:
        bundle = consent.evidence(session, subject_digest=hasher.digest(address))
    sys.stdout.write(json.dumps(bundle, ensure_ascii=False, indent=2) + "\n")


def main() -> None:
    try:
        app()
    except MailmagError as exc:
        err.print(f"mailmag: {exc}", highlight=False, markup=False)
        sys.exit(2)
