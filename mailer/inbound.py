"""``mailmag inbound``: the SMTP server for the return-path domain and the unsubscribe mailto.

It limits each client to ``per_client`` transactions a minute (421 beyond), refuses messages
over the size limit, and accepts mail only for addresses it owns: ``bounce+TOKEN@`` and
``unsubscribe+TOKEN@`` with a genuine delivery token, and ``postmaster@`` / ``abuse@`` (where
feedback loops send complaints) of the bounce domain; anything else is refused at RCPT, so
it is no relay. Each message is stored durably before the 250 reply, then classified and
acted on; a failure while acting leaves the stored message for a later look, and still
answers 250.

One message is stored once and acted on once, whatever its envelope lists. An address given
again in RCPT (in any case) is acknowledged and not counted twice. A message to several
addresses it owns is no bounce or complaint that an MTA sends (a DSN goes to the one return
path of the message it reports; a feedback loop names one report address), so it is kept
under one of them, and classified as a message to that one: the first address with a
delivery token (``bounce+``, ``unsubscribe+``), else the first given; the envelope's other
recipients change nothing. Ten copies of a 2 MB message, or ten people suppressed by one
message, are no longer to be had from one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from aiosmtpd.controller import Controller

from mailer.feedback import FeedbackSink, InboundStore, classify
from mailer.ratelimit import Limit, SlidingWindow
from mailer.verp import TOKEN_LENGTH, DeliveryTokens

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 10


class InboundHandler:
    def __init__(
        self,
        store: InboundStore,
        sink: FeedbackSink,
        tokens: DeliveryTokens,
        domain: str,
        per_client: Limit = Limit(600, 60),
    ) -> None:
        self.per_client = SlidingWindow(per_client)
        self.store = store
        self.sink = sink
        self.tokens = tokens
        self.domain = domain.lower()
        self._ours = re.compile(
            rf"(?:(bounce|unsubscribe)\+([a-z2-7]{{{TOKEN_LENGTH}}})|postmaster|abuse)"
            rf"@{re.escape(self.domain)}"
        )

    def owns(self, address: str) -> bool:
        match = self._ours.fullmatch(address.strip().lower())
        if match is None:
            return False
        token = match.group(2)
        return token is None or self.tokens.read(token) is not None

    async def handle_MAIL(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        client = session.peer[0] if session.peer else "unknown"
        if self.per_client.check(str(client)) is not None:
            return "421 4.7.0 Too many messages from your address, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.owns(address):
            return "550 5.1.1 No such mailbox here (this server is not a relay)"
        if address.strip().lower() in {a.strip().lower() for a in envelope.rcpt_tos}:
            return "250 OK"  # the same mailbox again: the message is kept once all the same
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        raw: bytes = envelope.original_content
        mail_from = str(envelope.mail_from or "")
        recipient = self.acted_for(envelope.rcpt_tos)
        try:
            stored = await asyncio.to_thread(
                self.store.save, mail_from=mail_from, recipient=recipient, raw=raw
            )
        except Exception:
            log.exception("could not store an inbound message")
            return "451 4.3.0 Cannot store the message now, try again later"
        await asyncio.to_thread(self._process, stored, raw, recipient)
        return "250 2.0.0 Stored"

    def acted_for(self, recipients: list[str]) -> str:
        """The one recipient a message is kept and classified under (see the module's
        docstring): the first with a delivery token, else the first."""
        for address in recipients:
            match = self._ours.fullmatch(address.strip().lower())
            if match is not None and match.group(2) is not None:
                return address
        return recipients[0]

    def _process(self, stored: int, raw: bytes, recipient: str) -> None:
        try:
            feedback = classify(raw, recipient, self.tokens, self.domain)
            outcome = self.sink.apply(feedback)
            self.store.done(stored, feedback, outcome)
        except Exception:  # the message is stored; it can be processed again later
            log.exception("inbound message %s could not be processed", stored)


def inbound_server(
    handler: InboundHandler, host: str, port: int, *, max_size: int = 2_000_000
) -> Controller:
    return Controller(handler, hostname=host, port=port, data_size_limit=max_size)
