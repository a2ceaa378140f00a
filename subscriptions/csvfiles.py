"""Every CSV file mailmag writes, written so that a spreadsheet shows each cell as text.

People type their own names, companies and phone numbers, and a CSV export is opened in
Excel, LibreOffice or Numbers, which read a cell that begins with ``=``, ``+``, ``-`` or
``@`` (or a tab or carriage return before one) as a formula: ``=HYPERLINK("http://evil/",
"Click")`` becomes a link, ``+81-3-1234-5678`` becomes -6834 (CWE-1236, OWASP "CSV
Injection"). Such a cell is written with a leading apostrophe, which spreadsheets take as
"this is text"; so are the full-width forms a Japanese input method types (U+FF1D, U+FF0B,
U+FF0D, U+FF20), which Japanese Excel also reads as formulas. Nothing else changes, and JSON
exports, which no spreadsheet evaluates, keep the values as they are.

defusedcsv does the same for ``=+-@|%`` but leaves tabs, carriage returns and the full-width
forms alone and rewrites ``|`` inside values, so mailmag keeps this one rule itself. Every
writer of CSV goes through ``writer`` or ``DictWriter`` here (``tests/subscriptions/
test_csvfiles.py`` checks each export).
"""

from __future__ import annotations

import csv
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    _DictWriter = csv.DictWriter[str]  # generic only to the type checker
else:
    _DictWriter = csv.DictWriter

FULL_WIDTH = ("\uff1d", "\uff0b", "\uff0d", "\uff20")  # = + - @ as a Japanese IME types them
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", *FULL_WIDTH)


def cell(value: object) -> object:
    """``value`` as a cell a spreadsheet shows as text."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class Writer:
    """``csv.writer`` whose every cell goes through ``cell``."""

    def __init__(self, out: TextIO) -> None:
        self._writer = csv.writer(out)

    def writerow(self, row: Iterable[object]) -> None:
        self._writer.writerow([cell(value) for value in row])

    def writerows(self, rows: Iterable[Iterable[object]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(out: TextIO) -> Writer:
    return Writer(out)


class DictWriter(_DictWriter):
    """``csv.DictWriter`` whose every cell goes through ``cell`` (the header is ours)."""

    def __init__(self, out: TextIO, fieldnames: Collection[str]) -> None:
        super().__init__(out, fieldnames=list(fieldnames))

    def writerow(self, rowdict: Mapping[str, Any]) -> Any:
        return super().writerow({key: cell(value) for key, value in rowdict.items()})

    def writerows(self, rowdicts: Iterable[Mapping[str, Any]]) -> None:
        for rowdict in rowdicts:
            self.writerow(rowdict)
