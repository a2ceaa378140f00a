"""Moving the application's clock in a test.

Every module of mailmag reads "now" through ``mailer.clock.utcnow`` (imported by name), so
``moved_clock`` replaces that name in each loaded module of ``mailer`` and ``subscriptions``
with a clock that runs as the real one plus an offset the test moves forward.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta

import pytest

from mailer import clock


class MovedClock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return clock.utcnow() + self.offset

    def move(self, by: timedelta) -> None:
        self.offset += by


def moved_clock(monkeypatch: pytest.MonkeyPatch) -> MovedClock:
    """A clock for the whole application, undone with ``monkeypatch`` at the test's end."""
    moved = MovedClock()
    real = clock.utcnow
    for name, module in list(sys.modules.items()):
        ours = name.partition(".")[0] in {"mailer", "subscriptions"}
        if ours and name != "mailer.clock" and getattr(module, "utcnow", None) is real:
            monkeypatch.setattr(module, "utcnow", moved.now)
    return moved
