"""The collection notice: generated from the registries, stored immutably, hashed.

``render_notice`` turns the registry into the exact text of the "matters to be indicated
when we collect personal information" in one locale. ``NoticeBook`` keeps the current
notice per locale for the process and records each as a ``NoticeVersion`` the first time
it is used; a consent event cites the SHA-256 of the text the person was shown. A registry
change that changes the text yields a new hash and so a new version; an old version is
never edited.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

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


@dataclass(frozen=True, slots=True)
class Comparison:
    """Two notice versions to show side by side (``pieces``: runs of text the same, removed
    from ``old`` or added in ``new``), or, when there is no pair, ``reason``. ``versions``
    lists every version (id, locale) for the page's picker."""

    old: NoticeVersion | None
    new: NoticeVersion | None
    versions: list[tuple[int, str]]
    reason: str = ""
    pieces: tuple[tuple[str, str], ...] = ()
    ratio: float = 0.0


def _compared(
    old: NoticeVersion, new: NoticeVersion, versions: list[tuple[int, str]]
) -> Comparison:
    matcher = difflib.SequenceMatcher(None, old.body, new.body, autojunk=False)
    pieces = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            pieces.append(("same", old.body[i1:i2]))
            continue
        if i2 > i1:
            pieces.append(("removed", old.body[i1:i2]))
        if j2 > j1:
            pieces.append(("added", new.body[j1:j2]))
    return Comparison(old, new, versions, pieces=tuple(pieces), ratio=matcher.ratio())


def compare_versions(session: Session, a: int | None, b: int | None) -> Comparison | None:
    """The versions ``a`` and ``b``, with sensible defaults for what is left out: no ``b``,
    the newest version in ``a``'s language; no ``a``, the version before ``b`` in its
    language; neither, the newest version and the one it replaced. None if a version named
    does not exist."""
    versions = [
        (int(i), str(loc))
        for i, loc in session.exec(
            select(NoticeVersion.id, NoticeVersion.locale).order_by(col(NoticeVersion.id))
        ).all()
        if i is not None
    ]
    locale_of = dict(versions)
    if (a is not None and a not in locale_of) or (b is not None and b not in locale_of):
        return None
    if not versions:
        return Comparison(None, None, versions, "No notice has been shown yet.")
    asked_for_b = b is not None
    if b is None:
        b = versions[-1][0] if a is None else max(i for i, loc in versions if loc == locale_of[a])
    if a is None:
        earlier = [i for i, loc in versions if loc == locale_of[b] and i < b]
        if not earlier:
            return Comparison(
                None,
                session.get(NoticeVersion, b),
                versions,
                f"Notice #{b} is the first {locale_of[b]} version: there is nothing before it "
                "to compare it with.",
            )
        a = earlier[-1]
    if a == b:
        reason = (
            f"Notice #{b} on both sides: choose two versions to compare."
            if asked_for_b
            else f"Notice #{b} is the newest {locale_of[b]} version: nothing has replaced it."
        )
        return Comparison(None, session.get(NoticeVersion, b), versions, reason)
    old, new = session.get(NoticeVersion, a), session.get(NoticeVersion, b)
    assert old is not None  # both were listed above
    assert new is not None
    return _compared(old, new, versions)
