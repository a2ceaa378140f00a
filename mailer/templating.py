"""Issue templates: the documented context, field discovery, and a fast per-recipient fill.

Marketing writes the subject, preheader and bodies as Jinja2 templates. They run in the
bounded sandbox of ``mailer/sandbox.py`` (no Python internals, every value, step and
second bounded) with ``StrictUndefined`` and autoescaping (HTML), and see only the
documented context. A template that breaks a rule is refused with ``TemplateRefused``,
whether the issue is being saved, previewed or sent: all three build the same
``IssueTemplate``.

The context a template may use::

    subscriber.name  .company  .department  .title  .email     (only what the issue needs)
    unsubscribe_url  preferences_url                            (per recipient)
    issue.subject  issue.preheader     (as the recipient sees them: rendered for them)
    magazine.title                                              (the same for everyone)

The subject and the preheader may use ``subscriber.*`` and ``magazine.title``.

``IssueTemplate`` renders what is common to every recipient once. When the per-recipient
values are only printed (``{{ subscriber.name }}``, never tested or looped over), the output
keeps a slot for each, ``SlotText`` cuts it into segments and each recipient costs a few
string joins; otherwise each recipient is rendered in full, under the same budget.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import meta, nodes
from markupsafe import escape

from mailer import sandbox
from mailer.errors import TemplateRefused

MAX_OUTPUT = sandbox.MAX_OUTPUT

SUBSCRIBER_FIELDS = ("name", "company", "department", "title", "email")
ISSUE_FIELDS = ("subject", "preheader")
PER_RECIPIENT = ("subscriber", "unsubscribe_url", "preferences_url", "issue")
COMMON = ("magazine",)
ALLOWED_NAMES = frozenset(PER_RECIPIENT + COMMON)
HEADER_NAMES = frozenset({"subscriber", "magazine"})  # what a subject or preheader may use


@dataclass(frozen=True, slots=True)
class Analysis:
    fields: frozenset[str]  # subscriber fields used
    fast: bool  # per-recipient values only printed, never computed with


def analyse(tree: nodes.Template, *, what: str, names: frozenset[str] = ALLOWED_NAMES) -> Analysis:
    """Check that the parsed template ``tree`` only uses the documented context."""
    try:
        unknown = meta.find_undeclared_variables(tree) - names  # compiles: a filter that
    except Exception as exc:  # does not exist or is banned is named here
        raise TemplateRefused(f"{what}: {type(exc).__name__}: {exc}") from None
    if unknown:
        raise TemplateRefused(f"{what}: unknown name(s) {', '.join(sorted(unknown))}")
    fields: set[str] = set()
    known = {"subscriber": SUBSCRIBER_FIELDS, "issue": ISSUE_FIELDS, "magazine": ("title",)}
    for node in tree.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name in known:
            if node.attr not in known[node.node.name]:
                raise TemplateRefused(f"{what}: {node.node.name} has no field {node.attr!r}")
            if node.node.name == "subscriber":
                fields.add(node.attr)
    for item in tree.find_all(nodes.Getitem):
        if isinstance(item.node, nodes.Name) and item.node.name in known:
            name = item.node.name
            raise TemplateRefused(f"{what}: write {name}.field, not {name}[...]")
    return Analysis(frozenset(fields), _only_printed(tree))


def _only_printed(tree: nodes.Template) -> bool:
    """True if every per-recipient value appears only as a whole ``{{ ... }}`` expression."""
    printed: set[int] = set()
    for output in tree.find_all(nodes.Output):
        for child in output.nodes:
            if _is_plain_recipient_value(child):
                printed.add(id(child))
                if isinstance(child, nodes.Getattr):
                    printed.add(id(child.node))
    for name in tree.find_all(nodes.Name):
        if name.name in PER_RECIPIENT and id(name) not in printed:
            return False
    return True


def _is_plain_recipient_value(node: nodes.Node) -> bool:
    if isinstance(node, nodes.Name):
        return node.name in ("unsubscribe_url", "preferences_url")
    return (
        isinstance(node, nodes.Getattr)
        and isinstance(node.node, nodes.Name)
        and node.node.name in ("subscriber", "issue")
    )


SLOT_OPEN, SLOT_CLOSE = "\ue000", "\ue001"  # private-use characters, refused in sources
_SLOT = re.compile(f"{SLOT_OPEN}([a-z_.]+){SLOT_CLOSE}")


def slot(key: str) -> str:
    """A marker for a per-recipient value, filled in later by ``SlotText``."""
    return f"{SLOT_OPEN}{key}{SLOT_CLOSE}"


class _Slot:
    """Stands in for one per-recipient value while the common part is rendered once."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __str__(self) -> str:
        return slot(self.key)

    def __html__(self) -> str:
        return slot(self.key)


class _SlotSubscriber:
    def __getattr__(self, name: str) -> _Slot:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Slot(f"subscriber.{name}")


SLOTTED_CONTEXT: Mapping[str, Any] = {
    "subscriber": _SlotSubscriber(),
    "unsubscribe_url": _Slot("unsubscribe_url"),
    "preferences_url": _Slot("preferences_url"),
    "issue": {name: _Slot(f"issue.{name}") for name in ISSUE_FIELDS},
}


class SlotText:
    """Text with per-recipient slots, cut once into segments; ``fill`` joins them."""

    def __init__(self, text: str, *, escape_values: bool) -> None:
        parts = _SLOT.split(text)
        self.segments = parts[0::2]
        self.keys = parts[1::2]
        self.escapes = escape_values

    def insert(self, values: Mapping[str, str]) -> str:
        """Fill only the slots named in ``values`` (raw), keeping the others as slots."""
        out = [self.segments[0]]
        for index, key in enumerate(self.keys, start=1):
            out.append(values[key] if key in values else slot(key))
            out.append(self.segments[index])
        return "".join(out)

    def fill(self, values: Mapping[str, str]) -> str:
        segments = self.segments
        out = [segments[0]]
        for index, key in enumerate(self.keys, start=1):
            value = values.get(key, "")
            out.append(str(escape(value)) if self.escapes else value)
            out.append(segments[index])
        return "".join(out)


_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def redacted(message: str, values: Mapping[str, str]) -> str:
    """``message`` without the recipient's values: Python's and Jinja's messages quote the
    data they fail on (``'dict object' has no attribute 'Ann'``, ``KeyError: 'Bob'``), and
    the template may have changed it first (``int(subscriber.name|upper)`` quotes 'ANN'): a
    quoted part goes when it and a value hold one another, whatever the case; a value of four
    characters or more goes wherever it stands, whatever the case."""
    known = [value.casefold() for value in values.values() if value]

    def scrub(match: re.Match[str]) -> str:
        quoted = match.group(1) if match.group(1) is not None else match.group(2)
        folded = (quoted or "").casefold()
        mine = folded and any(folded in v or (len(v) >= 2 and v in folded) for v in known)
        return "'…'" if mine else match.group(0)

    message = _QUOTED.sub(scrub, message)
    for value in known:
        if len(value) >= 4:
            message = re.sub(re.escape(value), "…", message, flags=re.IGNORECASE)
    return message


class IssueTemplate:
    """One part of an issue (subject, preheader, HTML or text body) in the sandbox.

    ``slotted`` is the output with slots in place of per-recipient values, when the
    template only prints them; else None and ``render`` must run once per recipient.
    """

    def __init__(
        self,
        source: str,
        *,
        html: bool,
        common: Mapping[str, Any],
        what: str,
        names: frozenset[str] = ALLOWED_NAMES,
    ) -> None:
        self.what = what
        if SLOT_OPEN in source or SLOT_CLOSE in source:
            raise TemplateRefused(f"{what}: the template contains a reserved character")
        try:
            tree = sandbox.parse(source, html=html)
        except TemplateRefused as exc:
            raise TemplateRefused(f"{what}: {exc}") from None
        self.analysis = analyse(tree, what=what, names=names)
        try:
            self._template = sandbox.compile_tree(tree, html=html)
        except TemplateRefused as exc:
            raise TemplateRefused(f"{what}: {exc}") from None
        self._common = dict(common)
        self.slotted = self._render(SLOTTED_CONTEXT, {}) if self.analysis.fast else None

    def _render(self, per_recipient: Mapping[str, Any], private: Mapping[str, str]) -> str:
        """Render under the sandbox's budget; whatever the template raises is refused,
        with the recipient's values taken out of the reason."""
        try:
            return sandbox.render(self._template, {**self._common, **per_recipient})
        except TemplateRefused as exc:
            reason = str(exc)
        except Exception as exc:  # the template is the untrusted code
            reason = f"{type(exc).__name__}: {exc}"
        raise TemplateRefused(f"{self.what}: {redacted(reason, private)}")

    def render(self, values: Mapping[str, str]) -> str:
        """Render in full for one recipient (``values`` keyed like the slots)."""
        subscriber = {name: values.get(f"subscriber.{name}", "") for name in SUBSCRIBER_FIELDS}
        issue = {name: values.get(f"issue.{name}", "") for name in ISSUE_FIELDS}
        context = {
            "subscriber": subscriber,
            "unsubscribe_url": values.get("unsubscribe_url", ""),
            "preferences_url": values.get("preferences_url", ""),
            "issue": issue,
        }
        return self._render(context, values)
