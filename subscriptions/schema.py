"""The schema as a whole: the metadata of every table, and Alembic driven from code.

``upgrade`` runs the migrations to head (``mailmag migrate``); ``revision_state`` tells
``/readyz`` whether the database is at head. The metadata is imported from both packages
here, the composition root, so Alembic and the drift test see every table.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

import mailer.models
import mailer.ratelimit
import subscriptions.models
from subscriptions.paths import MIGRATIONS_DIR

target_metadata: MetaData = SQLModel.metadata
_ = (mailer.models, mailer.ratelimit, subscriptions.models)  # imported for their tables


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS_DIR.as_posix())
    cfg.set_main_option("path_separator", "os")
    return cfg


@cache
def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


@dataclass(frozen=True, slots=True)
class RevisionState:
    current: str | None
    head: str | None

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def revision_state(engine: Engine) -> RevisionState:
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return RevisionState(current=current, head=head_revision())
