"""Where mailmag's own files are: package resources, found with ``importlib.resources``.

The templates, the Japanese catalog, the example registry and the migrations are package data,
so an installed wheel finds them wherever it is installed, as a checkout does. The repository
keeps ``templates/`` and ``migrations/`` at its top level; setup.py installs them as
``subscriptions.templates`` and ``subscriptions.migrations`` (an editable install maps them
there too). They are used as directories on disk (Jinja2's loaders and Alembic read files by
path), so mailmag does not run from a zip archive: that is refused here, at start-up.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from subscriptions.errors import ConfigurationError


def package_directory(package: str) -> Path:
    """The directory of an installed package of mailmag's, or a one-line reason why not."""
    try:
        root = files(package)
    except ModuleNotFoundError:
        raise ConfigurationError(
            f"{package} is not installed: install mailmag with pip (in a checkout: make install)"
        ) from None
    if not isinstance(root, Path) or not root.is_dir():
        raise ConfigurationError(f"{package} is not a directory on disk ({root})")
    return root


TEMPLATES_DIR = package_directory("subscriptions.templates")
MIGRATIONS_DIR = package_directory("subscriptions.migrations")
LOCALE_DIR = package_directory("subscriptions") / "locale"
EXAMPLE_REGISTRY = package_directory("subscriptions") / "registry.example.toml"
