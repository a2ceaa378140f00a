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


class Audience(Protocol):
    def expand(self, audience: IssueAudience) -> int:
        """Queue one delivery per eligible recipient (idempotent); return how many are new."""
        ...

    def recipients(self, audience: IssueAudience, subscriber_ids: Iterable[int]) -> list[Recipient]:
        """The recipients among ``subscriber_ids`` who may still be mailed, right now."""
        ...

    def withdrawn_since(self, cursor: int) -> tuple[int, set[tuple[int, int]]]:
        """(subscriber id, magazine id) pairs withdrawn after ``cursor``, and the new cursor;
        a negative cursor asks only for the current position."""
        ...
