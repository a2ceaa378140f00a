"""What a failed delivery says about its recipient, read from its RFC 3463 enhanced status.

One reading for every path a failure arrives by: the relay's refusal at sending (the
worker), a DSN or other bounce arriving at the VERP address (``mailer.feedback``) and a
sending provider's webhook. The enhanced status code (``5.1.1``) is the relay's own word on
what failed; the basic reply code (``550``) is read only when there is none.

=================  ==============================================  =======================
status             what failed                                     verdict
=================  ==============================================  =======================
5.1.x              the address (no such user, bad domain...)       hard: suppress
5.2.1              the mailbox, disabled                           hard: suppress
other 5.2.x        the mailbox, full or over a size limit          soft: score
4.x.x              anything, for now                               soft: score
5.3.x to 5.6.x     the receiving system, network, protocol, media  soft: score
5.7.x              policy: the content or the sender was refused   block
=================  ==============================================  =======================

A block says nothing about the person's address, only about the message or about us (spam
filtering, reputation, authentication), so it never suppresses anyone; it is counted on the
issue, where the brake (``mailer.brake``) pauses an issue that too many providers refuse,
and it shows in the issue's report.

Where the status names no cause (none at all, or ``X.0.0``, "undefined"; and within 5.3 to
5.6, an undefined ``X.Y.0``, where only plain words may say more), the words of the reply
decide when they are plain (``WORDS``: "user unknown" is hard, "quota" soft, "spam" a
block); then a basic code that RFC 5321 / 7504 give to the address (551, 553, 556, 521) is
hard; then a failure that a bounce detector read as permanent (flufl.bounce, for a bounce
without fields) is hard; anything else scores as soft. So a bare ``550``, which relays use
for everything from "no such user" to "spam", never suppresses on its own: a dead address
that never says more is suppressed after a few issues, and a reader whose provider
disliked one issue keeps their subscription.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Verdict(StrEnum):
    hard = "hard"  # the address is bad: suppress it
    soft = "soft"  # it may pass another time: score it
    block = "block"  # refused for policy or content: count it on the issue, suppress no one


# A failure's status (class 4 or 5), standing alone: not part of an IP address or a version.
_STATUS = re.compile(r"(?<![\w.])([45])\.(\d{1,3})\.(\d{1,3})(?!\w|\.\d)")
_HARD_BASIC = frozenset({521, 551, 553, 556})

# RFC 3463's names for the codes a report shows (class 4 and 5 share them).
_SUBJECTS = {
    "0": "other",
    "1": "address",
    "2": "mailbox",
    "3": "mail system",
    "4": "network or routing",
    "5": "protocol",
    "6": "content or media",
    "7": "policy or security",
}
_DETAILS = {
    "1.1": "bad destination mailbox address",
    "1.2": "bad destination system address",
    "1.3": "bad destination mailbox address syntax",
    "1.6": "destination mailbox has moved",
    "1.10": "recipient address has null MX",
    "2.1": "mailbox disabled",
    "2.2": "mailbox full",
    "2.3": "message length exceeds administrative limit",
    "3.4": "message too big for system",
    "4.1": "no answer from host",
    "4.4": "unable to route",
    "4.7": "delivery time expired",
    "5.3": "too many recipients",
    "7.1": "delivery not authorized, message refused",
    "7.23": "SPF validation failed",
    "7.25": "reverse DNS validation failed",
    "7.26": "multiple authentication checks failed",
    "7.27": "sender address has null MX",
}


def enhanced_status(text: str) -> str | None:
    """The first RFC 3463 failure status (``class.subject.detail``, class 4 or 5) in
    ``text``, or None."""
    found = _STATUS.search(text)
    if found is None:
        return None
    klass, subject, detail = found.groups()
    return f"{klass}.{int(subject)}.{int(detail)}"


# Plain words of replies that give no cause in their status, checked in this order.
WORDS: tuple[tuple[Verdict, re.Pattern[str]], ...] = (
    (
        Verdict.hard,
        re.compile(
            r"user unknown|unknown (user|recipient|address)|no such (user|mailbox|recipient)"
            r"|(user|mailbox|address|account) (does not|doesn't) exist|not a valid user"
            r"|invalid (recipient|mailbox)|存在しません",
            re.IGNORECASE,
        ),
    ),
    (
        Verdict.soft,
        re.compile(
            r"quota|mail ?box (is )?full|space not enough|insufficient (disk )?space|容量",
            re.IGNORECASE,
        ),
    ),
    (
        Verdict.block,
        re.compile(
            r"spam|block(ed|list)|blacklist|listed at|reputation|policy|unable to relay"
            r"|relay(ing)? (access )?denied",
            re.IGNORECASE,
        ),
    ),
)


def verdict(
    status: str | None, code: int | None = None, text: str = "", *, permanent: bool = False
) -> Verdict | None:
    """What a failure says about its recipient: by its enhanced ``status``, else (no status
    or an undefined ``X.0.0``) by the plain words of ``text``, its basic reply ``code`` and
    whether a bounce detector read it as ``permanent``. None for what is no failure (a 2xx
    or 3xx, or nothing at all)."""
    if status is not None:
        klass, subject, detail = status.split(".")
        if klass == "2":
            return None
        if klass == "4":
            return Verdict.soft
        if subject == "1" or (subject == "2" and detail == "1"):
            return Verdict.hard
        if subject == "7":
            return Verdict.block
        if subject != "0":
            # "Other or undefined" within its subject (5.3.0 "... No such user here"):
            # plain words may say more.
            said = _said(text) if detail == "0" else None
            return said or Verdict.soft
    elif (code is None and not permanent and not text) or (
        code is not None and not 400 <= code < 600
    ):
        return None
    if code is not None and 400 <= code < 500:
        return Verdict.soft
    said = _said(text)
    if said is not None:
        return said
    if code in _HARD_BASIC or permanent:
        return Verdict.hard
    return Verdict.soft


def _said(text: str) -> Verdict | None:
    for found, words in WORDS:
        if words.search(text):
            return found
    return None


def meaning(status: str | None) -> str:
    """RFC 3463's words for a status, for people reading a report: ``5.1.1`` is
    "permanent: bad destination mailbox address"."""
    if status is None:
        return ""
    klass, subject, detail = status.split(".")
    lasting = {"2": "success", "4": "temporary", "5": "permanent"}[klass]
    what = _DETAILS.get(f"{subject}.{detail}") or _SUBJECTS.get(subject, "other")
    return f"{lasting}: {what}"
