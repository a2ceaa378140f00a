"""Each recipient's message of a batch, where a message that cannot be composed fails alone.

Used by the delivery worker (in a worker thread, a chunk of recipients at a time, so that
rendering never runs on the event loop) and by the processor pull API. Two kinds of failure:

- the recipient's own data cannot go into the message (a merge field that would put a line
  break into the subject, say): that delivery fails, the rest of the batch goes on;
- the issue's template is refused while rendering for this recipient (a sandbox or budget
  rule, or anything else unexpected): that delivery fails and the issue must be paused
  (``Composed.pauses_issue``), since every later recipient may fail the same way; the caller
  renders no more of the issue.

The reason stored with a failed delivery is shown to marketing and staff, so it never holds
personal data: the recipient's address, merge-field values and token are cut out of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from mailer.audience import Recipient
from mailer.compose import PreparedIssue
from mailer.errors import MailerError, TemplateRefused

log = logging.getLogger(__name__)

REASON_LIMIT = 300  # an issue's pause reason holds this much


@dataclass(frozen=True, slots=True)
class Composed:
    """One recipient's message, or why there is none."""

    token: str
    message: bytes | None = None
    refusal: str = ""  # why no message was composed: no personal data in it
    pauses_issue: bool = False  # the template was refused: the issue must stop

    @property
    def reply(self) -> str:
        """What the delivery records as its outcome's reply."""
        return f"not sent: {self.refusal}"


def without_personal_data(text: str, recipient: Recipient, token: str) -> str:
    """``text`` with the recipient's address, merge-field values and token cut out: an
    error raised while composing may quote any of them."""
    secrets = sorted(
        {value for value in (recipient.address, token, *recipient.fields.values()) if value},
        key=len,
        reverse=True,  # the longest first, so a value inside another goes with it
    )
    for secret in secrets:
        text = text.replace(secret, "…")
    return text


def compose(prepared: PreparedIssue, recipient: Recipient, token: str) -> Composed:
    """The recipient's message, or a ``Composed`` saying why it cannot be made."""
    try:
        return Composed(token, prepared.message(recipient, token))
    except TemplateRefused as exc:
        reason = without_personal_data(str(exc), recipient, token)
        return Composed(token, refusal=f"the template was refused: {reason}", pauses_issue=True)
    except MailerError as exc:  # the recipient's data: a header it would break, say
        reason = without_personal_data(str(exc), recipient, token)
        return Composed(token, refusal=f"the message could not be composed: {reason}")
    except Exception as exc:  # a defect, not the recipient's: stop the issue, keep the trace
        log.exception("composing a message of issue %s failed", prepared.content.issue_id)
        return Composed(
            token,
            refusal=f"composing the message failed unexpectedly ({type(exc).__name__})",
            pauses_issue=True,
        )


def compose_each(
    prepared: PreparedIssue, recipients: Iterable[tuple[Recipient, str]]
) -> list[Composed]:
    """``compose`` for each (recipient, token) in order, stopping after the first that pauses
    the issue: the answer is shorter than the input when it does."""
    composed = []
    for recipient, token in recipients:
        composed.append(one := compose(prepared, recipient, token))
        if one.pauses_issue:
            break
    return composed


def pause_reason(composed: Composed) -> str:
    """The reason an issue is paused for, as staff read it beside the issue."""
    text = f"paused while sending: {composed.refusal}. Resume to send to the rest, or cancel."
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 1] + "…"
