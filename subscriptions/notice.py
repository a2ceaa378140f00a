"""The collection notice: generated from the registries, stored immutably, hashed.

``render_notice`` turns the registry into the exact text of the "matters to be indicated
when we collect personal information" in one locale. ``NoticeBook`` keeps the current
notice per locale for the process and records each as a ``NoticeVersion`` the first time
it is used; a consent event cites the SHA-256 of the text the person was shown. A registry
change that changes the text yields a new hash and so a new version; an old version is
never edited.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from subscriptions.models import NoticeVersion
from subscriptions.paths import TEMPLATES_DIR
from subscriptions.registry import LOCALES, Registry

_text_env = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    undefined=StrictUndefined,
    autoescape=False,  # noqa: S701 (plain text; the pages that show it escape it)
    keep_trailing_newline=True,
)


@dataclass(frozen=True, slots=True)
class Notice:
    locale: str
    body: str
    content_hash: str


def render_notice(registry: Registry, locale: str) -> Notice:
    if locale not in LOCALES:
        raise ValueError(f"no notice template for locale {locale!r}")
    body = _text_env.get_template(f"notice/{locale}.txt").render(
        r=registry, country_names=registry.country_names, field_labels=registry.field_labels
    )
    body = body.strip() + "\n"
    return Notice(locale, body, hashlib.sha256(body.encode("utf-8")).hexdigest())


def record_notice(session: Session, notice: Notice) -> NoticeVersion:
    """The stored version of ``notice``, created on first use (safe under concurrency)."""
    found = session.exec(
        select(NoticeVersion).where(NoticeVersion.content_hash == notice.content_hash)
    ).first()
    if found is not None:
        return found
    version = NoticeVersion(
        content_hash=notice.content_hash, locale=notice.locale, body=notice.body
    )
    try:
        with session.begin_nested():
            session.add(version)
    except IntegrityError:  # another process stored the same text a moment ago
        return session.exec(
            select(NoticeVersion).where(NoticeVersion.content_hash == notice.content_hash)
        ).one()
    return version


class NoticeBook:
    """The current notice of each locale, rendered once per process."""

    def __init__(self, registry: Registry) -> None:
        self.notices = {locale: render_notice(registry, locale) for locale in LOCALES}

    def current(self, locale: str) -> Notice:
        return self.notices.get(locale, self.notices["en"])

    def is_current(self, content_hash: str) -> bool:
        return any(n.content_hash == content_hash for n in self.notices.values())
