"""Issue templates run in a sandbox with a budget; hostile ones are refused, not run.

Timings and memory are measured in tests/reliability/test_templates.py, which runs every
template here through save, preview and send; these tests check that each is refused, and
for what, and that what a newsletter needs still renders.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import cast

import pytest
from jinja2.exceptions import SecurityError

from mailer import sandbox
from mailer.errors import TemplateRefused
from mailer.templating import IssueTemplate, redacted

COMMON = {"magazine": {"title": "Weekly"}}

# Known Jinja2 sandbox escapes and resource bombs.
HOSTILE = [
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ config }}",
    "{{ request.application }}",
    "{{ settings.secret_key }}",
    "{{ subscriber.__class__ }}",
    "{{ subscriber['__class__'] }}",
    "{{ magazine.title.__class__.__base__.__subclasses__() }}",
    "{{ magazine.title|attr('__class__') }}",
    "{{ 'a' * 1000000000 }}",
    "{{ [1] * 1000000000 }}",
    "{{ 2 ** 100000 }}",
    "{% for i in range(10**9) %}x{% endfor %}",
    "{% for a in 'x'*90000 %}{% for b in 'x'*90000 %}x{% endfor %}{% endfor %}",
    "{{ '%s' % subscriber.password }}",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "{{ ''.join(['a'] * 99999) * 2 }}",
    "{% set x = unknown %}",
    "{{ subscriber.email.__len__ }}",
    "{%",
    "\ue000subscriber.name\ue001",
]


# Every way to build a large value, each with what its refusal names: the size is checked
# before the value is built (or, for a loop or a recursion, a step at a time).
BOMBS = [
    ("{{ 'x'.ljust(200000000) }}", "width"),
    ("{{ 'x'.rjust(200000000, 'y') }}", "width"),
    ("{{ 'x'.center(200000000) }}", "width"),
    ("{{ 'x'.zfill(200000000) }}", "width"),
    ("{{ ('x'|safe).center(200000000) }}", "width"),
    ("{{ '\t'.expandtabs(200000000) }}", "expandtabs"),
    ("{{ ('\t' * 99999).expandtabs(100000) }}", "expandtabs"),
    ("{{ '{:>200000000}'.format('x') }}", "width or precision"),
    ("{{ '{:{}}'.format('x', '>200000000') }}", "width or precision"),
    ("{{ '{:.200000000f}'.format(1.0) }}", "width or precision"),
    ("{{ '{:0200000000}'.format(1) }}", "width or precision"),
    ("{{ ('{:>99999}' * 900).format(*(['x'] * 900)) }}", "format: value too large"),
    ("{{ ('{!r}' * 20).format(*([('x' * 99999)|list] * 20)) }}", "value too large"),
    ("{% set q = '\"' * 99999 %}{{ ('{}{}{}'|safe).format(q, q, q) }}", "format: value too large"),
    ("{{ '{a}'.format_map({}) }}", "KeyError"),
    ("{{ '{a}'.format_map(1) }}", "TypeError"),
    ("{{ '{0}'.format() }}", "IndexError"),
    ("{{ '{a.b}'.format_map({'a': 1}) }}", "UndefinedError"),
    ("{{ ('x' * 99999).join(['x' * 99999] * 99) }}", "value too large"),
    ("{{ ('x' * 9999).join(('x' * 99999)|batch(100)|map('join')) }}", "join: value too large"),
    ("{{ ('x'|safe).join([('x' * 99999)|list] * 9) }}", "value too large"),
    ("{{ ('x' * 99999).replace('x', 'x' * 99999) }}", "replace"),
    ("{{ ('x' * 99999).replace('', 'y' * 10) }}", "replace"),
    ("{{ ('x' * 99999).translate({120: 'y' * 99999}) }}", "translate"),
    ("{{ 'x'.encode('utf-32') }}", "encode"),
    ("{{ (1).to_bytes(1000000000, 'big') }}", "to_bytes"),
    ("{{ ((2 ** 1000) ** 1000) ** 1000 }}", "number too large"),
    ("{% set x = 2 ** 9000 %}{{ x * x * x }}", "number too large"),
    ("{{ '%0100000000d' % 1 }}", "printf"),
    ("{{ ('x'|safe) % 1 }}", "printf"),
    ("{{ ('x' * 99999) * 11 }}", "repetition"),
    ("{{ ['x' * 99999] * 11 }}", "value too large"),
    ("{% set s = 'x' * 99999 %}{{ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s }}", "~"),
    ("{% set s = 'x' * 99999 %}{{ s + s + s + s + s + s + s + s + s + s + s }}", "+"),
    ("{% set l = 'x' * 99999 %}{{ [[l] * 1000] * 1000 }}", "value too large"),
    ("{% set l = ('x' * 99999)|list %}{{ ([l] * 1000)|string|length }}", "value too large"),
    ("{% set s = 'x' * 99999 %}{{ [s, s, s, s, s, s, s, s, s, s, s] == [] }}", "literal"),
    (
        "{% set s = 'x' * 99999 %}{{ {1: s, 2: s, 3: s, 4: s, 5: s, 6: s, 7: s, 8: s, 9: s,"
        " 10: s, 11: s} }}",
        "literal",
    ),
    ("{{ ('x' * 999)|batch(1)|list|sum(start=[]) }}", "sum adds numbers only"),
    ("{{ 'x'|batch(1000000000, 'y')|list }}", "linecount"),
    ("{{ 'x'|slice(1000000000)|list }}", "slices"),
    ("{{ ('x' * 99999)|wordwrap(1, true, 'y' * 99999) }}", "wordwrap"),
    ("{{ ('x' * 99999)|wordwrap(1) }}", "wordwrap"),
    ("{{ ('a.jp ' * 19999)|urlize(target='x' * 99999) }}", "urlize"),
    ("{{ [('x' * 99999)|list]|tojson(100000) }}", "tojson"),
    ("{{ ['x']|tojson('x' * 99999) }}", "tojson"),
    ("{{ ('x' * 99999)|indent(10**6, true) }}", "indent"),
    ("{{ ('\n' * 99999)|indent('x' * 99) }}", "indent"),
    ("{{ ('x' * 99999)|replace('x', 'x' * 99999) }}", "replace"),
    ("{{ 'x'|center(10**8) }}", "center"),
    ("{{ ('x' * 99999)|list|join('x' * 99) }}", "join: value too large"),
    ("{{ ('a b ' * 25000 ~ 'a b ' * 25000 ~ 'a b ' * 25000).split()|length }}", "split"),
    ("{{ ('a,' * 50000 ~ 'a,' * 50000 ~ 'a,').split(',')|length }}", "split"),
    ("{{ ('\n' * 99999 ~ '\n' * 99999).splitlines()|length }}", "splitlines"),
    ("{% set l = ('x' * 99999)|list %}{{ (l ~ l ~ l)|length }}", "~: value too large"),
    # captures: a macro's output, a {% set %} block, values kept in variables
    (
        "{% macro m() %}{% for a in 'x' * 9999 %}" + "x" * 200 + "{% endfor %}{% endmacro %}"
        "{{ m()|length }}",
        "captured output too large",
    ),
    (
        "{% set s = 'x' * 99999 %}{% set a %}{% for a in 'x' * 11 %}{{ s }}{% endfor %}{% endset %}"
        "{{ a|length }}",
        "captured output too large",
    ),
    (
        "{% set s = 'x' * 99999 %}" + "".join(f"{{% set v{i} = s ~ '' %}}" for i in range(90)),
        "builds too much",
    ),
    # time inside one expression
    (
        "{% macro m() %}{% for a in 'x' * 99999 %}{% for b in 'x' * 99999 %}{% endfor %}"
        "{% endfor %}{% endmacro %}{{ m() }}",
        "steps",
    ),
    (
        "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}"
        "{{ m(40) }}",
        "steps",
    ),
    ("{{ ('x' * 99999)|list|map('upper')|list|length }}", "steps"),
    ("{{ ('x' * 99999)|select|list|length }}", "steps"),
    ("{% for x in [1, 2] recursive %}{{ loop([1, 2]) }}{% endfor %}", "too deeply"),
    ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "too deeply"),
    (
        "{% macro m() %}{% call n() %}x{% endcall %}{% endmacro %}"
        "{% macro n() %}{{ caller() }}{{ m() }}{% endmacro %}{{ m() }}",
        "too deeply",
    ),
    # parsing
    ("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}", "nests too deeply"),
    ("{{ " + "[" * 60 + "]" * 60 + " }}", "nests too deeply"),
    ("{{ " + "-" * 4000 + "1 }}", "nests too deeply"),
    ("{{ " + "not " * 60 + "1 }}", "nests too deeply"),
    ("{{ 1 }}" * 2000, "tokens"),
    ("{{ " + " + ".join(["1"] * 2600) + " }}", "tokens"),
    ("{{ 1" + "0" * 5000 + " }}", "digits"),
]


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_templates_are_refused(source: str) -> None:
    with pytest.raises(TemplateRefused):
        IssueTemplate(source, html=True, common=COMMON, what="HTML body").render({})


@pytest.mark.parametrize(("source", "reason"), BOMBS)
def test_every_way_to_build_a_large_value_is_refused(source: str, reason: str) -> None:
    with pytest.raises(TemplateRefused, match=re.escape(reason)):
        IssueTemplate(source, html=True, common=COMMON, what="HTML body").render({})


def test_the_step_budget_is_the_same_on_every_machine() -> None:
    """The step limit, not the clock, stops a busy loop: the preview accepts exactly what
    the send accepts."""
    loops = "{% for a in 'x' * N %}{% for b in 'x' * 100 %}{% endfor %}{% endfor %}"
    inner = 100 + 1  # the inner loop's iterations and the outer one's
    fits = sandbox.MAX_STEPS // inner
    IssueTemplate(loops.replace("N", str(fits)), html=True, common=COMMON, what="b")
    with pytest.raises(TemplateRefused, match="steps"):
        IssueTemplate(loops.replace("N", str(fits + 1)), html=True, common=COMMON, what="b")


def test_what_a_newsletter_needs_still_renders() -> None:
    source = (
        "{% macro card(title, n) %}<h2>{{ n }}. {{ title|title }}</h2>{% endmacro %}"
        "{% set articles = [{'t': 'spring sale', 'tag': 'news'}, {'t': 'new shop', 'tag': 'news'},"
        " {'t': 'hours', 'tag': 'info'}] %}"
        "{% for group in articles|groupby('tag') %}[{{ group.grouper }}]"
        "{% for a in group.list %}{{ card(a.t, loop.index) }}{% endfor %}{% endfor %}"
        "|{{ '{:>6}'.format('x') }}|{{ '{:,}'.format(1234567) }}|{{ '{a}-{b}'.format_map({'a': 1,"
        " 'b': 2}) }}|{{ ['a', 'b']|join(', ') }}|{{ 'a b c d'|wordwrap(3) }}"
        "|{{ 'long text'|truncate(7, leeway=0) }}|{{ [1, 2, 3]|sum }}|{{ 'x'|center(5) }}"
        "|{{ 'a-b'.replace('-', '+') }}|{{ 'a,b'.split(',')|length }}|{{ {'k': [1]}|tojson(2) }}"
        "|{% set greeting %}Hi {{ magazine.title }}{% endset %}{{ greeting|upper }}"
        "|{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}"
        "|{% for x in [[1, [2]], [3]] recursive %}{% if x is iterable %}{{ loop(x) }}"
        "{% else %}{{ x }}{% endif %}{% endfor %}"
        "|{{ 'www.example.jp'|urlize }}|{{ 2 ** 10 }}|{{ 'ab' * 3 }}"
    )
    out = IssueTemplate(source, html=True, common=COMMON, what="b").render({})
    assert out.startswith(
        "[info]<h2>1. Hours</h2>[news]<h2>1. Spring Sale</h2><h2>2. New Shop</h2>"
    )
    assert "|     x|1,234,567|1-2|a, b|a b\nc d|long...|6|  x  |a+b|2|" in out
    assert '|{\n  "k": [\n    1\n  ]\n}|' in out
    assert "|HI WEEKLY|a=1|123|" in out
    assert '<a href="https://www.example.jp"' in out
    assert out.endswith("|1024|ababab")


def test_a_refusal_for_one_recipient_does_not_name_them() -> None:
    template = IssueTemplate(
        "{{ subscriber.name.format_map({}) }}", html=True, common=COMMON, what="HTML body"
    )
    with pytest.raises(TemplateRefused) as refused:
        template.render({"subscriber.name": "{Hanako}", "unsubscribe_url": "https://x/u/tok"})
    assert "Hanako" not in str(refused.value)
    assert str(refused.value) == "HTML body: KeyError: '…'"
    assert redacted("'dict object' has no attribute 'Ann'", {"a": "Ann"}) == (
        "'dict object' has no attribute '…'"
    )
    assert redacted("no https://x/u/secret-token here", {"u": "https://x/u/secret-token"}) == (
        "no … here"
    )
    # What the template made of a value first: upper-cased, or inside a longer literal.
    assert redacted("invalid literal for int(): 'HANAKO'", {"n": "Hanako"}) == (
        "invalid literal for int(): '…'"
    )
    assert redacted("no attribute 'Dear Hanako-san'", {"n": "Hanako"}) == "no attribute '…'"
    assert redacted("bad value YAMADA TARO here", {"n": "Yamada Taro"}) == "bad value … here"


def test_template_code_runs_only_inside_a_render_budget() -> None:
    """Jinja folds constant expressions when it compiles, calling filters and tests without
    any budget; they refuse, and the expression is left for the render."""
    with pytest.raises(SecurityError, match="only inside a render"):
        sandbox.HTML_ENV.filters["upper"]("abc")
    lower = cast(Callable[[str], bool], sandbox.HTML_ENV.tests["lower"])
    with pytest.raises(SecurityError, match="only inside a render"):
        lower("abc")
    template = IssueTemplate(
        "{{ 'abc'|upper }}{{ 'x' is lower }}", html=True, common=COMMON, what="b"
    )
    assert template.slotted == "ABCTrue"
