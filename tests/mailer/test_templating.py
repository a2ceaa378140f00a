"""Issue templates run in a sandbox with a budget; hostile ones are refused, not run."""

from __future__ import annotations

import time

import pytest

from mailer.errors import TemplateRefused
from mailer.templating import IssueTemplate, SlotText

COMMON = {"issue": {"subject": "S", "preheader": ""}, "magazine": {"title": "Weekly"}}

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


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_templates_are_refused_quickly(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateRefused):
        IssueTemplate(source, html=True, common=COMMON, what="HTML body").render({})
    assert time.monotonic() - started < 2.0


def test_the_documented_context_renders_and_finds_the_fields_used() -> None:
    template = IssueTemplate(
        "<p>{{ subscriber.name }} at {{ subscriber.company }} reads {{ magazine.title }}</p>"
        '<a href="{{ unsubscribe_url }}">out</a>',
        html=True,
        common=COMMON,
        what="HTML body",
    )
    assert template.analysis.fields == {"name", "company"}
    assert template.analysis.fast
    assert template.slotted is not None
    filled = SlotText(template.slotted, escape_values=True).fill(
        {"subscriber.name": "<b>Ann</b>", "subscriber.company": "A&B", "unsubscribe_url": "u"}
    )
    assert filled == ('<p>&lt;b&gt;Ann&lt;/b&gt; at A&amp;B reads Weekly</p><a href="u">out</a>')


def test_logic_on_a_field_takes_the_full_render_and_still_escapes() -> None:
    template = IssueTemplate(
        "{% if subscriber.name %}Dear {{ subscriber.name|title }}{% else %}Hello{% endif %}",
        html=True,
        common=COMMON,
        what="HTML body",
    )
    assert not template.analysis.fast
    assert template.render({"subscriber.name": "<ann>"}) == "Dear &lt;Ann&gt;"
    assert template.render({}) == "Hello"


def test_unknown_subscriber_fields_are_refused() -> None:
    with pytest.raises(TemplateRefused, match="no field 'password'"):
        IssueTemplate("{{ subscriber.password }}", html=True, common=COMMON, what="HTML body")
