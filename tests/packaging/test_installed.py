"""mailmag as a user installs it: a wheel built from the checkout, ``pip install``-ed (not
editable) into a fresh virtual environment with the pinned versions, and run from a directory
that is not the checkout. It must create its store, serve the sign-up form and send the
confirmation mail (to the embedded capture server, read back from ``captured-mail/``).

This builds and installs for real, so it takes a while (about 30 s with pip's cache warm): it is
marked ``slow`` and runs in CI with the rest of the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import httpx2 as httpx
import pytest

from mailer.capture import free_port
from tests.support.files import not_private
from tests.support.pages import hidden_fields, link_in, local
from tests.support.server import mailmag_serve

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parents[2]


def tracked_files(destination: Path) -> Path:
    """A copy of the checkout's files (tracked or new, not ignored): the build must not see
    the checkout's own build output, egg-info or virtual environment, nor write into it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=CHECKOUT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = CHECKOUT / os.fsdecode(name)
        if source.is_file():  # a file deleted but not yet committed is listed, and absent
            target = destination / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ directory of a fresh venv holding mailmag's wheel and its pinned dependencies."""
    root = tmp_path_factory.mktemp("installed")
    source = tracked_files(root / "source")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    bin_dir = root / "venv" / "bin"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-input"]
    done = subprocess.run(
        [*pip, "--constraint", str(CHECKOUT / "requirements.lock"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return bin_dir


def outside_env(**settings: str) -> dict[str, str]:
    """The environment of a shell outside the checkout: no MAILMAG_ settings but those given,
    nothing on the Python path."""
    kept = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MAILMAG_", "PYTHON", "VIRTUAL_ENV"))
    }
    return kept | settings


@pytest.fixture
def served(installed: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``mailmag migrate`` then ``mailmag serve`` of the installed wheel, run in an empty
    directory; yields its URL and that directory."""
    env = outside_env(
        MAILMAG_HTTP_PORT=str(free_port()), MAILMAG_CAPTURE_SMTP_PORT=str(free_port())
    )
    mailmag = str(installed / "mailmag")
    previous = os.umask(0o022)  # the common default, under which an ordinary file is 0644
    migrated = subprocess.run(
        [mailmag, "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    try:
        with mailmag_serve(mailmag, tmp_path, env, timeout=30):
            yield f"http://127.0.0.1:{env['MAILMAG_HTTP_PORT']}", tmp_path
    finally:
        os.umask(previous)


def captured(directory: Path, timeout: float = 20) -> list[EmailMessage]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted((directory / "captured-mail" / "new").glob("*"))
        if found:
            messages = []
            for path in found:
                parsed = message_from_bytes(path.read_bytes(), policy=policy.default)
                assert isinstance(parsed, EmailMessage)
                messages.append(parsed)
            return messages
        time.sleep(0.2)
    raise AssertionError("no mail was captured")


def test_the_installed_wheel_runs_outside_the_checkout(installed: Path) -> None:
    where = subprocess.run(
        [str(installed / "python"), "-c", "import subscriptions.paths as p; print(p.__file__)"],
        cwd=installed,
        env=outside_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.parent), where
    assert not Path(where).is_relative_to(CHECKOUT), where
    listed = subprocess.run(
        [str(installed / "python"), "-m", "pip", "list", "--format=freeze"],
        env=outside_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    for test_tool in ("pytest", "playwright", "schemathesis", "mypy", "ruff", "hypothesis"):
        assert f"\n{test_tool}==" not in f"\n{listed}", f"{test_tool} came with the service"


def test_the_installed_wheel_signs_up_and_sends_the_confirmation(
    served: tuple[str, Path],
) -> None:
    base, directory = served
    form = httpx.get(f"{base}/subscribe", timeout=5)
    assert form.status_code == 200
    assert "Subscribe to our e-mail magazines" in form.text
    japanese = httpx.get(f"{base}/subscribe?lang=ja", timeout=5).text  # the shipped catalog
    assert "メールマガジンの購読申込み" in japanese
    answer = httpx.post(
        f"{base}/subscribe",
        data={**hidden_fields(form.text), "email": "new.reader@example.org", "magazines": "weekly"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    [mail] = captured(directory)
    assert mail["To"] == "new.reader@example.org"
    confirm = httpx.get(base + local(link_in(mail, "/confirm/")), timeout=5)
    assert confirm.status_code == 200
    assert "Yes, confirm my subscription" in confirm.text
    listing = httpx.get(f"{base}/_mail", timeout=5)
    assert "new.reader@example.org" in listing.text
    for asset in ("site.css", "docs.js", "swagger_ui/swagger-ui-bundle.js"):  # package data
        assert httpx.get(f"{base}/static/{asset}", timeout=5).status_code == 200, asset
    # the store and its companions, the secret, the leader's lock, the captured mail: every
    # file the service wrote is its owner's alone (serve.log is the test's)
    assert not_private(directory, frozenset({"serve.log"})) == {}
