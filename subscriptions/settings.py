"""Settings: the only module that reads the environment.

Every setting has the prefix ``MAILMAG_`` (``MAILMAG_DATABASE_URL``, ``MAILMAG_SMTP_HOST``...)
and may also come from a ``.env`` file in the working directory. Components never read the
environment themselves: they take the frozen config objects built here (``SMTPRelay``,
``Identity``), so tests construct them directly.

Embedded default: with nothing set, mailmag keeps a SQLite file ``mailmag.db`` in the working
directory, generates a secret key once into ``mailmag.secret`` beside it (mode 0600), and,
with no SMTP relay configured, captures outgoing mail locally instead of sending it.

Outside development mode (``MAILMAG_ENVIRONMENT=production``) a missing or placeholder secret
key is refused, and so are a capture server standing in for a relay and a base URL that is not
``https://`` (RFC 8058 one-click unsubscribe requires HTTPS links, and mailbox providers ignore
the header otherwise).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from mailer.private_files import private_directory, write_private
from mailer.transport import SMTPClient, SMTPRelay, TLSMode
from subscriptions.errors import ConfigurationError

PLACEHOLDER_SECRETS = frozenset({"", "changethis", "change-me", "changeme", "secret", "dev"})
MIN_SECRET_LENGTH = 32
SECRET_FILE_NAME = "mailmag.secret"  # noqa: S105 (a file name)
_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _address_literal(value: str) -> bool:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 4.1.3)."""
    if not (value.startswith("[") and value.endswith("]")):
        return False
    inner = value[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


@cache
def _machine_name() -> str:
    """This machine's fully qualified name, looked up once (it may ask the resolver)."""
    return socket.getfqdn()


class Environment(StrEnum):
    development = "development"
    production = "production"


class Settings(BaseSettings):
    """Everything an operator can configure; docs/configuration.md is the reference."""

    model_config = SettingsConfigDict(
        env_prefix="MAILMAG_", env_file=".env", extra="ignore", frozen=True
    )

    environment: Environment = Environment.development
    data_dir: Path = Field(
        default=Path("."),
        description="Where the embedded SQLite file, the generated secret and captured mail live.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; empty means sqlite:///<data_dir>/mailmag.db. "
        "postgresql://user@host/db is driven with psycopg 3.",
    )
    base_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("http://127.0.0.1:8000"),
        description="Public URL of the web app, used in every link mailmag sends; "
        "unset = http://<http_host>:<http_port>. Production requires https://.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Signs tokens and keys address hashes. Never change it once mail has gone "
        "out: old unsubscribe links and the suppression list depend on it.",
    )
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=1, le=65535)] = 8000
    web_processes: Annotated[int, Field(ge=1, le=64)] = Field(
        default=1,
        description="Web processes of `mailmag serve`, sharing its port. One Python process "
        "uses one core; more take more sign-ups a second (one-click unsubscribes gain "
        "nothing: every process's writes take turns with the consent ledger's head, and on "
        "2 cores with PostgreSQL two do fewer than one). Each also runs a delivery worker "
        "and the system-mail outbox. More "
        "than one needs an SMTP relay (MAILMAG_SMTP_HOST): the embedded capture server "
        "belongs to a single process.",
    )

    trusted_proxies: str = Field(
        default="",
        description="Reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are believed: "
        "addresses or networks, comma-separated (10.0.0.5, 10.1.0.0/16); empty = none, the "
        "client is the connection's peer. See docs/operations.md.",
    )
    header_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = Field(
        default=10, description="A request's headers must arrive within this, or 408."
    )
    body_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30, description="A request's body must arrive within this, or 408."
    )
    max_form_bytes: Annotated[int, Field(ge=4096)] = Field(
        default=128 * 1024, description="Largest body of a page's form (413 beyond)."
    )
    max_api_bytes: Annotated[int, Field(ge=4096)] = Field(
        default=4 * 1024 * 1024,
        description="Largest body of a JSON API request, /api and /processor (413 beyond).",
    )

    smtp_host: str | None = Field(default=None, description="Relay host; unset = capture mail.")
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 587
    smtp_tls: TLSMode = TLSMode.starttls
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout: Annotated[float, Field(gt=0)] = 30.0
    ehlo_name: str | None = Field(
        default=None,
        description="The name mailmag gives the relay in EHLO (a fully qualified host name, "
        "or an address literal such as [192.0.2.1]); unset = this machine's fully qualified "
        "name, or the sender address's domain when the machine has none. Relays refuse or "
        "score short names such as the bare host name.",
    )
    smtp_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA certificates the relay's certificate must chain to, "
        "instead of the system's (a relay with a private CA); unset = the system's store. "
        "The certificate and its host name are always verified.",
    )
    smtp_issue_client: SMTPClient = Field(
        default=SMTPClient.lean,
        description="The SMTP client that sends issues: lean (mailer/smtp.py, several times "
        "cheaper a message) or aiosmtplib, for a relay the lean one does not suit. System "
        "mail (confirmations, privacy-request mails, test sends) always goes through "
        "aiosmtplib.",
    )
    capture_smtp_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=1025, description="Port of the local capture server (0: pick a free one)."
    )

    sender_name: str = "mailmag"
    sender_address: str = "newsletter@localhost"
    bounce_domain: str | None = Field(
        default=None,
        description="Domain of VERP return paths and the unsubscribe mailto; "
        "unset = the sender address's domain. `mailmag inbound` receives its mail.",
    )
    send_rate: Annotated[float, Field(ge=0)] = Field(
        default=0, description="Messages per second per worker; 0 = as fast as the relay takes."
    )
    smtp_pool_size: Annotated[int, Field(ge=1, le=64)] = Field(
        default=16,
        description="Persistent connections to the relay per worker, each one transaction at a "
        "time: enough of them hide the relay's round trips.",
    )
    dkim_private_key_file: Path | None = Field(
        default=None,
        description="PEM RSA key; when set, issues, test sends and system mail are DKIM-signed.",
    )
    dkim_selector: str = "mailmag"
    dkim_domain: str | None = Field(default=None, description="Unset = the sender's domain.")
    retry_days: Annotated[float, Field(gt=0, le=30)] = Field(
        default=3, description="Deferred deliveries are retried this long, then failed."
    )
    inbound_host: str = "127.0.0.1"
    inbound_port: Annotated[int, Field(ge=1, le=65535)] = 2525
    inbound_max_bytes: Annotated[int, Field(ge=10_000)] = 2_000_000
    soft_bounce_threshold: Annotated[float, Field(gt=0)] = Field(
        default=5,
        description="Soft-bounce score (halving weekly) that suppresses an address.",
    )
    brake_complaint_rate: Annotated[float, Field(ge=0, le=1)] = 0.001
    brake_bounce_rate: Annotated[float, Field(ge=0, le=1)] = 0.05
    brake_block_rate: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.02,
        description="Share of an issue's messages refused for policy or content (5.7.x) "
        "that pauses it.",
    )
    brake_min_deliveries: Annotated[int, Field(ge=1)] = 1000
    processor_passwords: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='SMTP passwords of processor routes, as JSON: {"<processor key>": "..."}.',
    )
    signup_answer_ms: Annotated[int, Field(ge=0, le=2000)] = Field(
        default=40,
        description="Sign-up answers take at least this long, so their timing does not tell "
        "whether an address is already known.",
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one JSON object per line; text: for a terminal."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_personal_data: bool = Field(
        default=False,
        description="Debugging only: keep addresses, link tokens and client IPs in the logs.",
    )
    metrics_token: SecretStr | None = Field(
        default=None, description="Bearer token the /metrics scraper must send; unset = open."
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="Shared secret of the provider feedback webhook; unset = off."
    )
    transfer_retention_days: Annotated[int, Field(ge=1)] = Field(
        default=3 * 365 + 1, description="Transfer records are purged after this."
    )
    privacy_request_days: Annotated[int, Field(ge=1, le=60)] = Field(
        default=14, description="A privacy request is due this many days after it arrived."
    )
    consent_retention_days: Annotated[int, Field(ge=31)] = Field(
        default=3 * 365 + 1,
        description="Consent rows of people whose consent ended are purged after this (never "
        "less than a month after the last mail, as the Specified Electronic Mail Act requires).",
    )
    inbound_retention_days: Annotated[int, Field(ge=1)] = Field(
        default=30, description="Raw bounce and complaint messages are purged after this."
    )
    delivery_lease_seconds: Annotated[int, Field(ge=1, le=86400)] = Field(
        default=300,
        description="How long a worker's claim on a batch lasts; a crashed worker's "
        "deliveries are taken again after this. A working worker renews it every third of "
        "this, and sends nothing of a claim it could not renew for four fifths of it.",
    )

    registry_file: Path | None = Field(
        default=None,
        description="TOML privacy registries; unset = the shipped fictional example.",
    )
    pending_days: Annotated[int, Field(ge=1, le=90)] = Field(
        default=7, description="Unconfirmed sign-ups expire (and are purged) after this."
    )
    preferences_link_days: Annotated[int, Field(ge=1)] = 180
    erase_link_hours: Annotated[int, Field(ge=1, le=168)] = 24
    form_token_minutes: Annotated[int, Field(ge=1, le=1440)] = 120
    subscribe_per_ip: Annotated[int, Field(ge=1)] = Field(
        default=20, description="Sign-ups accepted from one IP address per hour."
    )
    subscribe_per_address: Annotated[int, Field(ge=1)] = Field(
        default=5, description="Sign-ups accepted for one address per hour."
    )
    notify_interval_hours: Annotated[int, Field(ge=1)] = Field(
        default=24, description="At most one confirmation mail per address in this many hours."
    )
    test_sends_per_staff_hour: Annotated[int, Field(ge=10)] = Field(
        default=50,
        description="Test messages of issues one staff member may send per hour (an address "
        "that is skipped counts too).",
    )
    test_sends_per_issue_day: Annotated[int, Field(ge=10)] = Field(
        default=100, description="Test messages of one issue, by all staff, per 24 hours."
    )

    @model_validator(mode="before")
    @classmethod
    def _base_url_follows_the_listener(cls, data: Any) -> Any:
        # Without an explicit public URL, links point where `mailmag serve` listens.
        if isinstance(data, dict) and not data.get("base_url"):
            host = str(data.get("http_host") or "127.0.0.1")
            port = str(data.get("http_port") or 8000)
            # A bad port or host is left for its own validator to name ("²" is a digit to
            # str.isdigit, not to int).
            port_ok = port.isascii() and port.isdigit() and 0 < int(port) < 65536
            if port_ok and host.replace(".", "").isalnum():
                data = {**data, "base_url": f"http://{host}:{port}"}
        return data

    @field_validator("database_url")
    @classmethod
    def _parse_database_url(cls, value: str) -> str:
        if not value:
            return value
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL ({exc})") from None
        if url.get_backend_name() not in {"sqlite", "postgresql"}:
            raise ValueError("only sqlite:// and postgresql:// URLs are supported")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses_or_networks(cls, value: str) -> str:
        for item in (part.strip() for part in value.split(",")):
            try:
                if item:
                    ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or network: {item!r}") from None
        return value

    @field_validator("sender_name", "sender_address", "smtp_host", "bounce_domain")
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        if value is not None and any(ord(ch) < 32 or ch == "\x7f" for ch in value):
            raise ValueError("must be a single line without control characters")
        return value

    @field_validator("ehlo_name")
    @classmethod
    def _host_name(cls, value: str | None) -> str | None:
        if value is None or _HOST_NAME.fullmatch(value) or _address_literal(value):
            return value
        raise ValueError(
            "must be a host name (mail.example.com) or an address literal ([192.0.2.1])"
        )

    @field_validator("smtp_ca_file")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @model_validator(mode="after")
    def _no_credentials_in_clear(self) -> Self:
        if self.smtp_username is not None and self.smtp_tls is TLSMode.none:
            raise ValueError(
                "smtp_username: credentials are never sent over an unencrypted session; "
                "set MAILMAG_SMTP_TLS to starttls or tls"
            )
        return self

    @model_validator(mode="after")
    def _production_needs_real_parts(self) -> Self:
        if self.environment is Environment.production:
            secret = self.secret_key.get_secret_value() if self.secret_key else ""
            if secret.lower() in PLACEHOLDER_SECRETS or len(secret) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"secret_key: production needs a random secret of at least "
                    f"{MIN_SECRET_LENGTH} characters, not a placeholder "
                    f"(try: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
                )
            if not self.smtp_host:
                raise ValueError("smtp_host: production needs an SMTP relay")
            if urlsplit(str(self.base_url)).scheme != "https":
                raise ValueError(
                    f"base_url: production needs the public https:// URL of the web app, not "
                    f"{self.base_url} (RFC 8058 one-click unsubscribe works only over HTTPS)"
                )
        return self

    # Derived values -----------------------------------------------------------------------

    @property
    def sqlalchemy_url(self) -> URL:
        """The database URL with the driver mailmag uses (psycopg 3 for PostgreSQL)."""
        raw = self.database_url or f"sqlite:///{(self.data_dir / 'mailmag.db').as_posix()}"
        url = make_url(raw)
        if url.get_backend_name() == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        return url

    @property
    def trusted_proxy_list(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.trusted_proxies.split(",") if part.strip())

    @property
    def sender_domain(self) -> str:
        return self.sender_address.rpartition("@")[2] or "localhost"

    @property
    def ehlo_host(self) -> str:
        """What EHLO says: the setting, this machine's fully qualified name, or the sender's
        domain (RFC 5321 4.1.1.1 asks for the client's FQDN or an address literal)."""
        if self.ehlo_name:
            return self.ehlo_name
        machine = _machine_name()
        if "." in machine and not machine.startswith("localhost"):
            return machine
        return self.sender_domain

    @property
    def origin(self) -> str:
        """The web origin of ``base_url`` (scheme, host, port), as browsers send it."""
        url = urlsplit(str(self.base_url))
        default = {"http": 80, "https": 443}.get(url.scheme)
        port = "" if url.port in (None, default) else f":{url.port}"
        return f"{url.scheme}://{url.hostname}{port}"

    @property
    def secure_cookies(self) -> bool:
        return str(self.base_url).startswith("https:")

    @property
    def captures_mail(self) -> bool:
        """True when no relay is set: outgoing mail goes to the local capture server."""
        return self.smtp_host is None

    def smtp_relay(self, *, capture_port: int | None = None, system: bool = False) -> SMTPRelay:
        """The relay outgoing mail goes through (the capture server when none is set): for
        issues with ``smtp_issue_client``; for system mail (``system``) with aiosmtplib and
        two connections (the outbox sends one mail at a time)."""
        client = SMTPClient.aiosmtplib if system else self.smtp_issue_client
        pool_size = 2 if system else self.smtp_pool_size
        if self.smtp_host is None:
            return SMTPRelay(
                host="127.0.0.1",
                port=capture_port or self.capture_smtp_port,
                tls=TLSMode.none,
                timeout=self.smtp_timeout,
                pool_size=pool_size,
                local_hostname=self.ehlo_host,
                client=client,
            )
        return SMTPRelay(
            host=self.smtp_host,
            port=self.smtp_port,
            tls=self.smtp_tls,
            username=self.smtp_username,
            password=self.smtp_password.get_secret_value() if self.smtp_password else None,
            timeout=self.smtp_timeout,
            pool_size=pool_size,
            local_hostname=self.ehlo_host,
            client=client,
            ca_file=str(self.smtp_ca_file) if self.smtp_ca_file else None,
        )

    def resolved_secret(self) -> bytes:
        """The secret key; in development one is generated once and kept in data_dir."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.data_dir / SECRET_FILE_NAME
        if not path.exists():
            private_directory(self.data_dir)
            # Written whole into a 0600 file of its own, then linked into place: link(2)
            # fails if the name exists, so two processes starting at once agree on one key,
            # and neither reads a file the other has not finished writing.
            fresh = self.data_dir / f".{SECRET_FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
            write_private(fresh, secrets.token_urlsafe(48))
            try:
                os.link(fresh, path)
            except FileExistsError:
                pass
            finally:
                fresh.unlink()
        key = path.read_text(encoding="ascii").strip()
        if len(key) < MIN_SECRET_LENGTH:
            raise ConfigurationError(f"MAILMAG_SECRET_KEY: the key in {path} is too short")
        return key.encode()


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a validation error into one line naming the setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if not loc and ":" in message:
            loc, message = (part.strip() for part in message.split(":", 1))
        name = f"MAILMAG_{loc.upper()}" if loc else "settings"
        raise ConfigurationError(f"{name}: {message}") from None
