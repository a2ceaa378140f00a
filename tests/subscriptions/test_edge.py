"""The HTTP edge: each route class's body limit with a clear 413, and whom the app believes
about the client's address (X-Forwarded-For only from MAILMAG_TRUSTED_PROXIES)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from subscriptions.app import create_app
from subscriptions.edge import BodyLimits
from subscriptions.models import ConsentEvent
from subscriptions.settings import Settings
from tests.support.server import serving


@pytest.fixture
def edge_client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    small = settings.model_copy(
        update={
            "max_form_bytes": 8192,
            "max_api_bytes": 16384,
            "webhook_secret": SecretStr("webhook-secret-0123456789abcdef"),
        }
    )
    with TestClient(create_app(small, engine=engine, delivery=False)) as client:
        yield client


def test_each_route_class_has_its_limit_and_says_so(edge_client: TestClient) -> None:
    form = {"email": "a@example.org", "note": "x" * 9000}
    page = edge_client.post("/subscribe", data=form)
    assert page.status_code == 413
    assert page.headers["content-type"].startswith("text/plain")
    assert "at most 8 KiB" in page.text
    assert "上限は 8 KiB" in page.text
    assert page.headers["connection"] == "close"

    api = edge_client.post("/api/v1/subscribe", json={"email": "a@example.org", "x": "y" * 17000})
    assert api.status_code == 413
    assert api.json() == {"detail": "request body too large: at most 16 KiB on this route"}
    assert edge_client.post("/processor/v1/outcomes", content=b"{" * 17000).status_code == 413

    hook = edge_client.post(
        "/api/v1/feedback/webhook",
        content=json.dumps({"id": "e", "detail": "x" * BodyLimits().webhook}),
        headers={"X-Mailmag-Timestamp": "0", "X-Mailmag-Signature": "00"},
    )
    assert hook.status_code == 413
    assert "64 KiB" in hook.json()["detail"]


def test_a_body_within_its_limit_reaches_the_route(edge_client: TestClient) -> None:
    """Just under the form limit: the sign-up route itself answers (its own 4xx)."""
    answer = edge_client.post("/subscribe", data={"email": "a@example.org", "note": "x" * 7000})
    assert answer.status_code not in (408, 413)
    api = edge_client.post("/api/v1/subscribe", json={"email": "a@example.org", "x": "y" * 15000})
    assert api.status_code == 422  # the API's own answer to fields it does not know


def test_a_streamed_body_without_a_length_is_cut_at_the_limit(edge_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"y" * 1024

    answer = edge_client.post(
        "/api/v1/subscribe", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413


def sign_up(base: str, address: str, forwarded_for: str) -> httpx.Response:
    form = httpx.get(f"{base}/api/v1/subscribe/form", timeout=10).json()
    return httpx.post(
        f"{base}/api/v1/subscribe",
        json={
            "email": address,
            "magazines": ["weekly"],
            "notice_hash": form["notice_hash"],
            "form_token": form["form_token"],
        },
        headers={"X-Forwarded-For": forwarded_for},
        timeout=10,
    )


def recorded_ips(engine: Engine) -> list[str | None]:
    with Session(engine) as session:
        return list(session.exec(select(ConsentEvent.ip).order_by(col(ConsentEvent.seq))).all())


def test_by_default_x_forwarded_for_is_not_believed(settings: Settings, engine: Engine) -> None:
    """Over real HTTP from 127.0.0.1 (uvicorn alone would believe it from there): the
    evidence records the connection's peer, and rotating the header does not get past the
    per-IP limit."""
    limited = settings.model_copy(update={"subscribe_per_ip": 2})
    with serving(create_app(limited, engine=engine, delivery=False)) as base:
        codes = [
            sign_up(base, f"reader{n}@example.org", f"203.0.113.{n}").status_code for n in range(3)
        ]
    assert codes == [202, 202, 429]
    assert set(recorded_ips(engine)) == {"127.0.0.1"}


def test_a_listed_proxy_is_believed(settings: Settings, engine: Engine) -> None:
    trusting = settings.model_copy(update={"trusted_proxies": "10.9.0.0/16, 127.0.0.1"})
    with serving(create_app(trusting, engine=engine, delivery=False)) as base:
        # The proxy appends the peer it saw: the nearest address it does not trust is the client.
        answer = sign_up(base, "reader@example.org", "198.51.100.4, 203.0.113.8, 10.9.0.3")
    assert answer.status_code == 202, answer.text
    assert set(recorded_ips(engine)) == {"203.0.113.8"}


@pytest.mark.parametrize("value", ["10.0.0.300", "proxy.example", "*", "10.0.0.0/99"])
def test_trusted_proxies_must_be_addresses_or_networks(settings: Settings, value: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or network"):
        Settings(**{**settings.model_dump(), "trusted_proxies": value})
