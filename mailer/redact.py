"""Free text without whom it is about: addresses and tokens taken out.

Relays' replies, bounce reports and log lines quote addresses ("550 5.1.1 <bob@example.org>:
User unknown") and the tokens mailmag put in a message (its VERP return path, its Message-ID,
the paths of its links). ``redact`` replaces each address with ``<address>`` and each token
with ``<token>``, so such a text can be stored, grouped, logged and shown to staff who may
not see people. The one place for this rule: the opt-in store's logs use it too.
"""

from __future__ import annotations

import re

from mailer.verp import TOKEN_LENGTH

# A local part as atoms, or quoted (the Japanese carrier addresses mailmag accepts, such as
# "taro..yamada."@docomo.ne.jp, are stored and sent quoted).
_LOCAL = r"""(?:"(?:[^"\\\r\n]|\\.){1,64}"|[\w.!#$%&'*+/=?^`{|}~-]+)"""
_MAILBOX = rf"{_LOCAL}@[\w-]+(?:\.[\w-]+)+"
ADDRESS = re.compile(rf"<{_MAILBOX}>|{_MAILBOX}", re.UNICODE)  # with its brackets, if any
# The token in a link's path: /u/<token>, /preferences/<token>, /verify/<token>...
LINK_TOKEN = re.compile(
    r"(/(?:u|preferences|confirm|erase|verify|disclosure|processor/v1/[\w-]+)/)[^/\s?#\"'<>]+"
)
# A delivery token standing alone (in a return path's local part, a Message-ID, a list).
DELIVERY_TOKEN = re.compile(
    rf"(?<![A-Za-z0-9])[a-z2-7]{{{TOKEN_LENGTH}}}(?![A-Za-z0-9])", re.IGNORECASE
)


def redact(text: str) -> str:
    """``text`` with every address and token replaced. It runs once per message sent (on the
    relay's reply), so a pattern is tried only when the character it needs is there."""
    if "@" in text:
        text = ADDRESS.sub("<address>", text)
    if "/" in text:
        text = LINK_TOKEN.sub(r"\1<token>", text)
    return DELIVERY_TOKEN.sub("<token>", text) if len(text) >= TOKEN_LENGTH else text


def storable(text: str, limit: int = 500) -> str:
    """Outside text (a relay's reply, a bounce's detail) as it may be stored: redacted, a NUL
    replaced as an undecodable byte is (PostgreSQL stores no NUL, and one such reply made
    every store of a batch fail), at most ``limit`` characters."""
    return redact(text).replace("\x00", "\ufffd")[:limit]
