"""Languages of the subscriber pages and system mails: English and Japanese.

Messages are written in English in the templates and code (``_("...")``); the Japanese
catalog is ``subscriptions/locale/ja/LC_MESSAGES/messages.po``, read with Babel at start-up
(no compiled ``.mo`` to keep in step). The locale comes from the link (``?lang=ja``), then
the browser's ``Accept-Language``, then English.
"""

from __future__ import annotations

import gettext
from collections.abc import Callable
from functools import cache
from io import BytesIO

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from subscriptions.paths import LOCALE_DIR
from subscriptions.registry import LOCALES

DEFAULT_LOCALE = "en"
Gettext = Callable[[str], str]


def N_(message: str) -> str:  # noqa: N802 (the gettext convention)
    """Mark a message for extraction where it is written; it is translated where shown."""
    return message


# Labels of the consent ledger's values, as the preferences page shows them.
CONSENT_LABELS = {
    "magazine": N_("E-mail magazine"),
    "joint_use": N_("Joint use"),
    "foreign_transfer": N_("Transfer abroad"),
    "granted": N_("Asked for"),
    "confirmed": N_("Confirmed"),
    "withdrawn": N_("Withdrawn"),
    "web_form": N_("Web form"),
    "api": N_("Web form"),
    "import": N_("Import"),
    "staff": N_("By our staff, at your request"),
    "link": N_("Link in a mail"),
    "one_click": N_("Unsubscribe button of your mail program"),
    "mailto": N_("Unsubscribe mail"),
    "complaint": N_("Spam report"),
    "erasure": N_("Deletion of your data"),
    "expiry": N_("Not confirmed in time"),
    "bounce": N_("Mail to your address bounced"),
    "request_disclosure": N_("Tell me what data you hold about me"),
    "request_correction": N_("Correct my data"),
    "request_cessation": N_("Stop using my data"),
    "request_erasure": N_("Delete my data"),
    "request_stop_provision": N_("Stop sharing my data with the group companies"),
    "request_complaint": N_("A complaint"),
    "request_consultation": N_("A question"),
}


@cache
def translations(locale: str) -> gettext.NullTranslations:
    path = LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po"
    if locale == DEFAULT_LOCALE or not path.exists():
        return gettext.NullTranslations()
    with path.open("rb") as fh:
        catalog = read_po(fh, locale=locale)
    buffer = BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


def gettext_for(locale: str) -> Gettext:
    return translations(locale if locale in LOCALES else DEFAULT_LOCALE).gettext


def pick_locale(explicit: str | None, accept_language: str | None) -> str:
    """The locale to answer in: an explicit choice, else the browser's preference."""
    if explicit in LOCALES:
        return explicit
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate((accept_language or "").split(",")):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        language = tag.strip().lower().split("-")[0]
        if language in LOCALES and quality > 0:
            ranked.append((-quality, position, language))
    return min(ranked)[2] if ranked else DEFAULT_LOCALE
