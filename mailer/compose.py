"""Turning an issue into one message per recipient, quickly and lawfully.

``PreparedIssue`` is built once per issue: it renders the marketer's templates in the
sandbox, wraps the body in mailmag's layout (the footer the law requires: sender, postal
address, contact for complaints, an unsubscribe link with words saying the reader may
refuse further mail), inlines the CSS, and cuts the result into segments around the
per-recipient values. ``message`` then assembles a complete RFC 5322 message as bytes:
precomputed headers, the recipient's own headers, and both parts as quoted-printable UTF-8.
Every message it assembles has CRLF line ends only and no line that begins with a dot, so it
is sent as it is (``Envelope.transparent``): nothing scans or copies it again.
Python's ``EmailMessage`` is not used on this path: at ~5 ms per 20 KB message it would be
most of a send's cost.

Every header value is checked for line breaks and control characters before it is written
(``safe_header``): the Python this runs on predates the fix for CVE-2024-6923.
"""

from __future__ import annotations

import binascii
import html as html_lib
import random
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import css_inline
import html2text
from jinja2 import Environment
from markupsafe import Markup, escape

from mailer.audience import Recipient
from mailer.encoded_words import encoded_words, fold
from mailer.errors import HeaderInjection, NotCompliant
from mailer.signing import DKIMSigner
from mailer.templating import HEADER_NAMES, SLOTTED_CONTEXT, IssueTemplate, SlotText, slot

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
# Line breaks and other controls, and lone surrogates (which no charset can encode).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CRLF = re.compile(r"\r\n|\r")


def is_unicode_text(value: str) -> bool:
    """Whether ``value`` can be written as UTF-8: a Python string may hold a lone surrogate
    (JSON's ``"\\ud800"`` decodes to one), which no mail, page or database can carry."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_header(value: str, what: str) -> str:
    """``value`` unchanged, or ``HeaderInjection`` if it could break out of its header."""
    if _UNSAFE.search(value):
        raise HeaderInjection(f"{what} contains a line break or control character")
    return value


def _plain(value: str) -> bool:
    # Text that looks like an encoded word is encoded itself, so a reader's decoder shows it
    # as typed instead of decoding a line break someone smuggled into it.
    return value.isascii() and len(value) < 900 and "=?" not in value


def encode_header(value: str, what: str) -> str:
    """A header value, RFC 2047-encoded when it is not plain ASCII, folded with CRLF: every
    encoded word within 75 characters (``mailer/encoded_words.py``)."""
    safe_header(value, what)
    return value if _plain(value) else fold(encoded_words(value))


_DATE = [-1, ""]  # the second of the last Date header written, and that header


def date_header() -> str:
    """Now, as RFC 5322 writes a date in UTC: ``+0000`` (``GMT`` is the obsolete syntax of
    4.3). Made once a second: formatting a date for every message showed in profiles."""
    second = int(time.time())
    if _DATE[0] != second:
        text = format_datetime(datetime.fromtimestamp(second, UTC))
        _DATE[:] = [second, text]
        return text
    return str(_DATE[1])


_QP_WIDTH = 75  # characters of a quoted-printable line, before a soft line break's "="


def _qp(text: str) -> bytes:
    """Quoted-printable UTF-8 with CRLF line ends and no line that begins with a dot.

    A dot at the start of a line is written ``=2E`` (RFC 2045 lets any octet be encoded),
    so the message never needs SMTP's dot-stuffing (RFC 5321 4.5.2) and goes into DATA as it
    is: scanning and copying 20 KB per message for it was a third of a send's CPU."""
    data = _CRLF.sub("\n", text).encode("utf-8", "replace")  # a lone surrogate becomes "?"
    encoded = binascii.b2a_qp(data, istext=True)
    if encoded.startswith(b".") or b"\n." in encoded:
        encoded = b"\n".join(_undotted(line) for line in encoded.split(b"\n"))
    return encoded.replace(b"\n", b"\r\n")


def _undotted(line: bytes) -> bytes:
    """One line of ``b2a_qp``'s output with its leading dot written ``=2E``. A line that grows
    too long is broken with a soft line break, never inside an ``=XX``; the rest may begin
    with a dot in turn."""
    lines = []
    while line.startswith(b"."):
        soft = line.endswith(b"=")  # a literal "=" is always written "=3D"
        content = b"=2E" + line[1 : len(line) - soft]
        if len(content) <= _QP_WIDTH:
            line = content + b"=" * soft
            break
        cut = 0
        while cut + (step := 3 if content[cut : cut + 1] == b"=" else 1) <= _QP_WIDTH:
            cut += step
        lines.append(content[:cut] + b"=")
        line = content[cut:] + b"=" * soft
    lines.append(line)
    return b"\n".join(lines)


_ATOMS = re.compile(r'[^()<>@,;:\\".\[\]\s]+(?: [^()<>@,;:\\".\[\]\s]+)*')  # RFC 5322 3.2.3


def phrase(name: str, what: str, trailer: str) -> str:
    """``name trailer`` for a header (a display name and ``<address>``, a list's title and
    ``<id>``): the name as an RFC 5322 phrase, quoted unless it is words of atoms with
    single spaces between them (3.2.3: specials, or spaces a reader would fold),
    RFC 2047-encoded if it is not plain ASCII, or left out if empty."""
    safe_header(name, what)
    name = name.strip()  # readers drop the spaces at its ends anyway
    if not name:
        return trailer
    if not _plain(name):
        return fold(encoded_words(name), trailer)
    if _ATOMS.fullmatch(name):
        return f"{name} {trailer}"
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')  # specials, or spaces to keep
    return f'"{quoted}" {trailer}'


def mailbox(name: str, address: str) -> str:
    """``Name <address>`` for a header."""
    return phrase(name, "display name", f"<{safe_header(address, 'address')}>")


def alternative_message(headers: list[tuple[str, str]], text: str, html: str) -> bytes:
    """A multipart/alternative message (text and HTML, quoted-printable) as bytes with CRLF
    line ends, assembled directly: ``email.message`` costs milliseconds a message."""
    boundary = f"=_mm_{secrets.token_hex(12)}"
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return b"".join(
        (
            head.encode("utf-8"),
            b"MIME-Version: 1.0\r\n",
            f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode(),
            f"--{boundary}\r\n".encode(),
            b'Content-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _qp(text),
            f"\r\n--{boundary}\r\n".encode(),
            b'Content-Type: text/html; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _qp(html),
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )


class _QPSlots:
    """A ``SlotText`` whose fixed segments are quoted-printable encoded once. Per recipient
    only the values are encoded, each between soft line breaks (``=`` CRLF), which decode to
    nothing: the decoded text is exactly ``SlotText.fill``'s, at a fraction of the cost of
    encoding 20 KB per message."""

    def __init__(self, slots: SlotText) -> None:
        self.keys = slots.keys
        self.escapes = slots.escapes
        self.segments = [_qp(segment) for segment in slots.segments]

    def fill(self, values: Mapping[str, str]) -> bytes:
        segments = self.segments
        out = [segments[0]]
        for index, key in enumerate(self.keys, start=1):
            value = values.get(key, "")
            if value:
                out += (b"=\r\n", _qp(str(escape(value)) if self.escapes else value), b"=\r\n")
            else:  # still break the line: each segment's lines are only short on their own
                out.append(b"=\r\n")
            out.append(segments[index])
        return b"".join(out)


# Message-IDs need uniqueness, not secrecy: the delivery token makes them unique, and these
# bits tell a retry from the first attempt, without a system call for each message.
_MESSAGE_ID_BITS = random.Random(secrets.randbits(64))  # noqa: S311

SAMPLE_TOKEN = "sample"  # noqa: S105 (in links of previews and checks; names no delivery)


@dataclass(frozen=True, slots=True)
class SenderProfile:
    """Who sends, as the footer and headers show it; built by the composition root."""

    name: str
    address: str
    operator: str
    postal_address: str
    contact: str
    bounce_domain: str  # VERP return paths and the unsubscribe mailto live here
    list_id_domain: str
    link_base: str  # the public site: <link_base>/u/<token> and <link_base>/preferences/<token>


@dataclass(frozen=True, slots=True)
class IssueContent:
    issue_id: int
    subject: str
    preheader: str
    html_body: str
    text_body: str | None
    locale: str
    magazine_slug: str
    magazine_title: str


class PreparedIssue:
    def __init__(
        self,
        content: IssueContent,
        sender: SenderProfile,
        layout: Environment,
        gettext: Callable[[str], str],
        signer: DKIMSigner | None = None,
    ) -> None:
        for what, text in (
            ("subject", content.subject),
            ("preheader", content.preheader),
            ("HTML body", content.html_body),
            ("text body", content.text_body or ""),
            ("magazine title", content.magazine_title),
        ):
            if not is_unicode_text(text):
                raise NotCompliant(f"the {what} is not Unicode text (it holds a lone surrogate)")
        self.content = content
        self.sender = sender
        self.signer = signer
        common = {"magazine": {"title": content.magazine_title}}
        # The subject and the preheader are rendered for each recipient like the bodies,
        # and the bodies' issue.subject and issue.preheader are the recipient's own.
        self.subject = IssueTemplate(
            content.subject, html=False, common=common, what="subject", names=HEADER_NAMES
        )
        self.preheader = IssueTemplate(
            content.preheader, html=False, common=common, what="preheader", names=HEADER_NAMES
        )
        self.html = IssueTemplate(content.html_body, html=True, common=common, what="HTML body")
        self.text = (
            IssueTemplate(content.text_body, html=False, common=common, what="text body")
            if content.text_body
            else None
        )
        parts = [self.subject, self.preheader, self.html] + ([self.text] if self.text else [])
        self.fields = frozenset().union(*(p.analysis.fields for p in parts))
        self._layout_html = layout.get_template("mail/issue.html")
        self._layout_text = layout.get_template("mail/issue.txt")
        self._gettext = gettext
        # The layout around the body, rendered once with slots for everything per recipient.
        frame = self._frame(body_html=Markup(slot("body")), body_text=slot("body"))  # noqa: S704
        self._html_frame = SlotText(frame[0], escape_values=False)
        self._text_frame = SlotText(frame[1], escape_values=False)
        self._subject_slots = self._header_slots(self.subject)
        self._preheader_slots = self._header_slots(self.preheader)
        self._html_slots = (
            SlotText(
                self._inline(self._html_frame.insert({"body": self.html.slotted})),
                escape_values=True,
            )
            if self.html.slotted is not None
            else None
        )
        self._text_slots = self._prepare_text()
        self._html_qp = _QPSlots(self._html_slots) if self._html_slots is not None else None
        self._text_qp = _QPSlots(self._text_slots) if self._text_slots is not None else None
        self._common_headers = self._headers()
        self._boundary = f"=_mm_{secrets.token_hex(12)}"
        self.check_compliance()

    # --- preparation -------------------------------------------------------------------------

    def _frame(self, *, body_html: Markup, body_text: str) -> tuple[str, str]:
        values: dict[str, Any] = {
            "_": self._gettext,
            "lang": self.content.locale,
            "subject": slot("issue.subject"),
            "preheader": slot("issue.preheader") if self.content.preheader.strip() else "",
            "magazine_title": self.content.magazine_title,
            "sender": self.sender,
            **SLOTTED_CONTEXT,
        }
        html = self._layout_html.render(values, body=body_html)
        text = self._layout_text.render(values, body=body_text)
        return html, text

    @staticmethod
    def _header_slots(part: IssueTemplate) -> SlotText | str | None:
        """The subject's or preheader's slots; the text itself if it has none (the same
        for every recipient); None if it must be rendered for each."""
        if part.slotted is None:
            return None
        slots = SlotText(part.slotted, escape_values=False)
        return slots.segments[0].strip() if not slots.keys else slots

    @staticmethod
    def _inline(html: str) -> str:
        return str(css_inline.inline(html))

    @staticmethod
    def _to_text(html: str) -> str:
        converter = html2text.HTML2Text()
        converter.body_width = 0
        converter.ignore_images = True
        return str(converter.handle(html)).strip()

    def _prepare_text(self) -> SlotText | None:
        if self.text is not None:
            body = self.text.slotted
        elif self.html.slotted is not None:
            body = self._to_text(self.html.slotted)
        else:
            return None
        return (
            None
            if body is None
            else SlotText(self._text_frame.insert({"body": body}), escape_values=False)
        )

    def _headers(self) -> bytes:
        sender = self.sender
        slug = safe_header(self.content.magazine_slug, "magazine slug")
        list_id = f"<{slug}.{safe_header(sender.list_id_domain, 'list-id domain')}>"
        lines = [
            f"From: {mailbox(sender.name, safe_header(sender.address, 'sender address'))}",
            "MIME-Version: 1.0",
            f"List-Id: {phrase(self.content.magazine_title, 'magazine title', list_id)}",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "Precedence: bulk",
            f"Feedback-ID: {self.content.issue_id}:{slug}:newsletter:mailmag",
        ]
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    # --- per recipient -----------------------------------------------------------------------

    def links(self, token: str) -> tuple[str, str]:
        """The unsubscribe and preferences links of one message. They carry only its opaque
        delivery token: nothing in a message names the person beyond their address."""
        base = self.sender.link_base.rstrip("/")
        return f"{base}/u/{token}", f"{base}/preferences/{token}"

    def values(self, recipient: Recipient, token: str) -> dict[str, str]:
        values = {f"subscriber.{k}": v for k, v in recipient.fields.items()}
        values["unsubscribe_url"], values["preferences_url"] = self.links(token)
        return values

    @staticmethod
    def _line(part: IssueTemplate, slots: SlotText | str | None, values: Mapping[str, str]) -> str:
        if isinstance(slots, str):
            return slots
        return (slots.fill(values) if slots is not None else part.render(values)).strip()

    def recipient_values(self, recipient: Recipient, token: str) -> dict[str, str]:
        """Everything per recipient that the templates and the layout may print: the
        fields and links, then the subject and preheader rendered for this recipient."""
        values = self.values(recipient, token)
        values["issue.subject"] = self._line(self.subject, self._subject_slots, values)
        values["issue.preheader"] = self._line(self.preheader, self._preheader_slots, values)
        return values

    def render(self, recipient: Recipient, token: str = SAMPLE_TOKEN) -> tuple[str, str, str]:
        """Subject, HTML and text of one recipient's message."""
        values = self.recipient_values(recipient, token)
        if self._html_slots is not None:
            html = self._html_slots.fill(values)
            body_html = None
        else:
            body_html = self.html.render(values)
            frame_values = {key: str(escape(value)) for key, value in values.items()}
            html = self._inline(self._html_frame.fill(frame_values | {"body": body_html}))
        if self._text_slots is not None:
            text = self._text_slots.fill(values)
        else:
            if self.text is not None:
                body = self.text.render(values)
            else:  # the HTML body once, not a second time for its text version
                body = self._to_text(
                    body_html if body_html is not None else self.html.render(values)
                )
            text = self._text_frame.fill(values | {"body": body})
        return values["issue.subject"], html, text

    def _encoded(self, recipient: Recipient, token: str) -> tuple[str, bytes, bytes]:
        """Subject, and the HTML and text parts quoted-printable encoded."""
        if self._html_qp is None or self._text_qp is None:
            subject, html, text = self.render(recipient, token)
            return subject, _qp(html), _qp(text)
        values = self.recipient_values(recipient, token)
        return values["issue.subject"], self._html_qp.fill(values), self._text_qp.fill(values)

    def message(self, recipient: Recipient, token: str, message_id: str | None = None) -> bytes:
        """The complete message for one recipient, ready for SMTP DATA."""
        subject, html, text = self._encoded(recipient, token)
        domain = self.sender.bounce_domain
        address = safe_header(recipient.address, "recipient address")
        unsubscribe = safe_header(self.links(token)[0], "unsubscribe URL")
        message_id = message_id or f"<{token}.{_MESSAGE_ID_BITS.getrandbits(32):08x}@{domain}>"
        head = (
            f"To: {address}\r\n"
            f"Subject: {encode_header(subject, 'subject')}\r\n"
            f"Date: {date_header()}\r\n"
            f"Message-ID: {message_id}\r\n"
            f"List-Unsubscribe: <{unsubscribe}>,\r\n <mailto:unsubscribe+{token}@{domain}>\r\n"
            f'Content-Type: multipart/alternative; boundary="{self._boundary}"\r\n'
        ).encode()
        boundary = self._boundary.encode("ascii")
        message = b"".join(
            (
                self._common_headers,
                head,
                b"\r\n--",
                boundary,
                b'\r\nContent-Type: text/plain; charset="utf-8"\r\n'
                b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
                text,
                b"\r\n--",
                boundary,
                b'\r\nContent-Type: text/html; charset="utf-8"\r\n'
                b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
                html,
                b"\r\n--",
                boundary,
                b"--\r\n",
            )
        )
        return self.signer.sign(message) if self.signer else message

    def return_path(self, token: str) -> str:
        return f"bounce+{token}@{self.sender.bounce_domain}"

    # --- the law -----------------------------------------------------------------------------

    def check_compliance(self) -> None:
        """Refuse an issue whose messages would lack the footer the law requires."""
        sample = Recipient(
            subscriber_id=0,
            address="sample@example.invalid",
            fields=dict.fromkeys(self.fields, "Sample"),
        )
        token = SAMPLE_TOKEN
        subject, html, text = self.render(sample, token)
        if not subject:
            raise NotCompliant("the subject is empty")
        required = {
            "the sender's name": self.sender.operator,
            "the postal address": self.sender.postal_address,
            "a contact for enquiries and complaints": self.sender.contact,
            "the unsubscribe link": self.links(token)[0],
        }
        for part_name, part in (("HTML part", html), ("text part", text)):
            for what, needle in required.items():
                if not needle or needle not in html_lib.unescape(part):
                    raise NotCompliant(f"the {part_name} lacks {what}")
        self.message(sample, token)  # every header value checked too
