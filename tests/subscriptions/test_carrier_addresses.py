"""Legacy Japanese carrier addresses that break RFC 5322's dot-atom (``taro..yamada.@docomo.ne.jp``)
are accepted for the carriers' domains on sign-up and import, stored in their quoted form and
sent that way (RCPT TO and To:), end to end through a real SMTP server; anywhere else such an
address is refused as before."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from email.headerregistry import Address
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailer.capture import LOOPBACK
from mailer.sending import start_issue
from subscriptions.addresses import CARRIER_DOMAINS, AddressHasher, normalise_address
from subscriptions.audit import Actor
from subscriptions.errors import InvalidInput
from subscriptions.importing import Importer
from subscriptions.models import Subscriber
from subscriptions.runtime import Runtime
from tests.mailer.test_sending import drain, parse, seed, worker_for
from tests.support.pages import hidden_fields
from tests.support.smtp import SMTPSink, _Handler

LEGACY = '"taro..yamada."@docomo.ne.jp'


class WireSink(SMTPSink):
    """The suite's aiosmtpd sink, also keeping each RCPT command's argument as it came over
    the wire (aiosmtpd hands its hooks the address already unquoted)."""

    def __init__(self) -> None:
        super().__init__()
        self.rcpt_commands: list[str] = []
        sink = self

        class Recording(SMTP):
            async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802 (aiosmtpd's name)
                sink.rcpt_commands.append(arg or "")
                await super().smtp_RCPT(arg)

        class RecordingController(Controller):
            def factory(self) -> Any:
                return Recording(self.handler, **self.SMTP_kwargs)

        self._controller.loop.close()  # the sink's own controller, never started
        self._controller = RecordingController(_Handler(self), hostname=LOOPBACK, port=self.port)


@pytest.fixture
def smtp_server() -> Iterator[WireSink]:
    sink = WireSink()
    sink.start()
    yield sink
    sink.stop()


def runtime_of(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("taro..yamada.@docomo.ne.jp", LEGACY),
        ('"taro..yamada."@docomo.ne.jp', LEGACY),
        (".hanako@EZWEB.ne.jp", '".hanako"@ezweb.ne.jp'),
        ("ichiro.@au.com", '"ichiro."@au.com'),
        ("a..b-c_d@softbank.ne.jp", '"a..b-c_d"@softbank.ne.jp'),
        ("jiro..@i.softbank.jp", '"jiro.."@i.softbank.jp'),
        ("x..y@di.pdx.ne.jp", '"x..y"@di.pdx.ne.jp'),  # a subdomain of a carrier's
        ('"plain.name"@docomo.ne.jp', "plain.name@docomo.ne.jp"),  # needless quotes dropped
        ("plain.name@docomo.ne.jp", "plain.name@docomo.ne.jp"),
    ],
)
def test_legacy_carrier_addresses_are_stored_quoted(typed: str, stored: str) -> None:
    assert normalise_address(typed) == stored


@pytest.mark.parametrize(
    "typed",
    [
        "taro..yamada.@example.com",  # not a carrier
        "taro..yamada.@docomo.ne.jp.example.com",
        '"taro..yamada."@example.com',  # quoting stays refused elsewhere
        '"a b"@docomo.ne.jp',  # only dots are forgiven, not spaces or quotes
        'a"b..@docomo.ne.jp',
        "...@docomo.ne.jp",
        "a..b@",
    ],
)
def test_other_addresses_breaking_the_dot_atom_are_refused(typed: str) -> None:
    with pytest.raises(InvalidInput):
        normalise_address(typed)


@settings(max_examples=500, deadline=None)
@given(
    local=st.text(alphabet=st.sampled_from('abcXYZ09._-+". '), min_size=1, max_size=70),
    domain=st.sampled_from(["docomo.ne.jp", "EZWEB.ne.jp", "au.com", "example.com"]),
)
def test_a_normalised_address_normalises_to_itself(local: str, domain: str) -> None:
    """What is stored is found again: normalising the stored form changes nothing, so its
    digest is the digest of what the person typed."""
    try:
        stored = normalise_address(f"{local}@{domain}")
    except InvalidInput:
        return
    assert normalise_address(stored) == stored
    hasher = AddressHasher(b"k" * 32)
    assert hasher.digest(stored) == hasher.digest(f"{local}@{domain}")


def test_the_list_names_the_carriers_domains() -> None:
    assert {"docomo.ne.jp", "ezweb.ne.jp", "au.com", "softbank.ne.jp", "i.softbank.jp"} <= (
        CARRIER_DOMAINS
    )


def test_quoted_or_not_and_whatever_the_case_it_is_one_mailbox() -> None:
    hasher = AddressHasher(b"k" * 32)
    assert hasher.digest("TARO..Yamada.@Docomo.ne.jp") == hasher.digest(LEGACY)


def test_a_sign_up_reaches_the_carrier_address_through_smtp(
    client: TestClient, engine: Engine, smtp_server: WireSink
) -> None:
    for typed in ("taro..yamada.@docomo.ne.jp", '"Taro..Yamada."@docomo.ne.jp'):
        page = client.get("/subscribe")
        data = {**hidden_fields(page.text), "email": typed, "magazines": ["weekly"]}
        assert client.post("/subscribe", data=data).status_code == 200
    with Session(engine) as session:
        assert [p.email for p in session.exec(select(Subscriber)).all()] == [LEGACY]
    (received,) = smtp_server.wait_for(1)
    assert smtp_server.rcpt_commands == [f"TO:<{LEGACY}>"]
    message = received.message()
    assert message.defects == []
    (to,) = message["To"].addresses
    assert (to.username, to.domain) == ("taro..yamada.", "docomo.ne.jp")


def test_an_issue_reaches_it_with_a_valid_rcpt_and_to(
    app: FastAPI, engine: Engine, smtp_server: WireSink
) -> None:
    issue_id, people = seed(app, engine, 1)
    runtime = runtime_of(app)
    with Session(engine) as session:
        person = session.get(Subscriber, people[0].id)
        assert person is not None
        person.email = LEGACY
        person.address_digest = runtime.optin.hasher.digest(LEGACY)
        session.add(person)
        session.commit()
    assert start_issue(engine, runtime.audience, runtime.preparer, issue_id) == 1
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    (received,) = smtp_server.received
    assert smtp_server.rcpt_commands == [f"TO:<{LEGACY}>"]
    message = parse(received.data)
    assert message.defects == []
    assert message["To"].addresses == (Address(username="taro..yamada.", domain="docomo.ne.jp"),)


def test_an_import_takes_carrier_addresses_and_refuses_the_rest(
    app: FastAPI, engine: Engine, tmp_path: Path
) -> None:
    runtime = runtime_of(app)
    runtime.sync_magazines()
    path = tmp_path / "list.csv"
    path.write_text(
        "email\ntaro..yamada.@docomo.ne.jp\n.hanako@ezweb.ne.jp\nsaburo..@example.com\n",
        encoding="utf-8",
    )
    report = Importer(runtime.engine, runtime.optin).run(
        path, magazine="weekly", actor=Actor("cli:test", "terminal")
    )
    assert dict(report.problems) == {4: "email: This is not a valid e-mail address."}
    with Session(engine) as session:
        stored = sorted(p.email for p in session.exec(select(Subscriber)).all())
    assert stored == ['".hanako"@ezweb.ne.jp', LEGACY]
