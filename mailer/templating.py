"""Issue templates: sandboxed Jinja2 with limits, field discovery, and a fast per-recipient fill.

Marketing writes subject and bodies as Jinja2 templates. They run in
``jinja2.sandbox.SandboxedEnvironment`` with ``StrictUndefined`` and autoescaping (HTML),
see only the documented context, and are held to a budget: at most ``MAX_OUTPUT`` characters
and ``MAX_SECONDS`` of rendering. No single operation may build a value beyond ``MAX_VALUE``:
``*``, ``+`` and ``~`` check the size of what they would build, ``**`` is capped, printf-style
``%`` formatting is not allowed, and the filters that can grow a string (``replace``,
``center``, ``indent``, ``join``...) check their result's size before building it. So no
expression can allocate gigabytes (``tests/reliability/test_templates.py`` holds hostile
templates to 1 s and 64 MB). A template that breaks a rule is refused with ``TemplateRefused``.

The context a template may use::

    subscriber.name  .company  .department  .title  .email     (only what the issue needs)
    unsubscribe_url  preferences_url                            (per recipient)
    issue.subject  issue.preheader  magazine.title              (the same for everyone)

``IssueTemplate`` renders what is common to every recipient once. When the per-recipient
values are only printed (``{{ subscriber.name }}``, never tested or looped over), the output
keeps a slot for each, ``SlotText`` cuts it into segments and each recipient costs a few
string joins; otherwise each recipient is rendered in full, under the same budget.
"""

from __future__ import annotations

import operator
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from jinja2 import StrictUndefined, TemplateError, meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import escape

from mailer.errors import TemplateRefused

MAX_OUTPUT = 1_000_000  # characters of one rendered part
MAX_VALUE = MAX_OUTPUT  # characters (or items) any one operation may build
MAX_SECONDS = 0.3  # per render, checked between output chunks
MAX_SOURCE = 200_000
MAX_REPEAT = 100_000  # longest string or list a single * may build
MAX_POWER = 1_000

SUBSCRIBER_FIELDS = ("name", "company", "department", "title", "email")
PER_RECIPIENT = ("subscriber", "unsubscribe_url", "preferences_url")
COMMON = ("issue", "magazine")
ALLOWED_NAMES = frozenset(PER_RECIPIENT + COMMON)


def _checked_mul(left: Any, right: Any) -> Any:
    for seq, count in ((left, right), (right, left)):
        sized = isinstance(seq, str | list | tuple | bytes) and isinstance(count, int)
        if sized and len(seq) * count > MAX_REPEAT:
            raise SecurityError("repetition too large")
    return operator.mul(left, right)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple | bytes) else 0


def _checked_add(left: Any, right: Any) -> Any:
    if _size(left) + _size(right) > MAX_VALUE:
        raise SecurityError("value too large")
    return operator.add(left, right)


def _checked_mod(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        raise SecurityError("printf-style formatting is not allowed")
    return operator.mod(left, right)


def checked_concat(parts: tuple[Any, ...], join: Any) -> Any:
    """``a ~ b``: refused when the joined string would be too large."""
    if sum(len(str(part)) for part in parts) > MAX_VALUE:
        raise SecurityError("value too large")
    return join(parts)


def _width(value: Any) -> int:
    return value if isinstance(value, int) else len(str(value))


def _guarded(name: str, real: Any) -> Any:
    """A filter that checks the size of what it would build before building it."""

    def estimate(value: Any, *args: Any, **kwargs: Any) -> int:
        text = str(value) if not isinstance(value, list | tuple) else ""
        if name == "replace":
            old, new = (
                str(args[0] if args else kwargs.get("old", "")),
                str(args[1] if len(args) > 1 else kwargs.get("new", "")),
            )
            hits = text.count(old) if old else len(text) + 1
            return len(text) + hits * len(new)
        if name == "center":
            return max(len(text), _width(args[0] if args else kwargs.get("width", 80)))
        if name == "indent":
            width = _width(args[0] if args else kwargs.get("width", 4))
            return len(text) + (text.count("\n") + 1) * width
        if name == "join":
            items = list(value) if isinstance(value, list | tuple | str) else []
            glue = str(args[0] if args else kwargs.get("d", ""))
            return sum(len(str(i)) for i in items) + len(glue) * len(items)
        return 0

    passed = getattr(real, "jinja_pass_arg", None)  # an eval context comes first, if any

    def checked(*args: Any, **kwargs: Any) -> Any:
        values = args[1:] if passed is not None else args
        if values and estimate(*values, **kwargs) > MAX_VALUE:
            raise SecurityError(f"{name}: value too large")
        return real(*args, **kwargs)

    if passed is not None:
        checked.jinja_pass_arg = passed  # type: ignore[attr-defined]
    return checked


GROWING_FILTERS = ("replace", "center", "indent", "join")
BANNED_FILTERS = ("format", "pprint", "xmlattr")  # printf, reprs of anything, attribute dumps


class _CheckedConcat(CodeGenerator):
    """Compiles ``a ~ b`` into a join that checks its size first."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802 (Jinja's name)
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        join = "markup_join" if frame.eval_ctx.autoescape else "str_join"
        self.write(f"), {join})")


def _checked_pow(left: Any, right: Any) -> Any:
    if isinstance(right, int | float) and abs(right) > MAX_POWER:
        raise SecurityError("exponent too large")
    return operator.pow(left, right)


class LimitedEnvironment(SandboxedEnvironment):
    """The sandbox, plus caps on the operators that can allocate without bound."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _CheckedConcat
    checked_concat = staticmethod(checked_concat)
    _BINOPS: ClassVar[dict[str, Callable[[Any, Any], Any]]] = {
        "*": _checked_mul,
        "**": _checked_pow,
        "+": _checked_add,
        "%": _checked_mod,
    }

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        checked = self._BINOPS.get(operator_)
        if checked is not None:
            return checked(left, right)
        return super().call_binop(context, operator_, left, right)


def environment(*, html: bool) -> LimitedEnvironment:
    env = LimitedEnvironment(undefined=StrictUndefined, autoescape=html)
    env.globals.clear()  # no range(), dict(), lipsum(), cycler(), joiner(), namespace()
    for name in BANNED_FILTERS:
        env.filters.pop(name, None)
    for name in GROWING_FILTERS:
        env.filters[name] = _guarded(name, env.filters[name])
    return env


HTML_ENV = environment(html=True)
TEXT_ENV = environment(html=False)


def _budgeted(chunks: Iterator[str], started: float) -> str:
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_OUTPUT:
            raise TemplateRefused("the rendered message is too large")
        if time.monotonic() - started > MAX_SECONDS:
            raise TemplateRefused("the template takes too long to render")
        out.append(chunk)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Analysis:
    fields: frozenset[str]  # subscriber fields used
    fast: bool  # per-recipient values only printed, never computed with


def analyse(source: str, *, html: bool, what: str) -> Analysis:
    """Parse ``source`` and check it only uses the documented context."""
    if len(source) > MAX_SOURCE:
        raise TemplateRefused(f"{what}: the template is too long")
    env = HTML_ENV if html else TEXT_ENV
    try:
        tree = env.parse(source)
        unknown = meta.find_undeclared_variables(tree) - ALLOWED_NAMES  # compiles: a filter
    except TemplateError as exc:  # that does not exist (or is banned) is named here
        raise TemplateRefused(f"{what}: {exc}") from None
    if unknown:
        raise TemplateRefused(f"{what}: unknown name(s) {', '.join(sorted(unknown))}")
    fields: set[str] = set()
    for node in tree.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name == "subscriber":
            if node.attr not in SUBSCRIBER_FIELDS:
                raise TemplateRefused(f"{what}: subscriber has no field {node.attr!r}")
            fields.add(node.attr)
    for item in tree.find_all(nodes.Getitem):
        if isinstance(item.node, nodes.Name) and item.node.name == "subscriber":
            raise TemplateRefused(f"{what}: write subscriber.field, not subscriber[...]")
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
        and node.node.name == "subscriber"
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


class IssueTemplate:
    """One part of an issue (subject, HTML or text body) in the sandbox.

    ``slotted`` is the output with slots in place of per-recipient values, when the
    template only prints them; else None and ``render`` must run once per recipient.
    """

    def __init__(self, source: str, *, html: bool, common: Mapping[str, Any], what: str) -> None:
        if SLOT_OPEN in source or SLOT_CLOSE in source:
            raise TemplateRefused(f"{what}: the template contains a reserved character")
        self.analysis = analyse(source, html=html, what=what)
        self.what = what
        self._template = (HTML_ENV if html else TEXT_ENV).from_string(source)
        self._common = dict(common)
        self.slotted = self._render(SLOTTED_CONTEXT) if self.analysis.fast else None

    def _render(self, per_recipient: Mapping[str, Any]) -> str:
        started = time.monotonic()
        try:
            return _budgeted(self._template.generate({**self._common, **per_recipient}), started)
        except TemplateRefused as exc:
            raise TemplateRefused(f"{self.what}: {exc}") from None
        except (
            TemplateError,
            SecurityError,
            TypeError,
            ValueError,
            ArithmeticError,
            RecursionError,
        ) as exc:
            raise TemplateRefused(f"{self.what}: {type(exc).__name__}: {exc}") from None

    def render(self, values: Mapping[str, str]) -> str:
        """Render in full for one recipient (``values`` keyed like the slots)."""
        subscriber = {name: values.get(f"subscriber.{name}", "") for name in SUBSCRIBER_FIELDS}
        return self._render(
            {
                "subscriber": subscriber,
                "unsubscribe_url": values.get("unsubscribe_url", ""),
                "preferences_url": values.get("preferences_url", ""),
            }
        )
