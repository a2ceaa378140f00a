"""What a directory would show another local user: files and folders not private to their
owner."""

from __future__ import annotations

import stat
from pathlib import Path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def not_private(directory: Path, besides: frozenset[str] = frozenset()) -> dict[str, str]:
    """Every file below ``directory`` that is not 0600 and every folder that others may
    enter, with its mode; ``besides`` names (relative paths) the test wrote itself."""
    found = {}
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if name in besides:
            continue
        if (path.is_dir() and mode(path) & 0o077) or (path.is_file() and mode(path) != 0o600):
            found[name] = oct(mode(path))
    return found
