"""The Jinja2 sandbox that issue templates run in, with every way to build a value bounded.

Jinja2's ``SandboxedEnvironment`` keeps templates away from Python's internals, but not
from resource bombs: ``'x'.ljust(10**8)``, ``'{:>200000000}'.format(1)``, a list printed
as its thousand-fold nested repr, two nested loops of 10**5 inside one macro. The
``LimitedEnvironment`` here bounds each of them, in memory and in time, inside a single
expression:

- **Size.** No single value may weigh more than ``MAX_VALUE``: the characters of its
  strings plus one per item, containers counted in full (a list holding the same long string
  a thousand times weighs a thousand of them, as its printed form would). Every operator,
  method, filter, test, ``~``, literal, captured block (``{% set %}``, a macro's output) and
  ``{{ }}`` checks the weight of what it is given and of what it builds; where a result
  could outgrow its inputs (``*``, ``join``, ``replace``, ``center``, ``ljust``, ``rjust``,
  ``zfill``, ``expandtabs``, format widths and precisions, the ``indent``, ``wordwrap``,
  ``urlize``, ``batch`` and ``slice`` filters...) the size is estimated *before* it is built.
  A list, split or iterator holds at most ``MAX_ITEMS`` items, one ``*`` builds at most
  ``MAX_REPEAT``, an integer has at most ``MAX_INT_BITS``.
- **Total.** Everything one render builds is added up; past ``MAX_BUILT`` it stops, so
  values kept in ``{% set %}`` variables cannot add up to gigabytes either.
- **Time.** Each loop iteration, call, filter, test and printed value is a step: a render
  may take ``MAX_STEPS`` (the same count on every machine, so what the preview accepts is
  what the send accepts) and ``MAX_SECONDS`` of its thread's CPU time as a backstop (CPU,
  not wall clock: a loaded machine, or a worker thread waiting for the GIL, must not fail a
  template that the preview passed). Both are checked inside expressions (a loop inside a
  macro inside one ``{{ }}``), not only between output chunks; since each operation is
  bounded in size, none runs long between two checks.
- **Parsing.** A source holds at most ``MAX_SOURCE`` characters and ``MAX_TOKENS`` tags'
  tokens (compiling costs ~30 us a token), nested at most ``MAX_NESTING`` deep; macros
  call each other at most ``MAX_DEPTH`` deep.

What is refused rather than bounded: printf-style ``%`` on strings and the ``format``,
``pprint`` and ``xmlattr`` filters; ``sum`` of anything but numbers; ``tojson`` with an
``indent`` over 8; the string methods ``encode``, ``translate`` and ``maketrans`` (only a
list of known methods of ``str``, lists, dicts and numbers may be used, and none that
changes a list or dict); the globals (``range``, ``lipsum``, ``cycler``, ``namespace``...).

A template breaking a rule raises ``TemplateRefused`` (mailer/errors.py), promptly: at
most one bounded operation after the limit is crossed. Template code runs only inside
``render`` (which holds the budget), so nothing is evaluated at compile time either.
"""

from __future__ import annotations

import inspect
import operator
import re
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextvars import ContextVar
from functools import update_wrapper
from itertools import repeat
from typing import Any, ClassVar, cast

from jinja2 import StrictUndefined, Template, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import BlockReference, LoopContext, Macro, Undefined
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from markupsafe import Markup, escape

from mailer.errors import TemplateRefused

MAX_OUTPUT = 1_000_000  # characters of one rendered part
MAX_VALUE = MAX_OUTPUT  # weight of any one value (characters + items, nested in full)
MAX_REPEAT = 100_000  # longest string or list a single * may build
MAX_ITEMS = 100_000  # items of one list, split, or iterator
MAX_INT_BITS = 16_384  # Python prints integers up to 4,300 digits (~14,300 bits) anyway
MAX_BUILT = 8 * MAX_VALUE  # weight built by one render in all (bounds what sets can keep)
MAX_STEPS = 10_000  # loop iterations, calls, filters, tests and outputs of one render
MAX_SECONDS = 0.3  # CPU time of one render: the backstop behind MAX_STEPS
MAX_SOURCE = 200_000  # characters of a template
MAX_TOKENS = 5_000  # tokens inside {{ }}, {% %}: compiling costs ~30 us each
MAX_NESTING = 50  # brackets, or unary operators, inside each other
MAX_DEPTH = 50  # macros (and recursive loops) calling each other
MAX_JSON_INDENT = 8

# --- the budget of one render -------------------------------------------------------------


class Budget:
    """What one render has used so far: steps, weight built, and its deadline."""

    __slots__ = ("built", "deadline", "depth", "steps")

    def __init__(self, seconds: float) -> None:
        self.steps = 0
        self.built = 0
        self.depth = 0
        self.deadline = time.thread_time() + seconds


_BUDGET: ContextVar[Budget | None] = ContextVar("mailmag_template_budget", default=None)


def _current() -> Budget:
    budget = _BUDGET.get()
    if budget is None:
        # Also keeps Jinja's compile-time constant folding from running filters and tests
        # without a budget: it gives up on the expression and leaves it to the render.
        raise SecurityError("template code runs only inside a render")
    return budget


def tick() -> None:
    """Count one step of the current render; refuse past its step or time limit."""
    budget = _current()
    budget.steps += 1
    if budget.steps > MAX_STEPS:
        raise TemplateRefused(f"the template does too much work (over {MAX_STEPS:,} steps)")
    if time.thread_time() > budget.deadline:
        raise TemplateRefused("the template takes too long to render")


def spend(amount: int) -> None:
    """Add what an operation built to the render's total; refuse past ``MAX_BUILT``."""
    budget = _current()
    budget.built += amount
    if budget.built > MAX_BUILT:
        raise TemplateRefused("the template builds too much (values past 8 million characters)")


def too_large(what: str) -> TemplateRefused:
    return TemplateRefused(f"{what}: value too large")


# --- weights ---------------------------------------------------------------------------------

_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))
_CONTAINERS = (list, tuple, set, frozenset, *_VIEWS)
_SIZED: tuple[type, ...] = (dict, *_CONTAINERS)


def _scalar_weight(value: object) -> int:
    if value is None or isinstance(value, bool | Undefined):
        return 1
    if isinstance(value, int):
        return value.bit_length() // 3 + 1  # at least its decimal digits
    if isinstance(value, float | complex):
        return 24
    try:  # a macro, a loop, an iterator...: what str() would print of it
        return len(str(value))
    except Exception:  # an object that cannot print weighs nothing more
        return 1


def weight(value: object, limit: int = MAX_VALUE) -> int:
    """Characters of the strings in ``value`` plus one per item, nested containers counted
    as often as they occur (as ``str()`` or ``==`` would walk them). Stops counting once
    past ``limit``, so it costs at most ``limit`` steps (and a list of strings is summed at
    C speed)."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, _SIZED):
        return _scalar_weight(value)
    total = 0
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, _SIZED):
            total += len(cast(Sized, item))
            groups = (item.keys(), item.values()) if isinstance(item, dict) else (item,)
            for group in groups:
                total += _flat_weight(cast(Iterable[object], group), stack)
        else:
            total += _scalar_weight(item)
        if total > limit:
            return total
    return total


def _flat_weight(items: Iterable[object], nested: list[object]) -> int:
    """The weight of the strings and scalars in ``items``; containers go on ``nested``."""
    if all(map(isinstance, items, repeat(str))):
        return sum(map(len, cast(Iterable[str], items)))
    total = 0
    for item in items:
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, _SIZED):
            nested.append(item)
        else:
            total += _scalar_weight(item)
    return total


def check_weight(value: object, what: str) -> None:
    if not isinstance(value, str) and weight(value) > MAX_VALUE:
        raise too_large(what)


def _checked_result(result: Any, what: str, *, count: bool = True) -> Any:
    """``result`` if it is within bounds (an iterator comes back counted), else refused."""
    if isinstance(result, str):
        size = len(result)
    elif isinstance(result, _SIZED):
        if len(cast(Sized, result)) > MAX_ITEMS:
            raise TemplateRefused(f"{what}: more than {MAX_ITEMS:,} items")
        size = weight(result)
    elif isinstance(result, Iterator):
        return counted(result, what)
    else:
        return result
    if size > MAX_VALUE:
        raise too_large(what)
    if count:
        spend(size)
    return result


def counted(items: Iterable[Any], what: str) -> Iterator[Any]:
    """``items``, one step each, refused past ``MAX_ITEMS``."""
    for count, item in enumerate(items, start=1):
        if count > MAX_ITEMS:
            raise TemplateRefused(f"{what}: more than {MAX_ITEMS:,} items")
        tick()
        yield item


def bounded_iter(items: Iterable[Any]) -> Iterator[Any]:
    """What a ``{% for %}`` loop iterates: one step per iteration."""
    for item in items:
        tick()
        yield item


# --- operators -------------------------------------------------------------------------------


def _int_bits(value: object) -> int:
    return value.bit_length() if isinstance(value, int) else 0


def _checked_mul(left: Any, right: Any) -> Any:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(count, int):
            if len(seq) * count > MAX_REPEAT:
                raise TemplateRefused("repetition too large")
            built = weight(seq) * max(count, 0)
            if built > MAX_VALUE:
                raise too_large("*")
            spend(built)
            return operator.mul(left, right)
    if _int_bits(left) + _int_bits(right) > MAX_INT_BITS:
        raise TemplateRefused("number too large")
    return operator.mul(left, right)


def _checked_add(left: Any, right: Any) -> Any:
    sized = (str, list, tuple)
    if isinstance(left, sized) or isinstance(right, sized):
        if weight(left) + weight(right) > MAX_VALUE:
            raise too_large("+")
        return _checked_result(operator.add(left, right), "+")  # Markup + str escapes it
    return operator.add(left, right)


def _checked_pow(left: Any, right: Any) -> Any:
    whole = isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1
    if whole and left.bit_length() * right > MAX_INT_BITS:
        raise TemplateRefused("number too large")
    return operator.pow(left, right)


def _checked_mod(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        raise TemplateRefused("printf-style formatting (%) is not allowed: use '{}'.format()")
    return operator.mod(left, right)


def checked_concat(parts: tuple[Any, ...], join: Callable[[Any], str]) -> str:
    """``a ~ b``: the weights of the parts are checked before they are made strings."""
    total = 0
    for part in parts:
        total += weight(part)
        if total > MAX_VALUE:
            raise too_large("~")
    return cast(str, _checked_result(join(parts), "~"))


def checked_join(chunks: Iterable[str]) -> str:
    """Jinja's ``concat``: how a macro, a ``{% set %}`` or ``{% filter %}`` block, or a
    ``self.block()`` captures its output. Sums the chunks before joining them."""
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_VALUE:
            raise TemplateRefused("captured output too large")
        out.append(chunk)
    spend(size)
    return "".join(out)


def bounded_literal(value: Any) -> Any:
    """A list, tuple or dict literal: ``[s, s, s]`` of a long ``s`` weighs three of it."""
    return _checked_result(value, "literal")


def finalize(value: Any) -> Any:
    """Every ``{{ }}``: a step, and no printing of a value heavier than ``MAX_VALUE`` (a
    nested list's repr would otherwise be built before any output size is checked)."""
    tick()
    if not isinstance(value, str):
        check_weight(value, "{{ }}")
    return value


# --- string methods --------------------------------------------------------------------------

STR_METHODS = frozenset(
    {
        "capitalize", "casefold", "center", "count", "endswith", "expandtabs", "find",
        "format", "format_map", "index", "isalnum", "isalpha", "isascii", "isdecimal",
        "isdigit", "isidentifier", "islower", "isnumeric", "isprintable", "isspace",
        "istitle", "isupper", "join", "ljust", "lower", "lstrip", "partition",
        "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition",
        "rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase",
        "title", "upper", "zfill",
    }
)  # fmt: skip
MARKUP_METHODS = STR_METHODS | {"escape", "unescape", "striptags"}
SEQUENCE_METHODS = frozenset({"count", "index"})
DICT_METHODS = frozenset({"get", "items", "keys", "values"})
NUMBER_ATTRIBUTES = frozenset(
    {"real", "imag", "numerator", "denominator", "bit_length", "is_integer", "conjugate"}
)
_LINE_BOUNDARIES = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"

Args = tuple[Any, ...]


def _arg(args: Args, kwargs: Mapping[str, Any], index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _width(owner: str, args: Args, kwargs: Mapping[str, Any]) -> Args:
    width = _arg(args, kwargs, 0, "width", 0)
    if isinstance(width, int) and width > MAX_VALUE:
        raise too_large("width")
    return args


def _expandtabs(owner: str, args: Args, kwargs: Mapping[str, Any]) -> Args:
    size = _arg(args, kwargs, 0, "tabsize", 8)
    if isinstance(size, int) and len(owner) + owner.count("\t") * max(size, 0) > MAX_VALUE:
        raise too_large("expandtabs")
    return args


def _join(owner: str, args: Args, kwargs: Mapping[str, Any]) -> Args:
    if not args:
        return args
    items = args[0]
    if not isinstance(items, list | tuple):
        items = list(counted(items, "join"))
    if weight(items) + len(owner) * len(items) > MAX_VALUE:  # each item counted once more
        raise too_large("join")
    return (items, *args[1:])


def _replace(owner: str, args: Args, kwargs: Mapping[str, Any]) -> Args:
    if len(args) < 2 or not isinstance(args[0], str) or not isinstance(args[1], str):
        return args
    old, new = args[0], args[1]
    if isinstance(owner, Markup):
        new = owner.escape(new)
    count = _arg(args, kwargs, 2, "count", -1)
    hits = owner.count(old) if old else len(owner) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    if len(owner) + hits * max(len(new) - len(old), 0) > MAX_VALUE:
        raise too_large("replace")
    return args


def _split(owner: str, args: Args, kwargs: Mapping[str, Any]) -> Args:
    sep = _arg(args, kwargs, 0, "sep", None)
    limit = _arg(args, kwargs, 1, "maxsplit", -1)
    if isinstance(limit, int) and 0 <= limit < MAX_ITEMS:
        return args
    if isinstance(sep, str) and sep:
        pieces = owner.count(sep) + 1
    elif len(owner) // 2 + 1 <= MAX_ITEMS:
        return args  # whitespace-separated pieces need one character and one space each
    else:
        pieces = len(owner.split(None, MAX_ITEMS))  # allocates MAX_ITEMS pieces at most
    if pieces > MAX_ITEMS:
        raise TemplateRefused(f"split: more than {MAX_ITEMS:,} items")
    return args


def _splitlines(owner: str, args: Args, kwargs: Mapping[str, Any]) -> Args:
    if sum(owner.count(boundary) for boundary in _LINE_BOUNDARIES) + 1 > MAX_ITEMS:
        raise TemplateRefused(f"splitlines: more than {MAX_ITEMS:,} items")
    return args


_METHOD_CHECKS: dict[str, Callable[[str, Args, Mapping[str, Any]], Args]] = {
    "center": _width,
    "ljust": _width,
    "rjust": _width,
    "zfill": _width,
    "expandtabs": _expandtabs,
    "join": _join,
    "replace": _replace,
    "split": _split,
    "rsplit": _split,
    "splitlines": _splitlines,
}

# --- str.format ------------------------------------------------------------------------------

_DIGITS = re.compile(r"\d+")
_MAX_DIGITS = len(str(MAX_VALUE))


class _BoundedFormatting:
    """``str.format``'s fields, each checked: widths and precisions in the spec, the
    weight of the value, and the size of everything formatted so far."""

    _built = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._built = len(format_string)
        return cast(str, super().vformat(format_string, args, kwargs))  # type: ignore[misc]

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        check_weight(value, "format")  # !r of a large list
        return super().convert_field(value, conversion)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> str:
        tick()
        check_weight(value, "format")
        for number in _DIGITS.findall(format_spec):
            if len(number) > _MAX_DIGITS or int(number) > MAX_VALUE:
                raise TemplateRefused("format: width or precision too large")
        result = cast(str, super().format_field(value, format_spec))  # type: ignore[misc]
        self._built += len(result)
        if self._built > MAX_VALUE:
            raise too_large("format")
        spend(len(result))
        return result


class _BoundedFormatter(_BoundedFormatting, SandboxedFormatter):
    pass


class _BoundedEscapeFormatter(_BoundedFormatting, SandboxedEscapeFormatter):
    pass


# --- filters and tests -----------------------------------------------------------------------

FilterArgs = dict[str, Any]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _check_center(a: FilterArgs) -> None:
    width = a["width"]
    if isinstance(width, int) and width > MAX_VALUE:
        raise too_large("center")


def _check_indent(a: FilterArgs) -> None:
    width = a["width"]
    if not isinstance(width, str | int):
        return  # the filter refuses it
    text = _text(a["s"])
    step = len(width) if isinstance(width, str) else max(width, 0)
    if step > MAX_VALUE or len(text) + (text.count("\n") + 1) * step > MAX_VALUE:
        raise too_large("indent")


def _check_join(a: FilterArgs) -> None:
    value = a["value"]
    if not isinstance(value, Sized):
        a["value"] = value = list(counted(value, "join"))
    glue = len(_text(a["d"]))
    if weight(value) + glue * len(value) > MAX_VALUE:
        raise too_large("join")


def _check_replace(a: FilterArgs) -> None:
    text, old, new, count = _text(a["s"]), _text(a["old"]), _text(a["new"]), a["count"]
    if a["eval_ctx"].autoescape:
        new = escape(new)  # as the filter will
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    if len(text) + hits * max(len(new) - len(old), 0) > MAX_VALUE:
        raise too_large("replace")


_WRAP_COPIES = 50_000_000  # characters textwrap may copy splitting long words (~10 ms)


def _check_wordwrap(a: FilterArgs) -> None:
    text, width = _text(a["s"]), a["width"]
    if not isinstance(width, int) or width < 1:
        return  # textwrap refuses it
    glue = len(a["wrapstring"] if a["wrapstring"] is not None else "\n")
    lines = 2 * len(text) // width + text.count("\n") + 2  # two lines hold > width
    if len(text) + lines * glue > MAX_VALUE:
        raise too_large("wordwrap")
    # textwrap copies the rest of a long word for each piece it cuts: quadratic
    if a["break_long_words"] and len(text) ** 2 // (2 * width) > _WRAP_COPIES:
        longest = max(map(len, text.split()), default=0)
        if longest**2 // (2 * width) > _WRAP_COPIES:
            raise TemplateRefused("wordwrap: a word too long for that width")


def _check_urlize(a: FilterArgs) -> None:
    text = _text(a["value"])
    links = text.count(".") + text.count("@") + text.count(":") + 1
    extra = sum(len(_text(a[name] or "")) for name in ("target", "rel"))
    if 2 * len(text) + links * (64 + extra) > MAX_VALUE:
        raise too_large("urlize")


def _check_count(name: str) -> Callable[[FilterArgs], None]:
    def check(a: FilterArgs) -> None:
        count = a[name]
        if isinstance(count, int) and count > MAX_ITEMS:
            raise TemplateRefused(f"{name}: more than {MAX_ITEMS:,} items")

    return check


def _check_sum(a: FilterArgs) -> None:
    if not isinstance(a["start"], int | float):
        raise TemplateRefused("sum adds numbers only")  # sum of lists is quadratic


def _check_tojson(a: FilterArgs) -> None:
    indent = a["indent"]
    if indent is not None and not (isinstance(indent, int) and 0 <= indent <= MAX_JSON_INDENT):
        raise TemplateRefused(f"tojson: indent is a number up to {MAX_JSON_INDENT}")


FILTER_CHECKS: dict[str, Callable[[FilterArgs], None]] = {
    "center": _check_center,
    "indent": _check_indent,
    "join": _check_join,
    "replace": _check_replace,
    "wordwrap": _check_wordwrap,
    "urlize": _check_urlize,
    "batch": _check_count("linecount"),
    "slice": _check_count("slices"),
    "sum": _check_sum,
    "tojson": _check_tojson,
}
BANNED_FILTERS = ("format", "pprint", "xmlattr")  # printf, reprs of anything, attribute dumps


_CONTEXT_PARAMETERS = frozenset({"eval_ctx", "environment", "env", "context"})


def _bounded(name: str, real: Callable[..., Any], *, check: bool) -> Callable[..., Any]:
    """A filter or test that takes a step, checks the weight of its arguments and its
    result, and for a filter in ``FILTER_CHECKS``, estimates its result first."""
    passed = getattr(real, "jinja_pass_arg", None)  # an eval context comes first, if any
    skip = 1 if passed is not None else 0
    estimate = FILTER_CHECKS.get(name) if check else None
    signature = inspect.signature(real) if estimate is not None else None
    # Jinja's async-capable filters take the context argument in a wrapper whose signature
    # (that of the function it wraps) lacks it: bind what follows it.
    first = next(iter(signature.parameters), "") if signature is not None else ""
    strip = skip if first not in _CONTEXT_PARAMETERS else 0

    def bounded(*args: Any, **kwargs: Any) -> Any:
        tick()
        for value in args[skip:]:
            check_weight(value, name)
        for value in kwargs.values():
            check_weight(value, name)
        if estimate is not None and signature is not None:
            try:
                bound = signature.bind(*args[strip:], **kwargs)
            except TypeError:
                pass  # the filter itself says what is wrong with its arguments
            else:
                bound.apply_defaults()
                estimate(bound.arguments)
                args, kwargs = (*args[:strip], *bound.args), bound.kwargs
        return _checked_result(real(*args, **kwargs), name)

    if passed is not None:
        bounded.jinja_pass_arg = passed  # type: ignore[attr-defined]
    return update_wrapper(bounded, real)


# --- the environment -------------------------------------------------------------------------


_LOOP = "bounded_iter"  # what a {% for %} iterates: environment.bounded_iter(...)


def _bounded_loop(iterable: nodes.Expr) -> nodes.Call:
    """A call node the parser never makes itself (Jinja allows no custom node types)."""
    return nodes.Call(
        nodes.EnvironmentAttribute(_LOOP), [iterable], [], None, None, lineno=iterable.lineno
    )


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``~``, literals and loops into calls that check them."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802 (Jinja's)
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        join = "markup_join" if frame.eval_ctx.autoescape else "str_join"
        self.write(f"), {join})")

    def _literal(self, visit: Callable[[Any, Frame], None], node: Any, frame: Frame) -> None:
        self.write("environment.bounded_literal(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:  # noqa: N802
        self._literal(super().visit_List, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:  # noqa: N802
        self._literal(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:  # noqa: N802
        if node.ctx == "load":
            self._literal(super().visit_Tuple, node, frame)
        else:  # a target: {% for a, b in ... %}
            super().visit_Tuple(node, frame)

    def visit_Call(  # noqa: N802
        self, node: nodes.Call, frame: Frame, forward_caller: bool = False
    ) -> None:
        callee = node.node
        if isinstance(callee, nodes.EnvironmentAttribute) and callee.name == _LOOP:
            self.write(f"environment.{_LOOP}(")  # a direct call: no step for the call
            self.visit(node.args[0], frame)
            self.write(")")
            return
        super().visit_Call(node, frame, forward_caller=forward_caller)


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with every operation bounded (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator
    checked_concat = staticmethod(checked_concat)
    bounded_literal = staticmethod(bounded_literal)
    bounded_iter = staticmethod(bounded_iter)
    _BINOPS: ClassVar[dict[str, Callable[[Any, Any], Any]]] = {
        "*": _checked_mul,
        "**": _checked_pow,
        "+": _checked_add,
        "%": _checked_mod,
    }

    def __init__(self, *, html: bool) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=html, finalize=finalize)
        self.concat = checked_join  # type: ignore[method-assign]
        self.globals.clear()  # no range(), dict(), lipsum(), cycler(), joiner(), namespace()
        for name in BANNED_FILTERS:
            self.filters.pop(name, None)
        for name, real in list(self.filters.items()):
            self.filters[name] = _bounded(name, real, check=True)
        for name, test in list(self.tests.items()):
            self.tests[name] = _bounded(name, cast(Callable[..., Any], test), check=False)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in list(tree.find_all(nodes.For)):
            loop.iter = _bounded_loop(cast(nodes.Expr, loop.iter))
        return tree

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        checked = self._BINOPS.get(operator_)
        if checked is not None:
            return checked(left, right)
        return super().call_binop(context, operator_, left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if isinstance(obj, Markup):
            return attr in MARKUP_METHODS
        if isinstance(obj, str):
            return attr in STR_METHODS
        if isinstance(obj, tuple):  # groupby's groups are named tuples: .grouper, .list
            return attr in SEQUENCE_METHODS or attr in getattr(type(obj), "_fields", ())
        if isinstance(obj, list):
            return attr in SEQUENCE_METHODS
        if isinstance(obj, dict):
            return attr in DICT_METHODS
        if isinstance(obj, int | float | complex):
            return attr in NUMBER_ATTRIBUTES
        if isinstance(obj, LoopContext):
            return True
        return not isinstance(obj, bytes | bytearray | memoryview | Iterator)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` and ``format_map`` through a formatter that bounds each field."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType):
            return None
        if value.__name__ not in ("format", "format_map"):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        formatter: SandboxedFormatter = (
            _BoundedEscapeFormatter(self, escape=owner.escape)
            if isinstance(owner, Markup)
            else _BoundedFormatter(self)
        )
        is_map = value.__name__ == "format_map"
        kind = type(owner)

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            if not is_map:
                return kind(formatter.vformat(owner, args, kwargs))
            if kwargs or len(args) != 1:
                raise TypeError("format_map() takes exactly one argument")
            return kind(formatter.vformat(owner, (), args[0]))

        return update_wrapper(bounded_format, value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        """Every call in a template: a step, the weight of its arguments checked, a string
        method's result estimated first where it can outgrow its inputs, and the result's
        size checked."""
        tick()
        for value in args:
            check_weight(value, "argument")
        for value in kwargs.values():
            check_weight(value, "argument")
        if not __self.is_safe_callable(__obj):
            raise SecurityError(f"{__obj!r} is not safely callable")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            method_check = _METHOD_CHECKS.get(getattr(__obj, "__name__", ""))
            if method_check is not None:
                args = method_check(owner, args, kwargs)
        elif isinstance(__obj, LoopContext) and args:  # loop(children) in a recursive loop
            args = (bounded_iter(args[0]), *args[1:])
        if not isinstance(__obj, Macro | LoopContext | BlockReference):
            return _checked_result(__context.call(__obj, *args, **kwargs), "call")
        # Python's recursion limit would stop a runaway macro too, but only ~1,000 frames
        # down, and Jinja rewrites the traceback of every one of them
        budget = _current()
        budget.depth += 1
        try:
            if budget.depth > MAX_DEPTH:
                raise TemplateRefused(f"macros call each other too deeply (over {MAX_DEPTH})")
            result = __context.call(__obj, *args, **kwargs)
        finally:
            budget.depth -= 1
        # a macro's or a block's output was counted when it was captured
        return _checked_result(result, "call", count=False)


HTML_ENV = LimitedEnvironment(html=True)
TEXT_ENV = LimitedEnvironment(html=False)


def environment(*, html: bool) -> LimitedEnvironment:
    return HTML_ENV if html else TEXT_ENV


# --- parse, compile, render ------------------------------------------------------------------

_NOT_COUNTED = frozenset({"data", "whitespace", "comment", "raw_begin", "raw_end"})
_OPENING, _CLOSING = frozenset("([{"), frozenset(")]}")
_PREFIX = frozenset({"-", "+", "not"})  # unary operators, each one more level of parsing


def _check_tokens(env: LimitedEnvironment, source: str) -> None:
    """Refuse, before parsing, too many tokens or nesting deeper than ``MAX_NESTING``:
    Jinja's parser recurses per level and would fail only at Python's recursion limit."""
    tags = source.count(env.variable_start_string) + source.count(env.block_start_string)
    if 3 * tags > MAX_TOKENS:  # a tag's opening, content and end: refused without lexing
        raise TemplateRefused(f"the template has too many tags (over {MAX_TOKENS:,} tokens)")
    tokens = depth = prefixes = 0
    for _lineno, kind, value in env.lexer.tokeniter(source, None):
        if kind in _NOT_COUNTED:
            continue
        tokens += 1
        if tokens > MAX_TOKENS:
            raise TemplateRefused(f"the template has too many tags (over {MAX_TOKENS:,} tokens)")
        operator_ = kind == "operator" or (kind == "name" and value == "not")
        if operator_ and value in _OPENING:
            depth += 1
        elif operator_ and value in _CLOSING:
            depth -= 1
        prefixes = prefixes + 1 if operator_ and value in _PREFIX else 0
        if depth > MAX_NESTING or prefixes > MAX_NESTING:
            raise TemplateRefused(f"the template nests too deeply (over {MAX_NESTING} levels)")


def parse(source: str, *, html: bool) -> nodes.Template:
    """The template's tree, or ``TemplateRefused`` (too long, too many tokens, invalid)."""
    if len(source) > MAX_SOURCE:
        raise TemplateRefused(f"the template is too long (over {MAX_SOURCE:,} characters)")
    env = environment(html=html)
    try:
        _check_tokens(env, source)
        return env.parse(source)
    except TemplateRefused:
        raise
    except Exception as exc:  # whatever the lexer or the parser raises
        raise TemplateRefused(f"{type(exc).__name__}: {exc}") from None


def compile_tree(tree: nodes.Template, *, html: bool) -> Template:
    env = environment(html=html)
    try:
        code = env.compile(tree)
        return env.template_class.from_code(env, code, env.make_globals(None), None)
    except Exception as exc:  # Python's own parser: too many nested parentheses
        raise TemplateRefused(f"{type(exc).__name__}: {exc}") from None


def render(template: Template, context: Mapping[str, Any]) -> str:
    """Render ``template`` under a fresh budget. Anything it raises is a ``TemplateRefused``
    or, from the template's own code, an exception the caller must translate."""
    budget = Budget(MAX_SECONDS)
    token = _BUDGET.set(budget)
    try:
        out: list[str] = []
        size = 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise TemplateRefused("the rendered message is too large")
            if time.thread_time() > budget.deadline:
                raise TemplateRefused("the template takes too long to render")
            out.append(chunk)
        return "".join(out)
    finally:
        _BUDGET.reset(token)
