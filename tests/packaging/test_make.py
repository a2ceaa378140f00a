"""The Makefile's two front doors: ``make run`` installs what the service needs and nothing
for the tests; ``make test`` installs the test tools too."""

from __future__ import annotations

import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


def installs(target: str) -> list[str]:
    """The pip commands ``make <target>`` would run on a fresh clone (``-B``: as if nothing
    were installed yet; ``-n``: printed, not run)."""
    planned = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", target],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [line for line in planned if "pip install" in line]


def test_make_run_installs_the_service_without_the_test_tools() -> None:
    [pip] = installs("run")
    assert pip.endswith("-e .")
    assert "[dev]" not in pip
    assert "-c requirements.lock" in pip


def test_make_test_installs_the_test_tools() -> None:
    assert any(line.endswith("-e '.[dev]'") for line in installs("test"))
