"""Files that may hold personal data or secrets, created readable by their owner alone.

Everything mailmag writes to disk goes through here: the SQLite store (SQLite creates its
``-wal``, ``-shm`` and ``-journal`` files with the database file's mode, so creating that
file 0600 covers them), the lock files beside it, the generated secret, captured mail,
backups and every export. Each is created with mode 0600 (directories 0700) by ``open(2)``
itself, not chmod-ed afterwards, so there is no moment in which another local user could
open it; and no process-wide umask is changed, which every thread of the process would
share while it was. A file that exists already keeps the mode it has: mailmag neither
loosens nor tightens what an operator set (docs/operations.md says how to tighten files
that an older mailmag created 0644).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

PRIVATE_FILE = 0o600
PRIVATE_DIRECTORY = 0o700
PRIVATE_UMASK = 0o077  # for a child process that creates files itself (pg_dump)


def private_opener(path: str, flags: int) -> int:
    """An ``opener`` for ``open()``: a file that the call creates is 0600."""
    return os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE)


@overload
def open_private(path: Path, mode: Literal["w", "a", "x"] = "w", **kwargs: Any) -> TextIO: ...
@overload
def open_private(path: Path, mode: Literal["wb", "ab", "xb"], **kwargs: Any) -> BinaryIO: ...
def open_private(path: Path, mode: str = "w", **kwargs: Any) -> IO[Any]:
    """``open(path, mode)``, creating the file 0600 if it does not exist."""
    return open(path, mode, opener=private_opener, **kwargs)


def create_private(path: Path) -> None:
    """Create ``path`` empty and 0600 unless it exists, for a library that opens it next
    (SQLite treats an empty file as an empty database)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE))


def private_directory(path: Path) -> None:
    """Create ``path`` (and missing parents) 0700 unless it exists."""
    path.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)


def write_private(path: Path, content: str | bytes) -> None:
    """Replace ``path`` with ``content``, all at once: written to a new 0600 file beside it,
    flushed to disk, then renamed over it (a reader never sees half a file)."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    with open(partial, "xb", opener=private_opener) as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
