"""Reading what a person sees: form fields in pages, links in mails."""

from __future__ import annotations

import html
import re
from email.message import EmailMessage

_INPUT = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


def hidden_fields(page: str) -> dict[str, str]:
    return {name: html.unescape(value) for name, value in _INPUT.findall(page)}


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert isinstance(part, EmailMessage)
    return str(part.get_content())


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert isinstance(part, EmailMessage)
    return str(part.get_content())


def link_in(message: EmailMessage, path: str) -> str:
    """The one link in the mail's text part whose path starts with ``path``."""
    found = sorted(set(re.findall(rf"https?://[^\s/]+{re.escape(path)}\S+", text_of(message))))
    assert len(found) == 1, f"expected one {path} link, found {found}"
    return str(found[0])


def local(url: str) -> str:
    """The path and query of an absolute URL, for the test client."""
    return re.sub(r"^https?://[^/]+", "", url)


def page_link(page: str, path: str) -> str:
    """The path of the one link in an HTML page that goes to ``path``."""
    found = sorted(set(re.findall(rf'href="(?:https?://[^/"]+)?({re.escape(path)}[^"]*)"', page)))
    assert len(found) == 1, f"expected one {path} link, found {found}"
    return html.unescape(found[0])
