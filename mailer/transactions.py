"""How work that writes asks for the database's write lock up front.

On SQLite a transaction that reads first and writes later fails with "database is locked"
when another writer committed in between; ``for_writing(engine)`` marks an engine so that
its transactions begin with ``BEGIN IMMEDIATE`` (the engine factory in ``subscriptions.db``
reads the mark). On PostgreSQL the mark changes nothing.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

BEGIN_OPTION = "mailmag_sqlite_begin"


def for_writing(engine: Engine) -> Engine:
    """The same engine, for work that writes: on SQLite it takes the write lock at BEGIN."""
    return engine.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
