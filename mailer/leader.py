"""One scheduler at a time: a leader chosen by a lock the database or the host provides.

On PostgreSQL the leader holds a session-level advisory lock on a connection of its own, so
two ``mailmag serve`` processes against one database never run the scheduler together, and
the lock goes away with the connection when the leader dies. A database restart takes it
away too, while the leader lives: ``still_held`` asks the server, and the scheduler asks
before every sweep. On SQLite (one host by nature) an exclusive ``flock`` on a file beside
the database does the same; it is lost only if that file is removed or replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import IO

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from mailer.private_files import open_private

ADVISORY_KEY = 0x6D61696C6D6167  # "mailmag"
# pg_locks shows a bigint advisory key as its high and low 32 bits (objsubid 1).
_HELD = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND classid = :high AND objid = :low AND objsubid = 1"
).bindparams(high=ADVISORY_KEY >> 32, low=ADVISORY_KEY & 0xFFFFFFFF)


class LeaderLock:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._connection: Connection | None = None
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._guard = threading.Lock()  # the sweep and the leading thread both ask

    @property
    def held(self) -> bool:
        return self._connection is not None or self._file is not None

    def try_acquire(self) -> bool:
        with self._guard:
            if self.held:
                return True
            if self.engine.dialect.name == "postgresql":
                connection = self.engine.connect()
                got = connection.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY}
                ).scalar()
                connection.commit()
                if got:
                    self._connection = connection
                    return True
                connection.close()
                return False
            path = Path(f"{self.engine.url.database or 'mailmag.db'}.leader")
            handle = open_private(path, "ab")  # held while leading
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                return False
            self._file, self._path = handle, path
            return True

    def still_held(self) -> bool:
        """Whether the lock is still ours, as the server (or the file system) sees it now;
        False also when the server cannot be asked."""
        with self._guard:
            if self._connection is not None:
                try:
                    count = self._connection.execute(_HELD).scalar()
                    self._connection.commit()
                except SQLAlchemyError:
                    return False
                return bool(count)
            if self._file is not None and self._path is not None:
                try:
                    return os.fstat(self._file.fileno()).st_ino == self._path.stat().st_ino
                except OSError:
                    return False
            return False

    def release(self) -> None:
        with self._guard:
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    self._connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY}
                    )
                    self._connection.commit()
                with contextlib.suppress(Exception):
                    self._connection.close()
                self._connection = None
            if self._file is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(self._file, fcntl.LOCK_UN)
                self._file.close()
                self._file = None
                self._path = None
