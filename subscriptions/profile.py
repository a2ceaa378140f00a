"""What people type about themselves, checked once for every path that stores it.

The profile fields (name, company, department, title, phone: the notice's jointly used
categories) reach mail headers, CSV exports and other companies' systems, so each value is
one line of visible text. Every path that writes them calls this module: the sign-up form
and JSON API (through the ``ProfileText`` and ``Phone`` types of ``SignUpRequest``), the
preferences form, corrections asked for at the contact point or made by the privacy
officer, and the CSV import. Free text that is allowed several lines (a message to the
contact point, a request's outcome) goes through ``clean_message``.

Refused in a one-line value, each with its own message (a msgid, translated where shown):

- line breaks: CR, LF, VT, FF, the file/group/record separators, NEL, U+2028 and U+2029;
- every other control character (C0, DEL, C1), lone surrogates (no database or mail can
  hold them) and the noncharacters (U+FDD0-U+FDEF, U+xxFFFE, U+xxFFFF);
- format characters that hide or reorder text (Unicode category Cf: bidi embeddings,
  overrides and isolates, zero-width space, word joiner, soft hyphen, BOM, tag characters),
  and the Hangul fillers, letters that show nothing. ZERO WIDTH JOINER and NON-JOINER stay
  allowed: emoji sequences and several scripts need them. Variation selectors (category
  Mn) stay allowed too: Japanese names use ideographic variation sequences (葛󠄀);
- private-use characters (category Co): legacy systems put in-house kanji (外字) there, which
  no other system can show;
- a value longer than its column (200 characters; 40 for the phone), counted after the
  surrounding white space is stripped.

A value is stored as typed, apart from that stripping: no NFC or NFKC normalisation, which
would replace the CJK compatibility ideographs some family names are written with. The one
exception is the phone number, whose full-width digits and dashes are folded to ASCII
(full-width ``03-1234`` is stored in ASCII) before it is checked against what a telephone
number may hold.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from subscriptions.errors import InvalidFields, InvalidInput
from subscriptions.i18n import N_

PROFILE = ("name", "company", "department", "title", "phone")
LIMITS = {"name": 200, "company": 200, "department": 200, "title": 200, "phone": 40}

ONE_LINE = N_("Please keep this on one line.")
INVISIBLE = N_("Please remove the control or invisible characters from this.")
PRIVATE_USE = N_(
    "This holds a private-use character (such as an in-house kanji) that other systems "
    "cannot show; please write it another way."
)
NOT_A_PHONE = N_("Please enter a telephone number: digits, spaces and + - ( ) only.")
SHORTEN = N_("Please shorten this.")
TOO_LONG = {
    40: N_("Please keep this to 40 characters or fewer."),
    200: N_("Please keep this to 200 characters or fewer."),
    500: N_("Please keep this to 500 characters or fewer."),
    5000: N_("Please keep this to 5,000 characters or fewer."),
}
# The error types the JSON API reports in ``detail[].type``, for clients to act on.
CODES = {
    ONE_LINE: "line_break",
    INVISIBLE: "invisible_character",
    PRIVATE_USE: "private_use_character",
    NOT_A_PHONE: "not_a_phone_number",
    SHORTEN: "too_long",
    **dict.fromkeys(TOO_LONG.values(), "too_long"),
}

_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_JOINERS = frozenset("\u200c\u200d")
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0")
_DASHES = str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u30fc", "-"))
_PHONE = re.compile(
    r"\+?[0-9()\-. ]*[0-9][0-9()\-. ]*(?:\s*(?:ext\.?|x|内線)\s*[0-9]+)?", re.IGNORECASE
)
# Everything a one-line value may hold passes this at once; only the rest is looked at
# character by character (an import checks a million names).
_PLAIN = re.compile(r"[ -~\u00a0-\u00ac\u00ae-\u024f\u3000-\u30ff\u4e00-\u9fff\uff01-\uff9f]*")


def _character_problem(char: str, *, multiline: bool) -> str | None:
    if char in _LINE_BREAKS:
        return None if multiline else ONE_LINE
    if char == "\t" and multiline:
        return None
    category = unicodedata.category(char)
    if category in ("Cc", "Cs") or char in _FILLERS:
        return INVISIBLE
    if category == "Cf":
        return None if char in _JOINERS else INVISIBLE
    code = ord(char)
    if 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE:
        return INVISIBLE
    if category == "Co":
        return PRIVATE_USE
    return None


def text_problem(value: str, *, limit: int, multiline: bool = False) -> str | None:
    """What is wrong with ``value`` (already stripped), as a msgid, or None."""
    if multiline or not _PLAIN.fullmatch(value):
        for char in value:
            problem = _character_problem(char, multiline=multiline)
            if problem is not None:
                return problem
    if len(value) > limit:
        return TOO_LONG.get(limit, SHORTEN)
    return None


def clean_field(field: str, value: str | None) -> str | None:
    """``value`` as stored for the profile field ``field``: stripped, None when empty;
    ``InvalidInput`` naming the field when it may not be stored."""
    if value is None:
        return None
    cleaned = value.strip()
    if field == "phone":
        cleaned = unicodedata.normalize("NFKC", cleaned).translate(_DASHES).strip()
    problem = text_problem(cleaned, limit=LIMITS[field])
    if problem is None and field == "phone" and cleaned and not _PHONE.fullmatch(cleaned):
        problem = NOT_A_PHONE
    if problem is not None:
        raise InvalidInput(field, problem)
    return cleaned or None


def clean_profile(values: Mapping[str, str | None]) -> dict[str, str | None]:
    """Each profile field of ``values`` as stored; ``InvalidFields`` naming every field that
    may not be stored (and ``InvalidInput`` for a name that is not a profile field)."""
    cleaned: dict[str, str | None] = {}
    problems: dict[str, str] = {}
    for field, value in values.items():
        if field not in LIMITS:
            raise InvalidInput(field, N_("This item cannot be corrected."))
        try:
            cleaned[field] = clean_field(field, value)
        except InvalidInput as exc:
            problems[field] = exc.message
    if problems:
        raise InvalidFields(problems)
    return cleaned


def clean_line(field: str, value: str, *, limit: int) -> str:
    """A one-line value that is not part of the profile (a reason given by staff)."""
    cleaned = value.strip()
    problem = text_problem(cleaned, limit=limit)
    if problem is not None:
        raise InvalidInput(field, problem)
    return cleaned


def clean_message(field: str, value: str, *, limit: int = 5000) -> str:
    """Free text that may run over several lines (a message to the contact point, the
    outcome of a request): line breaks become LF and tabs stay; the rest as ``clean_line``."""
    cleaned = re.sub("\r\n?|[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]", "\n", value).strip()
    problem = text_problem(cleaned, limit=limit, multiline=True)
    if problem is not None:
        raise InvalidInput(field, problem)
    return cleaned


def _validator(field: str) -> Any:
    def check(value: Any) -> Any:
        if not isinstance(value, str):
            return value  # the type check that follows refuses it
        try:
            return clean_field(field, value) or ""
        except InvalidInput as exc:
            raise PydanticCustomError(CODES[exc.message], exc.message) from None

    return BeforeValidator(check)


# The profile fields of a pydantic model: cleaned as ``clean_field`` cleans them, and refused
# with its msgid as the error's message (its ``CODES`` entry as the error's type).
ProfileText = Annotated[str, _validator("name")]
Phone = Annotated[str, _validator("phone")]
