"""Settings: safe defaults, and bad configuration refused with a line naming the setting."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from mailer.transport import SMTPClient
from subscriptions import settings as settings_module
from subscriptions.errors import ConfigurationError
from subscriptions.settings import load_settings

STRONG = "s" * 48


def test_embedded_default_is_a_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(_env_file=None, data_dir=tmp_path)
    assert settings.sqlalchemy_url.get_backend_name() == "sqlite"
    assert settings.sqlalchemy_url.database == f"{tmp_path}/mailmag.db"
    assert settings.captures_mail


def test_postgresql_urls_use_psycopg3(tmp_path: Path) -> None:
    settings = load_settings(_env_file=None, database_url="postgresql://u@db.example/mm")
    assert settings.sqlalchemy_url.drivername == "postgresql+psycopg"


def test_development_secret_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    first = load_settings(_env_file=None, data_dir=tmp_path).resolved_secret()
    second = load_settings(_env_file=None, data_dir=tmp_path).resolved_secret()
    assert first == second
    assert len(first) >= 32
    mode = stat.S_IMODE((tmp_path / "mailmag.secret").stat().st_mode)
    assert mode == 0o600


@pytest.mark.parametrize("placeholder", ["changethis", "secret", "short-but-real"])
def test_production_refuses_placeholder_secret(placeholder: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^MAILMAG_SECRET_KEY: "):
        load_settings(
            _env_file=None, environment="production", secret_key=placeholder, smtp_host="relay"
        )


def test_production_refuses_to_capture_instead_of_relaying() -> None:
    with pytest.raises(ConfigurationError, match=r"^MAILMAG_SMTP_HOST: "):
        load_settings(_env_file=None, environment="production", secret_key=STRONG)


@pytest.mark.parametrize("base_url", [None, "http://news.example.com", "http://127.0.0.1:8000"])
def test_production_refuses_a_base_url_that_is_not_https(base_url: str | None) -> None:
    """Links over plain HTTP make RFC 8058 one-click unsubscribe invalid: the one-line error
    names the setting and says why."""
    given = {"base_url": base_url} if base_url else {}
    with pytest.raises(ConfigurationError, match=r"^MAILMAG_BASE_URL: .*https://.*RFC 8058"):
        load_settings(
            _env_file=None,
            environment="production",
            secret_key=STRONG,
            smtp_host="relay",
            **given,
        )


def test_development_keeps_its_http_default() -> None:
    assert str(load_settings(_env_file=None).base_url).startswith("http://127.0.0.1:8000")


def test_production_accepts_real_secret_relay_and_https_url() -> None:
    settings = load_settings(
        _env_file=None,
        environment="production",
        secret_key=STRONG,
        smtp_host="relay",
        base_url="https://news.example.com",
    )
    assert not settings.captures_mail
    assert settings.secure_cookies


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"database_url": "not a url"}, "MAILMAG_DATABASE_URL"),
        ({"database_url": "mysql://x@y/z"}, "MAILMAG_DATABASE_URL"),
        ({"base_url": "ftp:/nowhere"}, "MAILMAG_BASE_URL"),
        ({"http_port": 70000}, "MAILMAG_HTTP_PORT"),
        ({"http_port": "²"}, "MAILMAG_HTTP_PORT"),
        ({"sender_name": "News\r\nBcc: victim@example.com"}, "MAILMAG_SENDER_NAME"),
    ],
)
def test_malformed_values_name_their_setting(overrides: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^{setting}: "):
        load_settings(_env_file=None, **overrides)


def test_environment_variables_are_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILMAG_SENDER_NAME", "Env News")
    assert load_settings(_env_file=None).sender_name == "Env News"


def test_links_follow_the_listening_port_unless_a_public_url_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILMAG_HTTP_PORT", "8151")
    assert str(load_settings(_env_file=None).base_url) == "http://127.0.0.1:8151/"
    monkeypatch.setenv("MAILMAG_BASE_URL", "https://news.example.com")
    assert str(load_settings(_env_file=None).base_url) == "https://news.example.com/"


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("mta1.example.net", "mta1.example.net"),  # the machine's fully qualified name
        ("vm", "example.co.jp"),  # a short host name: the sender's domain instead
        ("localhost", "example.co.jp"),
        ("localhost.localdomain", "example.co.jp"),
    ],
)
def test_ehlo_name_defaults_to_a_fully_qualified_name(
    monkeypatch: pytest.MonkeyPatch, machine: str, expected: str
) -> None:
    """Issue 21 item 12: EHLO gave the short host name, which relays refuse or score."""
    monkeypatch.setattr(settings_module, "_machine_name", lambda: machine)
    settings = load_settings(
        _env_file=None, sender_address="news@example.co.jp", smtp_host="relay.example.net"
    )
    assert settings.smtp_relay().local_hostname == expected
    assert (
        load_settings(_env_file=None, sender_address="news@example.co.jp")
        .smtp_relay(capture_port=2525)
        .local_hostname
        == expected
    )


@pytest.mark.parametrize("name", ["mail.example.jp", "[192.0.2.1]", "[IPv6:2001:db8::1]"])
def test_ehlo_name_can_be_set(name: str) -> None:
    settings = load_settings(_env_file=None, ehlo_name=name, smtp_host="relay.example.net")
    assert settings.smtp_relay().local_hostname == name


@pytest.mark.parametrize(
    "name", ["two words", "mail.example.jp\r\nMAIL FROM:<x@y>", "[1.2.3]", "-x"]
)
def test_a_bad_ehlo_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^MAILMAG_EHLO_NAME: must be a host name"):
        load_settings(_env_file=None, ehlo_name=name)


def test_the_relay_hears_the_ehlo_name() -> None:
    """The setting reaches the SMTP conversation, not only the relay's config."""
    import asyncio

    from aiosmtpd.controller import Controller

    from mailer.capture import LOOPBACK, free_port
    from mailer.transport import Envelope, Outcome, SMTPTransport

    heard: list[str] = []

    class Handler:
        async def handle_EHLO(  # noqa: N802 (aiosmtpd hook name)
            self,
            server: Any,
            session: Any,
            envelope: Any,
            hostname: str,
            responses: list[str],
        ) -> list[str]:
            heard.append(hostname)
            session.host_name = hostname  # aiosmtpd leaves it to a handler that answers EHLO
            return responses

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            return "250 OK"

    controller = Controller(Handler(), hostname=LOOPBACK, port=free_port())
    controller.start()
    try:
        settings = load_settings(
            _env_file=None,
            ehlo_name="mta1.example.jp",
            smtp_host=LOOPBACK,
            smtp_port=controller.port,
            smtp_tls="none",
        )
        transport = SMTPTransport(settings.smtp_relay())

        async def send() -> Outcome:
            message = b"From: a@example.jp\r\nTo: b@example.jp\r\nSubject: x\r\n\r\nhi\r\n"
            result = await transport.send(Envelope("a@example.jp", "b@example.jp", message))
            await transport.close()
            return result.outcome

        assert asyncio.run(send()) is Outcome.sent
    finally:
        controller.stop()
    assert heard == ["mta1.example.jp"]


def test_relay_credentials_are_refused_without_tls() -> None:
    with pytest.raises(ConfigurationError, match=r"^MAILMAG_SMTP_USERNAME: .*unencrypted"):
        load_settings(_env_file=None, smtp_host="relay.example", smtp_tls="none", smtp_username="u")


def test_the_relays_ca_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"^MAILMAG_SMTP_CA_FILE: .*not a readable file"):
        load_settings(_env_file=None, smtp_ca_file=str(tmp_path / "missing.pem"))


def test_system_mail_goes_through_aiosmtplib_and_issues_as_set(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="ascii")
    settings = load_settings(_env_file=None, smtp_host="relay.example", smtp_ca_file=str(ca))
    issues, system = settings.smtp_relay(), settings.smtp_relay(system=True)
    assert (issues.client, system.client) == (SMTPClient.lean, SMTPClient.aiosmtplib)
    assert issues.ca_file == system.ca_file == str(ca)
    chosen = load_settings(_env_file=None, smtp_issue_client="aiosmtplib")
    assert chosen.smtp_relay().client is SMTPClient.aiosmtplib
