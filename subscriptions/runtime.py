"""What one mailmag process holds while it runs: settings, the engine, and the services built
from them, wired once here and passed down explicitly. Nothing here reads the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path

from fastapi.templating import Jinja2Templates
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.brake import BrakePolicy
from mailer.capture import CaptureServer
from mailer.inbound import InboundHandler
from mailer.ratelimit import Limit, RateLimiter, SharedWindow, SlidingWindow
from mailer.retry import RetryPolicy
from mailer.scheduler import Scheduler
from mailer.sending import start_issue
from mailer.signing import DKIMSigner
from mailer.transport import SMTPRelay, SMTPTransport, TLSMode, Transport
from mailer.verp import DeliveryTokens
from mailer.worker import DeliveryWorker, WorkerConfig
from subscriptions import maintenance
from subscriptions.addresses import AddressHasher
from subscriptions.audience import SenderIdentity, StoreAudience, StorePreparer
from subscriptions.commits import GroupCommit
from subscriptions.db import for_writing
from subscriptions.errors import ConfigurationError
from subscriptions.feedback import StoreFeedback
from subscriptions.lifecycle import Lifecycle
from subscriptions.links import LinkPolicy, Links
from subscriptions.models import Magazine
from subscriptions.notice import NoticeBook
from subscriptions.outbox import OutboxSender
from subscriptions.paths import TEMPLATES_DIR
from subscriptions.privacy_requests import Desk
from subscriptions.readiness import Readiness
from subscriptions.registry import Registry, load_registry
from subscriptions.self_service import SelfService
from subscriptions.settings import Settings
from subscriptions.staff import LoginGuard, SecretBox
from subscriptions.subscribing import OptIn, OptInPolicy
from subscriptions.system_mail import Sender, SystemMailer
from subscriptions.tokens import LinkSigner

HOUR = 3600
STOP_GRACE_SECONDS = 10


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    registry: Registry
    optin: OptIn
    self_service: SelfService
    desk: Desk
    links: Links
    mailer: SystemMailer
    audience: StoreAudience
    preparer: StorePreparer
    delivery_tokens: DeliveryTokens
    templates: Jinja2Templates = field(
        default_factory=lambda: Jinja2Templates(directory=TEMPLATES_DIR)
    )
    login_guard: LoginGuard = field(default_factory=LoginGuard)
    commits: GroupCommit = field(init=False)  # the hot public writes, committed in groups
    readiness: Readiness = field(init=False)
    capture: CaptureServer | None = None
    outbox: OutboxSender | None = None
    worker: DeliveryWorker | None = None
    scheduler: Scheduler | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.commits = GroupCommit(self.engine)
        self.readiness = Readiness(self.engine)

    def secret_box(self) -> SecretBox:
        """Seals staff TOTP seeds with a key derived from the app secret."""
        return SecretBox(self.settings.resolved_secret())

    @property
    def captured_mail_dir(self) -> Path:
        return self.settings.data_dir / "captured-mail"

    # --- services beside the web app ---------------------------------------------------------

    def start_services(self) -> None:
        """Start the capture server on the embedded default (before the event loop runs)."""
        if self.settings.captures_mail and self.capture is None:
            self.capture = CaptureServer(self.captured_mail_dir, self.settings.capture_smtp_port)
            self.capture.start()

    def stop_services(self) -> None:
        if self.capture is not None:
            self.capture.stop()
            self.capture = None

    def transport(self) -> Transport:
        """A transport for issues (the lean client unless MAILMAG_SMTP_ISSUE_CLIENT says)."""
        capture_port = self.capture.port if self.capture is not None else None
        return SMTPTransport(self.settings.smtp_relay(capture_port=capture_port))

    def system_transport(self) -> Transport:
        """A transport for system mail and test sends: aiosmtplib, to the same relay."""
        capture_port = self.capture.port if self.capture is not None else None
        return SMTPTransport(self.settings.smtp_relay(capture_port=capture_port, system=True))

    def inbound_handler(self) -> InboundHandler:
        feedback = self.feedback()
        domain = self.settings.bounce_domain or self.settings.sender_domain
        return InboundHandler(feedback, feedback, self.delivery_tokens, domain)

    def feedback(self) -> StoreFeedback:
        settings = self.settings
        return StoreFeedback(
            self.engine,
            self.optin.lifecycle,
            settings.soft_bounce_threshold,
            BrakePolicy(
                complaint_rate=settings.brake_complaint_rate,
                bounce_rate=settings.brake_bounce_rate,
                block_rate=settings.brake_block_rate,
                min_deliveries=settings.brake_min_deliveries,
            ),
        )

    def routes(self) -> dict[str, Transport]:
        """A transport per processor with an SMTP route (all to the capture server when no
        relay is configured, so the embedded default never mails anyone for real)."""
        routes: dict[str, Transport] = {}
        settings = self.settings
        for processor in self.registry.processors:
            if processor.smtp is None:
                continue
            if settings.captures_mail:
                routes[processor.key] = self.transport()
                continue
            password = settings.processor_passwords.get(processor.key)
            routes[processor.key] = SMTPTransport(
                SMTPRelay(
                    host=processor.smtp.host,
                    port=processor.smtp.port,
                    tls=TLSMode(processor.smtp.tls),
                    username=processor.smtp.username,
                    password=password.get_secret_value() if password else None,
                    timeout=settings.smtp_timeout,
                    pool_size=settings.smtp_pool_size,
                    local_hostname=settings.ehlo_host,
                    client=settings.smtp_issue_client,
                )
            )
        return routes

    @property
    def retry_policy(self) -> RetryPolicy:
        """How deferred deliveries are retried, by the worker and the pull API alike."""
        return RetryPolicy(deadline=timedelta(days=self.settings.retry_days))

    def delivery_worker(self) -> DeliveryWorker:
        return DeliveryWorker(
            self.engine,
            self.audience,
            self.preparer,
            self.transport(),
            self.delivery_tokens,
            WorkerConfig(
                per_second=self.settings.send_rate or None,
                lease=timedelta(seconds=self.settings.delivery_lease_seconds),
                connections=self.settings.smtp_pool_size,
                retry=self.retry_policy,
            ),
            bounces=self.feedback(),
            routes=self.routes(),
        )

    def start_issue(self, issue_id: int) -> int:
        return start_issue(self.engine, self.audience, self.preparer, issue_id)

    def nudge_worker(self) -> None:
        if self.worker is not None:
            self.worker.nudge()

    def housekeeping(self) -> None:
        maintenance.run_once(
            self.engine,
            self.optin,
            timedelta(minutes=self.settings.form_token_minutes),
            timedelta(days=self.settings.inbound_retention_days),
            timedelta(days=self.settings.transfer_retention_days),
            timedelta(days=self.settings.consent_retention_days),
        )
        with Session(for_writing(self.engine)) as session:
            if self.desk.remind(session):
                session.commit()
                self.wake_outbox()

    async def start_loops(self, *, delivery: bool = True) -> None:
        """Start the loops of the process: the system-mail outbox always; with ``delivery``
        also a delivery worker and the scheduler (which runs only while this process leads)."""
        self.outbox = OutboxSender(
            self.engine,
            self.system_transport(),
            self.settings.sender_address,
            signer=dkim_signer(self.settings),
        )
        self._tasks.append(asyncio.create_task(self.outbox.run(), name="outbox"))
        if delivery:
            self.worker = self.delivery_worker()
            self._tasks.append(asyncio.create_task(self.worker.run(), name="delivery"))
            self.scheduler = Scheduler(
                self.engine,
                self.start_issue,
                housekeeping=self.housekeeping,
                on_started=self.nudge_worker,
            )
            self.scheduler.start()

    async def stop_loops(self) -> None:
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.stop)
            self.scheduler = None
        if self.worker is not None:
            self.worker.stop()
        if self.outbox is not None:
            self.outbox.stop()
        for task in self._tasks:
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_GRACE_SECONDS)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks.clear()
        if self.outbox is not None:
            await self.outbox.transport.close()

    def wake_outbox(self) -> None:
        if self.outbox is not None:
            self.outbox.nudge()

    def sync_magazines(self) -> None:
        """Create the registry's magazines that the store lacks, and refresh their texts."""
        with Session(for_writing(self.engine)) as session:
            existing = {m.slug: m for m in session.exec(select(Magazine)).all()}
            for entry in self.registry.magazines:
                magazine = existing.get(entry.slug) or Magazine(slug=entry.slug, title={})
                magazine.title = entry.title.model_dump()
                magazine.description = entry.description.model_dump()
                magazine.purpose = entry.purpose
                session.add(magazine)
            session.commit()


def dkim_signer(settings: Settings) -> DKIMSigner | None:
    if settings.dkim_private_key_file is None:
        return None
    try:
        key = settings.dkim_private_key_file.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"MAILMAG_DKIM_PRIVATE_KEY_FILE: cannot read it: {exc}") from None
    return DKIMSigner(
        domain=settings.dkim_domain or settings.sender_domain,
        selector=settings.dkim_selector,
        private_key=key,
    )


def rate_limiter(
    settings: Settings, engine: Engine, secret: bytes, scope: str, limit: Limit
) -> RateLimiter:
    """A limit that holds across every web process: kept in the database on PostgreSQL
    (any number of processes and hosts) and on SQLite when more than one web process
    serves; in memory for the embedded single process, where it is exact and free."""
    if engine.dialect.name != "postgresql" and settings.web_processes == 1:
        return SlidingWindow(limit)
    key = hmac.new(secret, b"rate limit keys", hashlib.sha256).digest()

    def digest(value: str) -> str:
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]

    return SharedWindow(engine, scope, limit, digest)


def build_runtime(settings: Settings, engine: Engine) -> Runtime:
    secret = settings.resolved_secret()
    registry = load_registry(settings.registry_file)
    hasher = AddressHasher(secret)
    links = Links(
        LinkSigner(secret),
        LinkPolicy(
            base_url=str(settings.base_url),
            confirm_seconds=settings.pending_days * 24 * HOUR,
            preferences_seconds=settings.preferences_link_days * 24 * HOUR,
            erase_seconds=settings.erase_link_hours * HOUR,
            form_seconds=settings.form_token_minutes * 60,
        ),
    )
    lifecycle = Lifecycle(hasher)
    delivery_tokens = DeliveryTokens(secret)
    limits = partial(rate_limiter, settings, engine, secret)
    mailer = SystemMailer(
        Sender(
            name=settings.sender_name,
            address=settings.sender_address,
            base_url=str(settings.base_url),
            operator=registry.operator.name,
            contact=registry.contact_point,
        )
    )
    optin = OptIn(
        registry=registry,
        notices=NoticeBook(registry),
        hasher=hasher,
        lifecycle=lifecycle,
        links=links,
        deliveries=delivery_tokens,
        mailer=mailer,
        per_ip=limits("sign-up/ip", Limit(settings.subscribe_per_ip, HOUR)),
        per_address=limits("sign-up/address", Limit(settings.subscribe_per_address, HOUR)),
        policy=OptInPolicy(
            pending=timedelta(days=settings.pending_days),
            notify_interval=timedelta(hours=settings.notify_interval_hours),
        ),
    )
    domain = settings.bounce_domain or settings.sender_domain
    self_service = SelfService(lifecycle=lifecycle, hasher=hasher)
    return Runtime(
        settings=settings,
        engine=engine,
        registry=registry,
        optin=optin,
        self_service=self_service,
        desk=Desk(
            hasher,
            links,
            mailer,
            self_service,
            settings.privacy_request_days,
            per_client=limits("contact/ip", Limit(10, HOUR)),
            per_address=limits("contact/address", Limit(3, 24 * HOUR)),
        ),
        links=links,
        mailer=mailer,
        audience=StoreAudience(engine, registry),
        preparer=StorePreparer(
            engine,
            registry,
            SenderIdentity(
                name=settings.sender_name,
                address=settings.sender_address,
                bounce_domain=domain,
                list_id_domain=settings.sender_domain,
                link_base=str(settings.base_url),
            ),
            dkim_signer(settings),
        ),
        delivery_tokens=delivery_tokens,
        login_guard=LoginGuard.for_secret(secret),
    )
