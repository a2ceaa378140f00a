"""mailmag's benchmark: sending against the wire's limit, and the public endpoints under load.

One run (``make bench``, or ``.venv/bin/python bench/run.py``) measures, on this machine:

(a) the wire: Postfix's ``smtp-source`` (20 sessions, connections reused) into ``smtp-sink``
    with the 20 KB reference newsletter (``../shared/bench/newsletter-20k.eml``);
(b) mailmag end to end: ``mailmag serve`` (scheduler, queue, renderer, SMTP transport) with a
    fresh issue built from the same newsletter, a personalised greeting, per-recipient links and
    VERP return path, from ``POST .../send-now`` until every delivery is recorded as sent, into
    the same ``smtp-sink``. (a) and (b) are interleaved three times each and the ratio of the
    medians is reported, with every figure. Then once each: DKIM signing on, and 2 and 4
    delivery processes (``mailmag serve`` plus ``mailmag worker``\\ s).
(c) the public endpoints under load from ``wrk`` in another process: sign-ups (JSON API, each
    with its own single-use form token) through 16 connections and again through 64 (every
    answer is held 40 ms by design, which caps 16 connections at 400 a second), and RFC 8058
    one-click unsubscribes through 16, with p50 and p99; once with one web process and once
    with one per core.

It records the time to expand the audience into deliveries, the time from "send now" to the
first recorded delivery, and the peak RSS of every mailmag process, and writes
``bench/results/latest.json`` and ``bench/results/latest.md``.

    .venv/bin/python bench/run.py [--subscribers 100000] [--full] [--db sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool
from sqlmodel import Session, col, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's test support

from mailer.clock import utcnow
from mailer.models import Issue
from subscriptions.auth import issue_token
from subscriptions.db import make_engine
from subscriptions.models import StaffRole, StaffUserCreate, Subscriber
from subscriptions.runtime import build_runtime
from subscriptions.settings import Settings
from subscriptions.staff import create_staff_user
from subscriptions.tokens import Action
from tests.support.bulk import confirmed_readers

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CORES = os.cpu_count() or 1  # web processes for the all-cores load run
# The product owner's reference newsletter, beside the checkout (``--newsletter`` elsewhere).
REFERENCE = ROOT.parent / "shared" / "bench" / "newsletter-20k.eml"
RESULTS = ROOT / "bench" / "results"
SECRET = "bench-secret-" + "b" * 40
POSTGRES_ADMIN = os.environ.get(
    "MAILMAG_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the pieces ---------------------------------------------------------------------------------


def ensure_tools() -> None:
    if not (Path("/usr/sbin/smtp-sink").exists() and shutil.which("wrk")):
        say("installing smtp-sink, smtp-source and wrk (bench/setup.sh)")
        subprocess.run(["bash", str(ROOT / "bench" / "setup.sh")], check=True)  # noqa: S603,S607


@contextmanager
def smtp_sink() -> Iterator[int]:
    port = free_port()
    command = ["/usr/sbin/smtp-sink", "-c", f"127.0.0.1:{port}", "1000"]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


_newsletter = REFERENCE  # the one the run uses (main sets it from --newsletter)


def wire_rate(port: int, messages: int) -> float:
    """Messages per second from smtp-source into the sink (the wire's limit here)."""
    started = time.perf_counter()
    subprocess.run(  # noqa: S603
        [
            "/usr/sbin/smtp-source",
            "-s", "20", "-d", "-m", str(messages),
            "-F", str(_newsletter), "-f", "news@example.com", "-t", "reader@example.org",
            f"127.0.0.1:{port}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return messages / (time.perf_counter() - started)


def newsletter_html() -> str:
    """The reference newsletter's HTML part, with its greeting made personal."""
    message = email.message_from_bytes(_newsletter.read_bytes(), policy=email.policy.default)
    part = message.get_body(("html",))
    assert part is not None
    html = str(part.get_content())  # type: ignore[attr-defined]
    body = re.search(r"<body[^>]*>(.*)</body>", html, re.S)
    html = body.group(1) if body else html
    return html.replace("Subscriber Number 1", "{{ subscriber.name }}")


# --- the store ----------------------------------------------------------------------------------


@dataclass
class Store:
    url: str
    engine: Engine
    settings: Settings
    drop: str | None = None


@contextmanager
def store(kind: str, directory: Path) -> Iterator[Store]:
    drop = None
    if kind == "sqlite":
        url = f"sqlite:///{directory / 'bench.db'}"
    else:
        name = f"mailmag_bench_{secrets.token_hex(4)}"
        admin = make_engine(POSTGRES_ADMIN, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        drop = name
    settings = Settings(_env_file=None, data_dir=directory, database_url=url, secret_key=SECRET)
    run_mailmag(["migrate"], env_for(settings, 0))
    engine = make_engine(settings.sqlalchemy_url, poolclass=NullPool)
    try:
        yield Store(url, engine, settings, drop)
    finally:
        engine.dispose()
        if drop:
            admin = make_engine(POSTGRES_ADMIN, poolclass=NullPool, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)'))
            admin.dispose()


def env_for(settings: Settings, smtp_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILMAG_")}
    env |= {
        "MAILMAG_DATABASE_URL": settings.database_url,
        "MAILMAG_DATA_DIR": str(settings.data_dir),
        "MAILMAG_SECRET_KEY": SECRET,
        "MAILMAG_SENDER_ADDRESS": "news@example.com",
        "MAILMAG_SENDER_NAME": "The Weekly Dispatch",
        "MAILMAG_LOG_LEVEL": "WARNING",
        "MAILMAG_SUBSCRIBE_PER_IP": "100000000",
        "MAILMAG_SUBSCRIBE_PER_ADDRESS": "100000000",
    }
    if smtp_port:
        env |= {
            "MAILMAG_SMTP_HOST": "127.0.0.1",
            "MAILMAG_SMTP_PORT": str(smtp_port),
            "MAILMAG_SMTP_TLS": "none",
        }
    return env | extra


def run_mailmag(args: list[str], env: dict[str, str]) -> None:
    subprocess.run([str(BIN / "mailmag"), *args], env=env, check=True, capture_output=True)  # noqa: S603


def seed(target: Store, count: int) -> tuple[int, str]:
    """``count`` confirmed subscribers of 'weekly' (bulk rows: this is the fixture, not the
    import path under test) and a marketer's API token."""
    runtime = build_runtime(target.settings, target.engine)
    runtime.sync_magazines()
    with Session(target.engine) as session:
        user = create_staff_user(
            session=session,
            data=StaffUserCreate(
                email="bench@example.com", role=StaffRole.marketer, password="x" * 16
            ),
        )
        token = issue_token(session, user, label="bench")
        session.commit()
    return confirmed_readers(target.engine, runtime.optin.hasher, "weekly", count), token


def new_issue(target: Store, magazine_id: int, html: str) -> int:
    with Session(target.engine) as session:
        issue = Issue(
            magazine_id=magazine_id,
            subject="The Weekly Dispatch, for {{ subscriber.name }}",
            html_body=html,
        )
        session.add(issue)
        session.commit()
        return issue.id or 0


# --- mailmag running ----------------------------------------------------------------------------


@dataclass
class Running:
    base: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def peak_rss_mb(self) -> list[float]:
        peaks = []
        for process in self.processes:
            status = Path(f"/proc/{process.pid}/status").read_text()
            match = re.search(r"VmHWM:\s+(\d+) kB", status)
            peaks.append(round(int(match.group(1)) / 1024, 1) if match else 0.0)
        return peaks


@contextmanager
def mailmag(env: dict[str, str], workers: int = 1) -> Iterator[Running]:
    port = free_port()
    env = env | {"MAILMAG_HTTP_PORT": str(port), "MAILMAG_CAPTURE_SMTP_PORT": "0"}
    serve = subprocess.Popen([str(BIN / "mailmag"), "serve"], env=env, stdout=subprocess.DEVNULL)  # noqa: S603
    running = Running(f"http://127.0.0.1:{port}", [serve])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{running.base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mailmag serve did not start")
            time.sleep(0.1)
        for _ in range(workers - 1):
            running.processes.append(
                subprocess.Popen(  # noqa: S603
                    [str(BIN / "mailmag"), "worker"], env=env, stdout=subprocess.DEVNULL
                )
            )
        time.sleep(1.0 if workers > 1 else 0.2)
        yield running
    finally:
        for process in running.processes:
            process.send_signal(signal.SIGTERM)
        for process in running.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def send_and_wait(
    target: Store, running: Running, token: str, issue_id: int, total: int
) -> dict[str, Any]:
    """Send now, then wait until every delivery is recorded; times from the request."""
    started_at = utcnow()
    t0 = time.perf_counter()
    answer = httpx.post(
        f"{running.base}/api/v1/issues/{issue_id}/send-now",
        headers={"Authorization": f"Bearer {token}"},
        timeout=600,
    )
    answer.raise_for_status()
    answered = time.perf_counter() - t0
    expanded = None if answer.json()["queuing"] else answered
    deadline = time.monotonic() + 3600
    done = 0
    while done < total:
        time.sleep(0.1 if expanded is None else 0.25)
        with target.engine.connect() as conn:
            if (
                expanded is None
                and conn.execute(
                    text("SELECT expansion_cursor IS NULL FROM issue WHERE id = :i"),
                    {"i": issue_id},
                ).scalar_one()
            ):
                expanded = time.perf_counter() - t0
            done = conn.execute(
                text("SELECT count(*) FROM delivery WHERE issue_id = :i AND status = 'sent'"),
                {"i": issue_id},
            ).scalar_one()
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {total} sent")
    with target.engine.connect() as conn:
        first, last = conn.execute(
            text("SELECT min(sent_at), max(sent_at) FROM delivery WHERE issue_id = :i"),
            {"i": issue_id},
        ).one()
    first_at, last_at = as_utc(first), as_utc(last)
    seconds = (last_at - started_at).total_seconds()
    return {
        "messages": total,
        "seconds": round(seconds, 2),
        "rate": round(total / seconds, 1),
        "send_now_answer_seconds": round(answered, 3),
        "expand_seconds": round(expanded if expanded is not None else answered, 2),
        "first_message_seconds": round((first_at - started_at).total_seconds(), 2),
        "peak_rss_mb": running.peak_rss_mb(),
    }


def as_utc(value: Any) -> Any:
    from datetime import UTC, datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- load on the public endpoints ---------------------------------------------------------------

WRK_SCRIPT = """
local lines = {}
local n = 0
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  for line in io.lines(args[1] .. "." .. id) do lines[#lines + 1] = line end
end
function request()
  n = n + 1
  local line = lines[(n - 1) % #lines + 1]
  if args_method == "subscribe" then
    return wrk.format("POST", "/api/v1/subscribe", {["Content-Type"] = "application/json"}, line)
  end
  return wrk.format("POST", line, {["Content-Type"] = "application/x-www-form-urlencoded"},
    "List-Unsubscribe=One-Click")
end
"""


# Connections wrk keeps open. A sign-up's answer is held to MAILMAG_SIGNUP_ANSWER_MS (40 ms)
# whatever the server does, so that its timing tells nothing: 16 connections cannot ask for
# more than 400 a second. Sign-ups are loaded once with 16 (the target's latency, at a rate
# above the target's) and once with 64, for the rate the server can take.
CONNECTIONS = 16
CAPACITY_CONNECTIONS = 64
# A pause between two loads: when wrk stops, the requests it had in flight are still being
# answered (64 sign-ups, each held 40 ms, queue for a few hundred ms), and the next load's
# first requests would wait behind them. Each load starts on a server with nothing in flight.
SETTLE_SECONDS = 2


def wrk(
    base: str,
    kind: str,
    lines: list[list[str]],
    directory: Path,
    seconds: int,
    connections: int = CONNECTIONS,
) -> dict[str, Any]:
    stem = directory / f"{kind}.lines"
    for index, chunk in enumerate(lines):
        Path(f"{stem}.{index}").write_text("\n".join(chunk) + "\n")
    script = directory / f"{kind}.lua"
    script.write_text(f'args_method = "{kind}"\n' + WRK_SCRIPT)
    done = subprocess.run(  # noqa: S603
        [
            "/usr/bin/wrk", "-t", str(len(lines)), "-c", str(connections),
            "-d", f"{seconds}s", "--latency", "-s", str(script), base, "--", str(stem),
        ],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    output = done.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"\s(50|99)%\s+([\d.]+\w+)", output))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return {
        "requests_per_second": round(rate, 1),
        "p50_ms": to_ms(latency.get("50", "0ms")),
        "p99_ms": to_ms(latency.get("99", "0ms")),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "connections": connections,
    }


def to_ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return round(float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 2)


def load_test(
    target: Store, running: Running, directory: Path, seconds: int, run: int = 0
) -> dict[str, Any]:
    """Sign-ups of new addresses, then one-click unsubscribes of confirmed readers; ``run``
    picks people and addresses no earlier run used, so every request does its full work."""
    runtime = build_runtime(target.settings, target.engine)
    notice = runtime.optin.notices.current("en").content_hash
    threads = 2

    def sign_ups(series: str) -> list[list[str]]:
        return [
            [
                json.dumps(
                    {
                        "email": f"load{run}{series}x{t}x{n}@example.net",
                        "magazines": ["weekly"],
                        "notice_hash": notice,
                        "form_token": runtime.optin.new_form_token(),
                    }
                )
                for n in range(8000)
            ]
            for t in range(threads)
        ]

    with Session(target.engine) as session:
        people = session.exec(
            select(Subscriber).order_by(col(Subscriber.id)).offset(20_000 * run).limit(20_000)
        ).all()
    links = [runtime.links.url(Action.unsubscribe, p, "weekly") for p in people]
    paths = [link.split("://", 1)[1].split("/", 1)[1] for link in links]
    one_click = [["/" + p for p in paths[t::threads]] for t in range(threads)]
    found = {"subscribe": wrk(running.base, "subscribe", sign_ups("a"), directory, seconds)}
    time.sleep(SETTLE_SECONDS)
    found["subscribe_capacity"] = wrk(
        running.base, "subscribe", sign_ups("b"), directory, seconds, CAPACITY_CONNECTIONS
    )
    time.sleep(SETTLE_SECONDS)
    found["one_click_unsubscribe"] = wrk(running.base, "unsubscribe", one_click, directory, seconds)
    return found


# --- the whole run ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--full", action="store_true", help="1,000,000 subscribers")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load-seconds", type=int, default=10)
    parser.add_argument("--out", default="latest")
    parser.add_argument("--only-load", action="store_true", help="skip the sending runs")
    parser.add_argument(
        "--only-send",
        action="store_true",
        help="only the interleaved wire and mailmag runs (no DKIM, workers or load)",
    )
    parser.add_argument(
        "--newsletter",
        type=Path,
        default=REFERENCE,
        help="the 20 KB reference newsletter (default: ../shared/bench/newsletter-20k.eml)",
    )
    options = parser.parse_args()
    global _newsletter
    _newsletter = options.newsletter
    if not _newsletter.is_file():
        parser.error(f"no reference newsletter at {_newsletter}: give its path with --newsletter")
    count = 1_000_000 if options.full else options.subscribers
    ensure_tools()
    html = newsletter_html()
    python = platform.python_version()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {python}",
        "database": options.db,
        "subscribers": count,
        "date": utcnow().isoformat(timespec="seconds"),
    }
    with tempfile.TemporaryDirectory() as scratch, store(options.db, Path(scratch)) as target:
        say(f"seeding {count} subscribers on {options.db}")
        magazine_id, token = seed(target, count)
        with smtp_sink() as port:
            base_env = env_for(target.settings, port)
            if options.only_load:
                with mailmag(base_env) as running:
                    load = load_test(target, running, Path(scratch), options.load_seconds)
                with mailmag(base_env | {"MAILMAG_WEB_PROCESSES": str(CORES)}) as running:
                    multi = load_test(target, running, Path(scratch), options.load_seconds, 1)
                print(json.dumps({"1": load, str(CORES): multi}, indent=2))
                return
            wire, runs = [], []
            for round_ in range(options.rounds):
                wire.append(round(wire_rate(port, min(count, 20_000)), 1))
                say(f"round {round_ + 1}: wire {wire[-1]} msg/s")
                with mailmag(base_env) as running:
                    runs.append(
                        send_and_wait(
                            target, running, token, new_issue(target, magazine_id, html), count
                        )
                    )
                say(f"round {round_ + 1}: mailmag {runs[-1]['rate']} msg/s")
            results["wire_rates"] = wire
            results["mailmag_runs"] = runs
            results["wire_median"] = statistics.median(wire)
            results["mailmag_median"] = statistics.median(r["rate"] for r in runs)
            results["ratio"] = round(results["mailmag_median"] / results["wire_median"], 3)
            if options.only_send:
                RESULTS.mkdir(parents=True, exist_ok=True)
                out = RESULTS / f"{options.out}.json"
                out.write_text(json.dumps(results, indent=2) + "\n")
                print(json.dumps(results, indent=2))
                return
            key = Path(scratch) / "dkim.pem"
            make_key(key)
            with mailmag(base_env | {"MAILMAG_DKIM_PRIVATE_KEY_FILE": str(key)}) as running:
                results["dkim_on"] = send_and_wait(
                    target, running, token, new_issue(target, magazine_id, html), count
                )
            say(f"DKIM on: {results['dkim_on']['rate']} msg/s")
            results["workers"] = {"1": results["mailmag_median"]}
            for workers in (2, 4):
                with mailmag(base_env, workers) as running:
                    run = send_and_wait(
                        target, running, token, new_issue(target, magazine_id, html), count
                    )
                results["workers"][str(workers)] = run["rate"]
                say(f"{workers} workers: {run['rate']} msg/s")
            with mailmag(base_env) as running:
                results["load"] = load_test(target, running, Path(scratch), options.load_seconds)
                results["load"]["peak_rss_mb"] = running.peak_rss_mb()
            say(f"load: {json.dumps(results['load'])}")
            results["web_processes"] = CORES
            with mailmag(base_env | {"MAILMAG_WEB_PROCESSES": str(CORES)}) as running:
                results["load_all_cores"] = load_test(
                    target, running, Path(scratch), options.load_seconds, run=1
                )
            say(f"load, {CORES} web processes: {json.dumps(results['load_all_cores'])}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{options.out}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{options.out}.md").write_text(table(results))
    print(table(results))


def make_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def load_row(label: str, found: dict[str, Any]) -> tuple[str, str, str]:
    detail = (
        f"p50 {found['p50_ms']} ms, p99 {found['p99_ms']} ms, non-2xx {found['non_2xx']}, "
        f"{found.get('connections', 16)} connections"
    )
    return label, f"{found['requests_per_second']:.0f} req/s", detail


def table(r: dict[str, Any]) -> str:
    runs = r["mailmag_runs"]
    rss = max(max(x["peak_rss_mb"]) for x in [*runs, r["dkim_on"]])
    load = r["load"]
    rows = [
        (
            "Wire: smtp-source into smtp-sink (median)",
            f"{r['wire_median']:.0f} msg/s",
            f"runs {r['wire_rates']}",
        ),
        (
            "mailmag end to end, DKIM off (median)",
            f"{r['mailmag_median']:.0f} msg/s",
            f"runs {[x['rate'] for x in runs]}",
        ),
        ("Ratio mailmag / wire (target >= 0.30)", f"{r['ratio']:.2f}", ""),
        (
            "mailmag, DKIM on",
            f"{r['dkim_on']['rate']:.0f} msg/s",
            f"{r['dkim_on']['rate'] / r['mailmag_median']:.2f} of DKIM off",
        ),
        (
            "mailmag with 1 / 2 / 4 delivery processes",
            " / ".join(f"{r['workers'][k]:.0f}" for k in ("1", "2", "4")) + " msg/s",
            "",
        ),
        (
            "Expanding the audience into deliveries",
            f"{statistics.median(x['expand_seconds'] for x in runs):.2f} s",
            f"{r['subscribers']} recipients, while sending; send-now answered in "
            f"{statistics.median(x['send_now_answer_seconds'] for x in runs):.2f} s",
        ),
        (
            "From send-now to the first recorded delivery",
            f"{statistics.median(x['first_message_seconds'] for x in runs):.2f} s",
            "target <= 2 s",
        ),
        ("Peak RSS of any mailmag process", f"{rss:.0f} MB", "target <= 200 MB"),
    ]
    loads = [(1, load)]
    if "load_all_cores" in r:
        loads.append((r["web_processes"], r["load_all_cores"]))
    for n, found in loads:
        processes = f"{n} web process" + "es" * (n > 1)
        rows.append(
            load_row(
                f"Sign-up (JSON API), {processes} (target 300 req/s, p99 100 ms)",
                found["subscribe"],
            )
        )
        if "subscribe_capacity" in found:
            rows.append(
                load_row(f"Sign-up, {processes}, more connections", found["subscribe_capacity"])
            )
        rows.append(
            load_row(
                f"One-click unsubscribe, {processes} (target 600 req/s, p99 50 ms)",
                found["one_click_unsubscribe"],
            )
        )
    lines = [
        f"Run on {r['machine']}, {r['database']}, {r['subscribers']:,} subscribers, {r['date']}.",
        "",
        "| Measure | Result | Detail |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
