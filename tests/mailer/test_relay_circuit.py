"""The worker and the relay circuit: a relay that takes no session gets its claims back with
no attempt counted and no new work until its probe succeeds; a processor's route has its own
circuit, so it keeps sending while the operator's relay is away (and the other way round)."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from sqlalchemy.engine import Engine

from mailer.capture import free_port
from mailer.transport import SMTPRelay, SMTPTransport
from subscriptions.runtime import Runtime
from tests.mailer.test_processors import with_route
from tests.mailer.test_sending import deliveries, drain, seed, worker_for
from tests.support.smtp import SMTPSink


async def until_ready(transport: SMTPTransport) -> None:
    for _ in range(100):
        if transport.ready:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the circuit did not close")


def test_claims_go_back_uncounted_while_the_relay_is_away(app: FastAPI, engine: Engine) -> None:
    runtime: Runtime = app.state.runtime
    issue_id, people = seed(app, engine, 6)
    runtime.start_issue(issue_id)
    relay = SMTPSink(port=free_port())  # not started yet: nothing listens
    worker = worker_for(app, engine, relay)

    async def scenario() -> tuple[int, list[tuple[str, int]], int]:
        handled = await worker.run_once()
        held = [(d.status.value, d.attempts) for d in deliveries(engine, issue_id)]
        again = await worker.run_once()  # the circuit is open: nothing is claimed
        relay.start()
        assert isinstance(worker.transport, SMTPTransport)
        await until_ready(worker.transport)
        await drain(worker)
        return handled, held, again

    try:
        handled, held, again = asyncio.run(scenario())
    finally:
        relay.stop()
    assert handled == 6
    assert held == [("queued", 0)] * 6
    assert again == 0
    assert [(d.status.value, d.attempts) for d in deliveries(engine, issue_id)] == [("sent", 1)] * 6
    assert sorted(r.rcpt_tos[0] for r in relay.received) == sorted(p.email for p in people)


def test_a_processors_route_has_its_own_circuit(
    routed_app: FastAPI, engine: Engine, smtp_server: SMTPSink
) -> None:
    runtime: Runtime = routed_app.state.runtime
    own_issue, _people = seed(routed_app, engine, 3)
    routed_issue, _none = seed(routed_app, engine, 0)  # another issue to the same 3 readers
    with_route(engine, routed_issue, "sakura-delivery", "<p>Dear {{ subscriber.name }}</p>")
    runtime.start_issue(own_issue)
    runtime.start_issue(routed_issue)
    worker = worker_for(routed_app, engine, smtp_server)
    worker.transport = SMTPTransport(SMTPRelay(port=free_port()))  # the own relay: away
    worker.routes = {
        "sakura-delivery": SMTPTransport(SMTPRelay(host=smtp_server.host, port=smtp_server.port))
    }
    asyncio.run(drain(worker))
    assert [(d.status.value, d.attempts) for d in deliveries(engine, own_issue)] == [
        ("queued", 0)
    ] * 3
    assert [d.status.value for d in deliveries(engine, routed_issue)] == ["sent"] * 3
    assert len(smtp_server.received) == 3
