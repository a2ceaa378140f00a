"""Where mailmag's own files live on disk (templates, catalogs), found from the source tree."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PROJECT_ROOT / "templates"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
