"""/metrics is scraped like Prometheus would, and its numbers move as people act and mail
goes out; no personal data appears in it."""

from __future__ import annotations

import asyncio
import re

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from subscriptions.app import create_app
from subscriptions.runtime import Runtime
from subscriptions.settings import Settings
from tests.mailer.test_sending import drain, seed, worker_for
from tests.support.pages import hidden_fields, link_in, local
from tests.support.smtp import SMTPSink


def value(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # exposition sorts them
    pattern = rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_counters_and_gauges_move_as_an_issue_is_sent(
    client: TestClient, app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    before = client.get("/metrics").text
    page = client.get("/subscribe")
    client.post(
        "/subscribe",
        data={**hidden_fields(page.text), "email": "m@example.org", "magazines": ["weekly"]},
    )
    client.post(local(link_in(smtp_server.wait_for(1)[0].message(), "/confirm/")))
    issue_id, _people = seed(app, engine, 4)
    runtime: Runtime = app.state.runtime
    runtime.start_issue(issue_id)
    queued = client.get("/metrics").text
    assert value(queued, "mailmag_deliveries", state="queued") == 5  # 4 seeded + the sign-up
    asyncio.run(drain(worker_for(app, engine, smtp_server)))
    after = client.get("/metrics").text
    assert value(after, "mailmag_deliveries", state="sent") == 5
    assert value(after, "mailmag_deliveries", state="queued") == 0
    assert value(after, "mailmag_issues", status="sent") == 1
    assert value(after, "mailmag_send_rate_per_second") > 0
    assert value(after, "mailmag_optin_events_total", event="sign_up", channel="web_form") == (
        value(before, "mailmag_optin_events_total", event="sign_up", channel="web_form") + 1
    )
    assert value(after, "mailmag_optin_events_total", event="confirm", channel="link") == 1
    assert 'route="/subscribe"' in after
    assert "m@example.org" not in after
    assert "reader" not in after


def test_a_metrics_token_keeps_strangers_out(settings: Settings, engine: Engine) -> None:
    app = create_app(
        settings.model_copy(update={"metrics_token": SecretStr("scrape-me")}),
        engine=engine,
        delivery=False,
    )
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert ok.status_code == 200
        assert "mailmag_deliveries" in ok.text
