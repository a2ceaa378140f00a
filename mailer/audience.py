"""What the sending engine needs from the opt-in store, declared here and implemented there.

The engine never reads subscriber tables. It asks an ``Audience`` to expand an issue into
delivery rows, to hand over the recipients of a batch (already re-checked and cut down to the
fields the issue's template uses), and to say who withdrew since a cursor. So personal data
crosses into the engine only through ``Recipient``, and only as much as the issue needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.engine import Connection


@dataclass(frozen=True, slots=True)
class Recipient:
    """One person as the sending engine may see them for one issue."""

    subscriber_id: int
    address: str
    fields: Mapping[str, str]  # only the merge fields the issue uses and its route may receive


@dataclass(frozen=True, slots=True)
class IssueAudience:
    """Which issue is being sent: the magazine and the merge fields its templates use."""

    issue_id: int
    magazine_id: int
    fields: frozenset[str]
    route: str | None = None  # the processor receiving the recipients, if any


@dataclass(frozen=True, slots=True)
class Expansion:
    """What one chunk of an expansion queued, and where the next chunk starts."""

    queued: int
    cursor: int | None  # the highest subscriber id this chunk covered; None: that was the last


class Audience(Protocol):
    def expand(
        self, conn: Connection, audience: IssueAudience, after: int, limit: int
    ) -> Expansion:
        """On the caller's transaction, queue one delivery per eligible recipient among the
        next ``limit`` subscribers of the magazine (in subscriber id order) above ``after``,
        skipping any already queued. The chunk that reaches the end also records the issue's
        hand-offs to processors."""
        ...

    def recipients(self, audience: IssueAudience, subscriber_ids: Iterable[int]) -> list[Recipient]:
        """The recipients among ``subscriber_ids`` who may still be mailed, right now."""
        ...

    def withdrawn_since(self, cursor: int) -> tuple[int, set[tuple[int, int]]]:
        """(subscriber id, magazine id) pairs withdrawn after ``cursor``, and the new cursor;
        a negative cursor asks only for the current position."""
        ...
