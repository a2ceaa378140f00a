"""RFC 2047 encoded-words for header values, each within the RFC's 75 characters.

A header value that is not plain ASCII (a Japanese subject, a sender's display name, a
magazine's title in List-Id) is written as ``=?utf-8?b?...?=`` words, one per line, folded
with CRLF and a space. Each word holds whole UTF-8 characters (RFC 2047 section 5: a word
must not split a character) and is at most 75 characters long (section 2); each line is at
most 78 characters (RFC 5322 2.1.1) when the header's name is at most ``NAME_ROOM`` - 2
characters long ("Subject: ", "From: ", "List-Id: " all are). Readers join adjacent words
without the whitespace between them (section 6.2), so a cut anywhere is invisible.

A value too long for one word is cut after a space where the window holds one, else
anywhere between two characters: RFC 2047 readers join the words as they are, while
Python's address parser puts a space between encoded words in a display name (the RFC
says to ignore it); a cut after a space reads the same to both.

Python's ``email.header.Header`` was used before: folding at 76 characters without knowing
the header's name, it wrote Japanese subjects with words of up to 77 characters and first
lines past 78. Base64 ("b") is used throughout: for Japanese it is shorter than "q"
(4 characters per 3 bytes against 9), and it is what Japanese mail has always carried.
"""

from __future__ import annotations

from binascii import b2a_base64

MAX_WORD = 75  # RFC 2047 section 2
MAX_LINE = 78  # RFC 5322 2.1.1, without the CRLF
NAME_ROOM = 22  # what a first line spends on "Header-Name: " (up to 20 characters of name)
_PREFIX, _SUFFIX = "=?utf-8?b?", "?="
_WIDE_SPACE = "\u3000".encode()  # the ideographic space of Japanese text
_OVERHEAD = len(_PREFIX) + len(_SUFFIX)


def _bytes_for(width: int) -> int:
    """The most bytes whose base64 fits in a word of ``width`` characters."""
    return (width - _OVERHEAD) // 4 * 3


# A continuation line is " " and one word; the first line leaves room for the header's name.
_LINE_BYTES = _bytes_for(min(MAX_WORD, MAX_LINE - 1))  # 45 bytes, 72 characters
_FIRST_BYTES = _bytes_for(MAX_LINE - NAME_ROOM)  # 42 bytes, 68 characters


def encoded_words(value: str) -> list[str]:
    """``value`` as base64 encoded-words, none longer than ``MAX_WORD``, none splitting
    a character; the first one short enough to follow a header's name on its line."""
    data = value.encode("utf-8")
    words: list[str] = []
    start, size, limit = 0, len(data), _FIRST_BYTES
    while start < size:
        end = min(start + limit, size)
        while end < size and data[end] & 0xC0 == 0x80:  # inside a character: cut before it
            end -= 1
        if end < size:  # cut after a space where there is one (see the module docstring)
            space = max(data.rfind(b" ", start, end) + 1, data.rfind(_WIDE_SPACE, start, end) + 3)
            if space > start + 3:
                end = space
        encoded = b2a_base64(data[start:end], newline=False).decode("ascii")
        words.append(f"{_PREFIX}{encoded}{_SUFFIX}")
        start, limit = end, _LINE_BYTES
    return words


def fold(words: list[str], trailer: str = "") -> str:
    """The words one per line, folded with CRLF and a space; ``trailer`` (an address in
    angle brackets) follows the last word on its line, or on a line of its own."""
    folded = "\r\n ".join(words)
    if not trailer:
        return folded
    last = len(words[-1]) + 1 if len(words) > 1 else len(words[-1]) + NAME_ROOM
    glue = " " if last + 1 + len(trailer) <= MAX_LINE else "\r\n "
    return f"{folded}{glue}{trailer}"
