"""The reliability suite: each test measures against a bar and records its figures.

Quick sizes run in CI (inside ``make test``); ``make soak`` (``MAILMAG_SOAK=1``) runs the full
sizes. At the end of a run that measured anything, the figures are printed as a table and
written to ``bench/results/reliability.json`` (``reliability-soak.json`` for a soak), and a
missed bar fails its test.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from mailer.clock import utcnow

SOAK = os.environ.get("MAILMAG_SOAK") == "1"
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


@dataclass(frozen=True)
class Figure:
    test: str
    measure: str
    value: float | int | str
    bar: str
    met: bool


FIGURES: list[Figure] = []


def size(quick: int, soak: int) -> int:
    return soak if SOAK else quick


def record(test: str, measure: str, value: float | int | str, bar: str, met: bool) -> None:
    """Keep one figure for the table; the test asserts ``met`` itself."""
    FIGURES.append(Figure(test, measure, value, bar, met))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section(f"reliability figures ({'soak' if SOAK else 'quick'})")
    for f in FIGURES:
        mark = "ok  " if f.met else "MISS"
        terminalreporter.write_line(f"{mark} {f.test}: {f.measure} = {f.value}  (bar: {f.bar})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("reliability-soak.json" if SOAK else "reliability.json")
    # A run of some of the tests replaces their figures and keeps the others'.
    measured = {f.test for f in FIGURES}
    kept = []
    if path.exists():
        kept = [f for f in json.loads(path.read_text())["figures"] if f["test"] not in measured]
    figures = kept + [asdict(f) for f in FIGURES]
    path.write_text(
        json.dumps(
            {
                "mode": "soak" if SOAK else "quick",
                "date": utcnow().isoformat(timespec="seconds"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "figures": figures,
                "all_met": all(f["met"] for f in figures),
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
