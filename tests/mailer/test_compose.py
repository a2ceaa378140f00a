"""Every message carries the footer and headers the law asks for, parses cleanly, and no
user-controlled value can add a header."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import Environment, FileSystemLoader

from mailer.audience import Recipient
from mailer.compose import IssueContent, PreparedIssue, SenderProfile, encode_header, mailbox
from mailer.errors import HeaderInjection, NotCompliant, TemplateRefused
from mailer.smtp import make_transparent
from subscriptions.paths import TEMPLATES_DIR

LAYOUT = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True)
SENDER = SenderProfile(
    name="Sakura News",
    address="news@example.co.jp",
    operator="Sakura Example Media K.K.",
    postal_address="1-2-3 Otemachi, Tokyo",
    contact="privacy@example.co.jp",
    bounce_domain="bounces.example.co.jp",
    list_id_domain="lists.example.co.jp",
    link_base="https://news.example.co.jp",
)
RECIPIENT = Recipient(
    subscriber_id=7,
    address="reader@example.org",
    fields={"name": "山田 <花子>"},
)


def content(**changes: object) -> IssueContent:
    values: dict[str, object] = {
        "issue_id": 42,
        "subject": "{{ subscriber.name }}さん、今週のニュース",
        "preheader": "Inside: spring events",
        "html_body": "<style>h1{color:#c00}</style>"
        "<h1>Hello {{ subscriber.name }}</h1><p>News.</p>",
        "text_body": None,
        "locale": "ja",
        "magazine_slug": "weekly",
        "magazine_title": "さくらウィークリー",
    }
    values.update(changes)
    return IssueContent(**values)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_a_message_has_every_required_header_and_both_parts() -> None:
    prepared = PreparedIssue(content(), SENDER, LAYOUT, lambda s: s)
    raw = prepared.message(RECIPIENT, "opaquetoken")
    message = parse(raw)
    assert message.defects == []
    assert message["To"] == "reader@example.org"
    assert message["Subject"] == "山田 <花子>さん、今週のニュース"
    assert message["List-Unsubscribe"] == (
        "<https://news.example.co.jp/u/opaquetoken>, "
        "<mailto:unsubscribe+opaquetoken@bounces.example.co.jp>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Id"] == "さくらウィークリー <weekly.lists.example.co.jp>"
    assert message["Precedence"] == "bulk"
    assert message["Feedback-ID"] == "42:weekly:newsletter:mailmag"
    assert message["Message-ID"].endswith("@bounces.example.co.jp>")
    assert message["Date"]
    assert str(message["From"]) == "Sakura News <news@example.co.jp>"
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert isinstance(html, EmailMessage)
    assert isinstance(text, EmailMessage)
    html_content, text_content = html.get_content(), text.get_content()
    for part in (html_content, text_content):
        assert "Sakura Example Media K.K." in part
        assert "1-2-3 Otemachi, Tokyo" in part
        assert "privacy@example.co.jp" in part
        assert "https://news.example.co.jp/u/opaquetoken" in part
        assert "refuse further mail" in part
    assert "Hello 山田 &lt;花子&gt;" in html_content
    assert 'style="color: #c00' in html_content or 'style="color:#c00' in html_content
    assert "Hello 山田 <花子>" in text_content
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert prepared.return_path("opaquetoken") == "bounce+opaquetoken@bounces.example.co.jp"


def test_no_identifier_of_the_person_leaks_into_headers() -> None:
    raw = PreparedIssue(content(subject="News"), SENDER, LAYOUT, lambda s: s).message(
        RECIPIENT, "opaquetoken"
    )
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert "7" not in head.replace("2026", "").split("Date:")[0]  # no subscriber id
    assert head.count("reader@example.org") == 1  # only in To


def test_a_full_render_path_gives_the_same_footer() -> None:
    changes = {
        "html_body": "{% if subscriber.name %}<p>Dear {{ subscriber.name|upper }}</p>{% endif %}"
    }
    prepared = PreparedIssue(content(**changes), SENDER, LAYOUT, lambda s: s)
    assert not prepared.html.analysis.fast
    message = parse(prepared.message(RECIPIENT, "t"))
    html = message.get_body(("html",))
    assert isinstance(html, EmailMessage)
    assert "Dear 山田 &lt;花子&gt;" in html.get_content()
    assert "https://news.example.co.jp/u/t" in html.get_content()


def test_an_issue_without_a_real_sender_address_is_refused() -> None:
    sender = replace(SENDER, postal_address="")
    with pytest.raises(NotCompliant, match="postal address"):
        PreparedIssue(content(), sender, LAYOUT, lambda s: s)


def test_a_hostile_template_is_refused_at_preparation() -> None:
    with pytest.raises(TemplateRefused):
        PreparedIssue(content(html_body="{{ ''.__class__ }}"), SENDER, LAYOUT, lambda s: s)


def _title_and_preheader(html: str) -> tuple[str, str]:
    title = re.search(r"<title>(.*?)</title>", html)
    hidden = re.search(r'<div style="display:none[^"]*">(.*?)</div>', html)
    assert title is not None
    return title.group(1), hidden.group(1) if hidden else ""


@pytest.mark.parametrize(
    "body",
    [
        "<p>{{ issue.subject }} / {{ issue.preheader }}</p>",  # printed: filled per recipient
        "{% if subscriber.name %}<p>{{ issue.subject }} / {{ issue.preheader }}</p>{% endif %}",
    ],
)
def test_the_title_and_preheader_are_rendered_for_each_recipient(body: str) -> None:
    """The HTML <title> held the subject's raw template and the preheader was sent raw; both
    are rendered like the subject, escaped, and so are issue.subject and issue.preheader."""
    prepared = PreparedIssue(
        content(
            subject="Hello {{ subscriber.name }} & co",
            preheader="For {{ subscriber.name }} at {{ subscriber.company }}",
            html_body=body,
        ),
        SENDER,
        LAYOUT,
        lambda s: s,
    )
    reader = Recipient(7, "reader@example.org", {"name": "山田 <花子>", "company": "A&B"})
    assert prepared.fields == {"name", "company"}  # the preheader's fields reach the audience
    message = parse(prepared.message(reader, "tok"))
    assert message["Subject"] == "Hello 山田 <花子> & co"
    part = message.get_body(("html",))
    assert isinstance(part, EmailMessage)
    html = part.get_content()
    assert _title_and_preheader(html) == (
        "Hello 山田 &lt;花子&gt; &amp; co",
        "For 山田 &lt;花子&gt; at A&amp;B",
    )
    assert "<p>Hello 山田 &lt;花子&gt; &amp; co / For 山田 &lt;花子&gt; at A&amp;B</p>" in html
    assert "{{" not in html
    text = message.get_body(("plain",))
    assert isinstance(text, EmailMessage)
    assert "{{" not in text.get_content()


def test_a_constant_subject_and_no_preheader() -> None:
    prepared = PreparedIssue(
        content(subject="News & views", preheader=""), SENDER, LAYOUT, lambda s: s
    )
    _, html, _ = prepared.render(RECIPIENT, "tok")
    assert _title_and_preheader(html) == ("News &amp; views", "")


@pytest.mark.parametrize(
    ("preheader", "reason"),
    [
        ("{{ subscriber.password }}", "subscriber has no field 'password'"),
        ("{{ issue.subject }}", "unknown name(s) issue"),
        ("{{ unsubscribe_url }}", "unknown name(s) unsubscribe_url"),
        ("{{ 'x'.ljust(10**8) }}", "width: value too large"),
    ],
)
def test_the_preheader_follows_the_subjects_rules(preheader: str, reason: str) -> None:
    with pytest.raises(TemplateRefused, match=re.escape(f"preheader: {reason}")):
        PreparedIssue(content(preheader=preheader), SENDER, LAYOUT, lambda s: s)
    with pytest.raises(TemplateRefused, match=re.escape(f"subject: {reason}")):
        PreparedIssue(content(subject=preheader), SENDER, LAYOUT, lambda s: s)


LINE_BREAKERS = st.sampled_from(["\r", "\n", "\r\n", "\x85", "\u2028", "\u2029", "\x00", "\x0b"])


@settings(max_examples=300, deadline=None)
@given(prefix=st.text(max_size=20), breaker=LINE_BREAKERS, suffix=st.text(max_size=20))
def test_no_line_break_reaches_a_header(prefix: str, breaker: str, suffix: str) -> None:
    injected = f"{prefix}{breaker}Bcc: victim@example.com{suffix}"
    for changes in ({"subject": injected}, {"magazine_title": injected}):
        try:
            raw = PreparedIssue(content(**changes), SENDER, LAYOUT, lambda s: s).message(
                RECIPIENT, "t"
            )
        except (HeaderInjection, TemplateRefused, NotCompliant):
            continue
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert b"\nBcc:" not in head
        assert parse(raw)["Bcc"] is None


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=60))
def test_any_subscriber_name_stays_inside_its_header(name: str) -> None:
    recipient = Recipient(7, "reader@example.org", {"name": name})
    prepared = PreparedIssue(content(), SENDER, LAYOUT, lambda s: s)
    try:
        raw = prepared.message(recipient, "t")
    except HeaderInjection:
        return
    message = parse(raw)
    assert set(message.keys()) == {
        "From",
        "MIME-Version",
        "List-Id",
        "List-Unsubscribe-Post",
        "Precedence",
        "Feedback-ID",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "List-Unsubscribe",
        "Content-Type",
    }


_ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
JAPANESE = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x3041, max_codepoint=0x30FF),  # kana
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),  # kanji
        st.characters(min_codepoint=0xFF61, max_codepoint=0xFF9F),  # half-width kana
        st.characters(min_codepoint=0x1F300, max_codepoint=0x1F64F),  # emoji: 4 bytes
        st.sampled_from('、。「」ー　 ABCabc123!?-&<>,.:;"()@'),
    ),
    min_size=1,
    max_size=120,
).filter(lambda text: text.strip() != "")


def _dkim_keys() -> tuple[bytes, bytes]:
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


DKIM_PEM, DKIM_RECORD = _dkim_keys()


def _unfolded(head: bytes, name: bytes) -> str:
    value = re.search(rb"^" + name + rb": (.*?)\r\n(?! )", head, re.M | re.S)
    assert value is not None
    return value.group(1).replace(b"\r\n ", b" ").decode("ascii")


def _dns(name: bytes, timeout: int = 5) -> bytes:
    assert name == b"mm._domainkey.example.co.jp."
    return DKIM_RECORD


@settings(max_examples=40, deadline=None)
@given(subject=JAPANESE, sender_name=JAPANESE, title=JAPANESE)
def test_japanese_headers_are_valid_encoded_words(
    subject: str, sender_name: str, title: str
) -> None:
    """RFC 2047: no encoded word longer than 75 characters, none splitting a character
    (each decodes on its own), every header line within 78; Python's parser and dkimpy
    read the message as written."""
    import dkim

    from mailer.signing import DKIMSigner

    signer = DKIMSigner(domain="example.co.jp", selector="mm", private_key=DKIM_PEM)
    prepared = PreparedIssue(
        content(subject=f"{{{{ subscriber.name }}}}{subject}", magazine_title=title),
        replace(SENDER, name=sender_name),
        LAYOUT,
        lambda s: s,
        signer,
    )
    raw = prepared.message(RECIPIENT, "tok")
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):  # DKIM-Signature's too
        assert len(line) <= 78, line
    for word in _ENCODED_WORD.findall(head):
        assert len(word) <= 75, word
        assert str(make_header(decode_header(word.decode("ascii"))))  # whole characters
    message = parse(raw)
    assert message["Subject"] == f"山田 <花子>{subject}".strip()
    assert message["Subject"].defects == ()
    name = sender_name.strip()
    shown = message["From"].addresses[0].display_name
    # Python's address parser folds a phrase's spaces, and puts one between two encoded
    # words (RFC 2047 6.2 says to ignore it): RFC 2047's own decoding gives the name exactly
    assert "".join(shown.split()) == "".join(name.split())
    if not name.isascii():
        phrase = _unfolded(head, b"From").rsplit(" <", 1)[0]
        assert str(make_header(decode_header(phrase))) == name
    assert message["From"].addresses[0].addr_spec == "news@example.co.jp"
    shown = message["List-Id"].removesuffix(" <weekly.lists.example.co.jp>")
    title = title.strip()
    assert shown in (title, '"' + title.replace("\\", "\\\\").replace('"', '\\"') + '"')
    assert dkim.verify(raw, dnsfunc=_dns)


@settings(max_examples=500, deadline=None)
@given(name=JAPANESE | st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"))))
def test_system_mail_headers_are_valid_encoded_words(name: str) -> None:
    for value in (encode_header(name, "subject"), mailbox(name, "news@example.co.jp")):
        assert "\n" not in value.replace("\r\n ", "")
        for word in _ENCODED_WORD.findall(value.encode("ascii", "replace")):
            assert len(word) <= 75, word
        first, *rest = value.split("\r\n")
        assert len("Subject: " + first) <= 78
        assert all(len(line) <= 78 for line in rest)


def test_the_date_is_written_plus_0000() -> None:
    """RFC 5322 4.3: "GMT" is obsolete zone syntax."""
    raw = PreparedIssue(content(), SENDER, LAYOUT, lambda s: s).message(RECIPIENT, "t")
    written = _unfolded(raw.split(b"\r\n\r\n", 1)[0], b"Date")
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000", written), written
    message = parse(raw)
    assert message["Date"].datetime.utcoffset() == timedelta(0)
    assert abs(message["Date"].datetime - datetime.now(UTC)) < timedelta(seconds=5)


def test_names_with_specials_are_quoted() -> None:
    """RFC 5322 3.2.3: a comma or colon in the sender's name or the magazine's title is
    quoted, or the From header names two mailboxes."""
    prepared = PreparedIssue(
        content(magazine_title="Weekly: News, etc."),
        replace(SENDER, name="Sakura News, Inc."),
        LAYOUT,
        lambda s: s,
    )
    message = parse(prepared.message(RECIPIENT, "t"))
    assert len(message["From"].addresses) == 1
    assert message["From"].addresses[0].display_name == "Sakura News, Inc."
    assert message["List-Id"] == '"Weekly: News, etc." <weekly.lists.example.co.jp>'


def test_dkim_signature_verifies_and_covers_the_unsubscribe_headers() -> None:
    import base64

    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from mailer.signing import DKIMSigner

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    signer = DKIMSigner(domain="example.co.jp", selector="mm", private_key=pem)
    dotted = content(html_body="<p>Hello {{ subscriber.name }}</p>" + "<p>.x</p>" * 5)
    raw = PreparedIssue(dotted, SENDER, LAYOUT, lambda s: s, signer).message(RECIPIENT, "t")
    assert raw.startswith(b"DKIM-Signature:")
    assert make_transparent(raw) == raw  # signed, it still goes into DATA as it is

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"mm._domainkey.example.co.jp."
        return record

    assert dkim.verify(raw, dnsfunc=dns)
    signed = "".join(parse(raw)["DKIM-Signature"].split())  # folded at 78 characters
    assert "list-unsubscribe:list-unsubscribe-post" in signed.lower()
    tampered = raw.replace(
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: nothing"
    )
    assert not dkim.verify(tampered, dnsfunc=dns)


def _lines(text: str) -> str:
    return re.sub(r"\r\n?", "\n", text)


def assert_parts_decode_to_the_rendered_text(
    prepared: PreparedIssue, recipient: Recipient, raw: bytes
) -> None:
    _, html, text = prepared.render(recipient, "tok")
    message = parse(raw)
    for subtype, expected in (("html", html), ("plain", text)):
        part = message.get_body((subtype,))
        assert isinstance(part, EmailMessage)
        # a line end is CRLF on the wire: a lone CR in a value arrives as a line break
        assert _lines(part.get_content()) == _lines(expected)


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=120))
def test_the_pre_encoded_parts_decode_to_exactly_the_rendered_text(name: str) -> None:
    changes = {"html_body": "<p>Dear {{ subscriber.name }},</p>" + "<p>. dot line</p>" * 40}
    prepared = PreparedIssue(content(**changes), SENDER, LAYOUT, lambda s: s)
    recipient = Recipient(7, "reader@example.org", {"name": name})
    try:
        raw = prepared.message(recipient, "tok")
    except HeaderInjection:
        return
    assert_parts_decode_to_the_rendered_text(prepared, recipient, raw)
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert all(len(line) <= 76 for line in body.split(b"\r\n")), "RFC 2045: 76 at most"


@settings(max_examples=200, deadline=None)
@given(name=st.text(alphabet=". \t\n=aé", max_size=300))
def test_a_message_goes_into_smtp_data_as_it_is(name: str) -> None:
    """CRLF line ends only and no line that begins with a dot, whatever the values, so the
    transport sends it without dot-stuffing (``Envelope.transparent``); a dot that would
    begin a line is written =2E and decodes back to a dot."""
    css = "<style>" + ".a{color:red}" * 30 + "</style>"
    body = css + "<p>Dear {{ subscriber.name }}</p>" + "<p>" + "." * 200 + "</p>" + "<p>.x</p>" * 20
    prepared = PreparedIssue(content(html_body=body), SENDER, LAYOUT, lambda s: s)
    recipient = Recipient(7, "reader@example.org", {"name": name})
    try:
        raw = prepared.message(recipient, "tok")
    except HeaderInjection:
        return
    assert make_transparent(raw) == raw
    assert_parts_decode_to_the_rendered_text(prepared, recipient, raw)
    assert "." * 200 in prepared.render(recipient, "tok")[1]
