"""The ``mailmag`` command as an operator runs it: in a real process, from a shell."""

from __future__ import annotations

import json
import os
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import pytest

from mailer.capture import free_port
from tests.support.server import mailmag_serve
from tests.support.smtp import SMTPSink

MAILMAG = str(Path(sys.executable).parent / "mailmag")


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILMAG_")}
    return subprocess.run(
        [MAILMAG, *args],
        cwd=cwd,
        env=clean | (env or {}),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = run(["--help"], tmp_path)
    assert result.returncode == 0
    for command in ("serve", "migrate", "admin"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"MAILMAG_DATABASE_URL": "postgresql://x@127.0.0.1:1/none"}, "MAILMAG_DATABASE_URL"),
        ({"MAILMAG_DATABASE_URL": "::not a url::"}, "MAILMAG_DATABASE_URL"),
        (
            {
                "MAILMAG_ENVIRONMENT": "production",
                "MAILMAG_SECRET_KEY": "changethis",
                "MAILMAG_SMTP_HOST": "relay.example",
            },
            "MAILMAG_SECRET_KEY",
        ),
    ],
)
def test_bad_configuration_stops_with_one_line(
    tmp_path: Path, env: dict[str, str], setting: str
) -> None:
    result = run(["migrate"], tmp_path, env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"mailmag: {setting}: ")
    assert "Traceback" not in result.stderr


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    result = run(["serve"], tmp_path)
    assert result.returncode == 2
    assert "mailmag migrate" in result.stderr


def test_admin_create_makes_an_account_once(tmp_path: Path) -> None:
    assert run(["migrate"], tmp_path).returncode == 0
    args = ["admin", "create", "--email", "Boss@Example.com", "--password-stdin"]
    created = run(args, tmp_path, stdin="correct horse battery staple\n")
    assert created.returncode == 0, created.stderr
    assert "boss@example.com" in created.stdout
    again = run(args, tmp_path, stdin="correct horse battery staple\n")
    assert again.returncode == 2
    assert "already exists" in again.stderr
    weak = run(
        ["admin", "create", "--email", "x@example.com", "--password-stdin"],
        tmp_path,
        stdin="short\n",
    )
    assert weak.returncode == 2
    assert "password" in weak.stderr


@contextmanager
def serving(
    tmp_path: Path, env: dict[str, str], ready_within: float = 20
) -> Iterator[subprocess.Popen[bytes]]:
    """``mailmag migrate`` then ``mailmag serve`` with ``env``, until it answers /readyz."""
    assert run(["migrate"], tmp_path, env).returncode == 0
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILMAG_")}
    with mailmag_serve(MAILMAG, tmp_path, clean | env, timeout=ready_within) as process:
        yield process


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """``mailmag serve`` on the embedded defaults, free ports."""
    http_port, smtp_port = free_port(), free_port()
    env = {"MAILMAG_HTTP_PORT": str(http_port), "MAILMAG_CAPTURE_SMTP_PORT": str(smtp_port)}
    with serving(tmp_path, env):
        yield f"http://127.0.0.1:{http_port}", smtp_port


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_serve_runs_several_web_processes_on_one_port(
    tmp_path: Path, smtp_server: SMTPSink
) -> None:
    http_port = free_port()
    env = {
        "MAILMAG_HTTP_PORT": str(http_port),
        "MAILMAG_WEB_PROCESSES": "2",
        "MAILMAG_SMTP_HOST": smtp_server.host,
        "MAILMAG_SMTP_PORT": str(smtp_server.port),
        "MAILMAG_SMTP_TLS": "none",
        "MAILMAG_SENDER_ADDRESS": "news@example.com",
    }
    base = f"http://127.0.0.1:{http_port}"
    with serving(tmp_path, env) as process:
        deadline = time.monotonic() + 20
        while len(children_of(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(children_of(process.pid)) >= 2
        for n in range(4):  # whichever process takes each, the sign-up is stored and mailed
            form = httpx.get(f"{base}/api/v1/subscribe/form", timeout=5).json()
            answer = httpx.post(
                f"{base}/api/v1/subscribe",
                json={
                    "email": f"reader{n}@example.org",
                    "magazines": ["weekly"],
                    "notice_hash": form["notice_hash"],
                    "form_token": form["form_token"],
                },
                timeout=5,
            )
            assert answer.status_code == 202, answer.text
        smtp_server.wait_for(4, timeout=20)
        assert {m.rcpt_tos for m in smtp_server.received} == {
            (f"reader{n}@example.org",) for n in range(4)
        }


def test_serve_refuses_several_web_processes_without_a_relay(tmp_path: Path) -> None:
    assert run(["migrate"], tmp_path).returncode == 0
    result = run(["serve"], tmp_path, {"MAILMAG_WEB_PROCESSES": "2"})
    assert result.returncode == 2
    assert "MAILMAG_WEB_PROCESSES" in result.stderr


def test_serve_runs_on_embedded_defaults_and_shows_captured_mail(
    served: tuple[str, int], tmp_path: Path
) -> None:
    base, smtp_port = served
    assert (tmp_path / "mailmag.db").exists()
    assert (tmp_path / "mailmag.secret").exists()
    with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
        smtp.sendmail(
            "news@example.com",
            ["reader@example.org"],
            "Subject: =?utf-8?b?5pel5pys6Kqe44Gu5Lu25ZCN?=\r\n"
            "Content-Type: text/plain\r\n\r\nhi\r\n",
        )
    listing = httpx.get(f"{base}/_mail", timeout=5)
    assert listing.status_code == 200
    assert "日本語の件名" in listing.text
    assert "reader@example.org" in listing.text
    # each captured mail opens, and shows its raw form (a mismatch between the route's and the
    # access table's name for the key once made both a 403)
    [link] = re.findall(r'href="(/_mail/[^"]+)"', listing.text)
    shown = httpx.get(f"{base}{link}", timeout=5)
    assert shown.status_code == 200
    assert "日本語の件名" in shown.text
    raw = httpx.get(f"{base}{link}/raw", timeout=5)
    assert raw.status_code == 200
    assert "reader@example.org" in raw.text


def test_serve_logs_one_json_object_per_line_without_personal_data(
    served: tuple[str, int], tmp_path: Path
) -> None:
    base, _ = served
    form = httpx.get(f"{base}/api/v1/subscribe/form", timeout=5).json()
    answer = httpx.post(
        f"{base}/api/v1/subscribe",
        json={
            "email": "secret.reader@example.org",
            "magazines": ["weekly"],
            "notice_hash": form["notice_hash"],
            "form_token": form["form_token"],
        },
        timeout=5,
    )
    assert answer.status_code == 202, answer.text
    httpx.get(f"{base}/u/SOMELINKTOKEN123", timeout=5)
    time.sleep(0.3)
    lines = [line for line in (tmp_path / "serve.log").read_text().splitlines() if line]
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    requests = [e for e in entries if e["message"] == "request"]
    assert {e["path"] for e in requests} >= {"/api/v1/subscribe", "/u/<token>"}
    assert all({"ts", "level", "logger"} <= set(e) for e in entries)
    text = "\n".join(lines)
    assert "secret.reader" not in text
    assert "SOMELINKTOKEN123" not in text
    assert "127.0.0.1:" not in "".join(str(e.get("client", "")) for e in requests)


def test_send_command_sends_an_issue_with_a_progress_bar(tmp_path: Path) -> None:
    from sqlmodel import Session, select

    from mailer.models import Issue
    from subscriptions.addresses import AddressHasher
    from subscriptions.consent import Evidence
    from subscriptions.db import for_writing, make_engine
    from subscriptions.lifecycle import Lifecycle
    from subscriptions.models import ConsentChannel, Magazine, Subscriber
    from tests.conftest import TEST_SECRET
    from tests.support.smtp import SMTPSink

    sink = SMTPSink()
    sink.start()
    env = {
        "MAILMAG_SECRET_KEY": TEST_SECRET,
        "MAILMAG_SMTP_HOST": "127.0.0.1",
        "MAILMAG_SMTP_PORT": str(sink.port),
        "MAILMAG_SMTP_TLS": "none",
        "MAILMAG_SENDER_ADDRESS": "news@example.com",
    }
    try:
        assert run(["migrate"], tmp_path, env).returncode == 0
        engine = make_engine(f"sqlite:///{tmp_path}/mailmag.db")
        hasher = AddressHasher(TEST_SECRET.encode())
        lifecycle = Lifecycle(hasher)
        evidence = Evidence(ConsentChannel.import_)
        with Session(for_writing(engine)) as session:
            weekly = Magazine(slug="weekly", title={"en": "Weekly"})
            session.add(weekly)
            for n in range(5):
                person = Subscriber(
                    email=f"cli{n}@example.org", address_digest=hasher.digest(f"cli{n}@example.org")
                )
                session.add(person)
                session.flush()
                lifecycle.request(session, person, weekly, evidence)
                lifecycle.confirm(session, person, evidence)
            session.add(Issue(magazine_id=1, subject="CLI news", html_body="<p>Hello</p>"))
            session.commit()
        result = run(["send", "1"], tmp_path, env)
        assert result.returncode == 0, result.stderr
        assert "5 recipients queued" in result.stdout
        assert "issue 1 is sent: sent 5" in result.stdout
        assert len(sink.received) == 5
        with Session(engine) as session:
            assert session.exec(select(Issue)).one().status.value == "sent"
        engine.dispose()
        missing = run(["send", "99"], tmp_path, env)
        assert missing.returncode == 2
        assert "no issue 99" in missing.stderr
    finally:
        sink.stop()


def test_staff_can_suppress_an_address_from_the_shell(tmp_path: Path) -> None:
    from sqlmodel import Session, select

    from subscriptions.db import make_engine
    from subscriptions.models import Suppression, SuppressionReason

    env = {"MAILMAG_SECRET_KEY": "s" * 40}
    assert run(["migrate"], tmp_path, env).returncode == 0
    done = run(
        ["suppress", "Caller@Example.org", "--note", "phone call 2026-11-28 10:00"], tmp_path, env
    )
    assert done.returncode == 0, done.stderr
    assert "suppressed" in done.stdout
    bad = run(["suppress", "not an address", "--note", "x"], tmp_path, env)
    assert bad.returncode == 2
    engine = make_engine(f"sqlite:///{tmp_path}/mailmag.db")
    with Session(engine) as session:
        [entry] = session.exec(select(Suppression)).all()
        assert entry.reason is SuppressionReason.manual
        assert entry.note == "phone call 2026-11-28 10:00"
    engine.dispose()


def test_joint_use_export_from_the_shell(tmp_path: Path) -> None:
    env = {"MAILMAG_SECRET_KEY": "s" * 40}
    assert run(["migrate"], tmp_path, env).returncode == 0
    done = run(["joint-use", "export", "sakura-america", "--out", "us.csv"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "us.csv").read_text().startswith("company,department,title,name,email")
    refused = run(
        ["joint-use", "export", "sakura-america", "--out", "x.csv", "--fields", "phone"],
        tmp_path,
        env,
    )
    assert refused.returncode == 2
    assert "phone is not a category jointly used with sakura-america" in refused.stderr


def test_third_party_provision_needs_a_legal_basis_and_is_recorded(tmp_path: Path) -> None:
    from sqlmodel import Session, select

    from subscriptions.addresses import AddressHasher
    from subscriptions.db import for_writing, make_engine
    from subscriptions.models import Subscriber, TransferRecord, TransferSubject

    secret = "s" * 40
    env = {"MAILMAG_SECRET_KEY": secret}
    assert run(["migrate"], tmp_path, env).returncode == 0
    engine = make_engine(f"sqlite:///{tmp_path}/mailmag.db")
    with Session(for_writing(engine)) as session:
        session.add(
            Subscriber(
                email="asked@example.org",
                name="Asked",
                phone="000",
                address_digest=AddressHasher(secret.encode()).digest("asked@example.org"),
            )
        )
        session.commit()
    common = [
        "provide",
        "--party",
        "Chiyoda Police Station",
        "--reference",
        "order 2026-123",
        "--address",
        "asked@example.org",
        "--fields",
        "email,name",
        "--staff",
        "privacy officer",
        "--out",
        "out.json",
    ]
    refused = run([*common, "--basis", "because"], tmp_path, env)
    assert refused.returncode == 2
    assert "without a legal basis" in refused.stderr
    done = run([*common, "--basis", "law"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    bundle = (tmp_path / "out.json").read_text()
    assert "Asked" in bundle
    assert "000" not in bundle  # the phone was not asked for
    with Session(engine) as session:
        [record] = session.exec(select(TransferRecord)).all()
        assert record.party_kind == "third_party"
        assert record.legal_basis.startswith("required by law")
        assert len(session.exec(select(TransferSubject)).all()) == 1
    engine.dispose()


def test_a_party_credential_is_shown_once_stored_hashed_and_revocable(tmp_path: Path) -> None:
    env = {"MAILMAG_SECRET_KEY": "s" * 40}
    assert run(["migrate"], tmp_path, env).returncode == 0
    made = run(["parties", "credential", "create", "sakura-asia", "--days", "7"], tmp_path, env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("mp_")
    assert "credential #1 for sakura-asia" in made.stdout
    database = b"".join(p.read_bytes() for p in tmp_path.glob("mailmag.db*"))
    assert token.encode() not in database
    unknown = run(["parties", "credential", "create", "nobody"], tmp_path, env)
    assert unknown.returncode == 2
    assert "neither a processor nor a joint user" in unknown.stderr
    revoked = run(["parties", "credential", "revoke", "1"], tmp_path, env)
    assert revoked.returncode == 0, revoked.stderr
    assert run(["parties", "credential", "revoke", "9"], tmp_path, env).returncode == 2


def test_backup_and_restore_from_the_shell(tmp_path: Path) -> None:
    env = {"MAILMAG_SECRET_KEY": "s" * 40}
    live, spare = tmp_path / "live", tmp_path / "spare"
    live.mkdir()
    spare.mkdir()
    assert run(["migrate"], live, env).returncode == 0
    assert (
        run(["suppress", "gone@example.org", "--note", "asked by phone"], live, env).returncode == 0
    )
    made = run(["backup", str(tmp_path / "store.backup")], live, env)
    assert made.returncode == 0, made.stderr
    assert "sha256" in made.stdout
    restored = run(["restore", str(tmp_path / "store.backup")], spare, env)
    assert restored.returncode == 0, restored.stderr
    assert "consent ledger intact" in restored.stdout
    assert "audit log intact (1 rows)" in restored.stdout  # the backup's own audit entry
    verify = run(["audit", "verify"], spare, env)
    assert "audit log intact: 2 rows verified" in verify.stdout  # + the restore
    missing = run(["restore", str(tmp_path / "none.backup")], spare, env)
    assert missing.returncode == 2
    assert "there is no backup file" in missing.stderr


def test_incidents_and_legal_holds_from_the_shell(tmp_path: Path) -> None:
    env = {"MAILMAG_SECRET_KEY": "s" * 40}
    assert run(["migrate"], tmp_path, env).returncode == 0
    opened = run(
        [
            "incident",
            "open",
            "--title",
            "Laptop stolen",
            "--kind",
            "loss",
            "--discovered",
            "2026-11-01T09:00:00+09:00",
            "--staff",
            "po",
            "--wrongful",
        ],
        tmp_path,
        env,
    )
    assert opened.returncode == 0, opened.stderr
    linked = run(
        ["incident", "link", "1", "--staff", "po", "--address", "a@example.org"], tmp_path, env
    )
    assert "1 people linked; 1 affected in all" in linked.stdout
    shown = json.loads(run(["incident", "show", "1"], tmp_path, env).stdout)
    assert shown["must_report"] is True
    assert shown["final_report_due"].startswith("2026-12-31")  # 60 days after discovery
    assert "preliminary by 2026-11-04" in run(["incident", "list"], tmp_path, env).stdout
    held = run(
        ["hold", "add", "a@example.org", "--reason", "court order 12", "--staff", "po"],
        tmp_path,
        env,
    )
    assert held.returncode == 0, held.stderr
    assert "court order 12" in run(["hold", "list"], tmp_path, env).stdout
    assert run(["hold", "release", "1", "--staff", "po"], tmp_path, env).returncode == 0
    assert "no active legal holds" in run(["hold", "list"], tmp_path, env).stdout
    assert "intact" in run(["audit", "verify"], tmp_path, env).stdout
