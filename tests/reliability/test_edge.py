"""Hostile clients at the HTTP edge, against ``mailmag serve`` in its own process, over raw
sockets: huge bodies, bodies sent a byte a second, headers never finished.

Bars: four 150 MB bodies (declared, and chunked without a length) are refused with 413 and
the server's resident memory grows by less than 10 MB; a body sent a byte a second gets 408
within the body timeout plus a second, and meanwhile and afterwards other clients are served
(a sign-up is stored); of many half-sent request headers and silent connections, none is
still open a second after the header timeout."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from mailer.capture import free_port
from tests.reliability.conftest import record, size
from tests.subscriptions.test_cli import serving

MB = 1024 * 1024
HUGE = 150 * MB
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """``mailmag serve`` on the embedded defaults, the webhook on, short timeouts: (port, pid)."""
    port = free_port()
    env = {
        "MAILMAG_HTTP_PORT": str(port),
        "MAILMAG_CAPTURE_SMTP_PORT": str(free_port()),
        "MAILMAG_WEBHOOK_SECRET": "webhook-secret-0123456789abcdef",
        "MAILMAG_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "MAILMAG_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    }
    with serving(tmp_path, env, ready_within=60) as process:
        yield port, process.pid


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS), or at its peak since ``reset_peak`` (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from VmRSS


def status_of(answer: bytes) -> int | None:
    head = answer.split(b"\r\n", 1)[0].split()
    return int(head[1]) if len(head) > 1 and head[1].isdigit() else None


def push_body(port: int, path: str, *, declared: bool) -> int | None:
    """Send a 150 MB body to ``path`` as fast as the server takes it, reading its answer as
    soon as there is one; the status it answered (None if it never did)."""
    framing = f"Content-Length: {HUGE}" if declared else "Transfer-Encoding: chunked"
    kind = "application/json" if path.startswith("/api/") else "application/x-www-form-urlencoded"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
        f"X-Mailmag-Timestamp: 0\r\nX-Mailmag-Signature: 00\r\n{framing}\r\n\r\n"
    ).encode()
    chunk = b"x" * MB
    piece = chunk if declared else b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(head)
            for _ in range(HUGE // MB):
                if select.select([sock], [], [], 0)[0]:
                    break  # answered before the body was sent: stop sending
                sock.sendall(piece)
            if not declared:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: its answer may be waiting
        with contextlib.suppress(OSError):
            while chunk_read := sock.recv(65536):
                answer += chunk_read
                if b"\r\n\r\n" in answer:
                    break
    return status_of(answer)


def test_huge_bodies_are_refused_while_they_stream(served: tuple[int, int]) -> None:
    port, pid = served
    httpx.get(f"http://127.0.0.1:{port}/subscribe", timeout=10)  # warm: templates, pools
    before = rss_mb(pid)
    reset_peak(pid)  # the peak counts: a body read whole is freed again once answered
    answers = [
        push_body(port, "/api/v1/feedback/webhook", declared=True),
        push_body(port, "/api/v1/feedback/webhook", declared=False),
        push_body(port, "/api/v1/subscribe", declared=False),
        push_body(port, "/subscribe", declared=False),
    ]
    grown = rss_mb(pid, "VmHWM") - before
    record("edge: 4 x 150 MB bodies", "answers", str(answers), "413 each", answers == [413] * 4)
    record(
        "edge: 4 x 150 MB bodies",
        "server peak RSS growth (MB)",
        round(grown, 1),
        "< 10",
        grown < 10,
    )
    assert answers == [413] * 4
    assert grown < 10


def test_a_body_sent_a_byte_a_second_gets_408_and_holds_nothing(
    served: tuple[int, int],
) -> None:
    port, _pid = served
    base = f"http://127.0.0.1:{port}"
    form = httpx.get(f"{base}/api/v1/subscribe/form", timeout=10).json()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
        slow.sendall(
            b"POST /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
        )
        answer = b""
        healthy = []
        while time.monotonic() - started < BODY_TIMEOUT + 10 and not answer:
            with contextlib.suppress(OSError):
                slow.sendall(b"e")
            healthy.append(httpx.get(f"{base}/healthz", timeout=5).status_code)
            if select.select([slow], [], [], 0.5)[0]:
                with contextlib.suppress(OSError):
                    answer = slow.recv(65536)
    took = time.monotonic() - started
    signed_up = httpx.post(
        f"{base}/api/v1/subscribe",
        json={
            "email": "after.the.slow.one@example.org",
            "magazines": ["weekly"],
            "notice_hash": form["notice_hash"],
            "form_token": form["form_token"],
        },
        timeout=10,
    )
    bar = BODY_TIMEOUT + 1
    record("edge: slow body", "answer", str(status_of(answer)), "408", status_of(answer) == 408)
    record("edge: slow body", "seconds to the answer", round(took, 1), f"<= {bar}", took <= bar)
    record(
        "edge: slow body",
        "others served meanwhile",
        str(set(healthy)),
        "{200}",
        set(healthy) == {200},
    )
    assert status_of(answer) == 408
    assert took <= bar
    assert set(healthy) == {200}
    assert signed_up.status_code == 202, signed_up.text


def test_half_sent_headers_are_not_held_open(served: tuple[int, int]) -> None:
    port, _pid = served
    count = size(200, 1500)
    held: list[socket.socket] = []
    try:
        for n in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if n % 4:  # most send a start and stop; some send nothing at all
                sock.sendall(b"POST /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            held.append(sock)
        time.sleep(HEADER_TIMEOUT + 1)
        still_open = 0
        timed_out = 0
        for sock in held:
            sock.setblocking(False)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                still_open += 1
                continue
            except OSError:
                continue
            if status_of(data) == 408:
                timed_out += 1
        answered = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code
    finally:
        for sock in held:
            sock.close()
    record("edge: half-sent headers", "connections", count, "-", True)
    record(
        "edge: half-sent headers",
        "still open after the timeout + 1 s",
        still_open,
        "0",
        still_open == 0,
    )
    record("edge: half-sent headers", "answered 408", timed_out, f"{count}", timed_out == count)
    assert still_open == 0
    assert timed_out == count
    assert answered == 200
