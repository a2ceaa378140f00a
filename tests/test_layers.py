"""The rule between the two packages, checked on the source: ``mailer`` never imports
``subscriptions`` (../shared/DESIGN.md). Personal data reaches the sending engine only
through the Protocols the mailer declares; an import the other way would let it reach in.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """The top-level packages ``path`` imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_the_mailer_never_imports_the_opt_in_store() -> None:
    modules = sorted((ROOT / "mailer").rglob("*.py"))
    assert len(modules) > 10
    offenders = [str(m.relative_to(ROOT)) for m in modules if "subscriptions" in _imports(m)]
    assert offenders == []
