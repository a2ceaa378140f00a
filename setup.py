"""Which packages the distribution holds; everything else about it is in pyproject.toml.

Every package under ``subscriptions/`` and ``mailer/`` is found, not listed, so a new one is
never left out of the wheel. The repository keeps ``templates/`` and ``migrations/`` at its
top level; the wheel installs them inside the ``subscriptions`` package, as
``subscriptions.templates`` and ``subscriptions.migrations``, where ``importlib.resources``
finds them in a checkout (the editable install maps them) and in site-packages alike.
pyproject.toml cannot say this: its automatic discovery (``packages.find``) names packages
after their directories and takes no ``package-dir`` mapping to another name, and an explicit
``packages`` list is what went stale before.
"""

from setuptools import find_namespace_packages, find_packages, setup

MAPPED = {"subscriptions.templates": "templates", "subscriptions.migrations": "migrations"}


def packages() -> list[str]:
    found = find_packages(include=["subscriptions", "subscriptions.*", "mailer", "mailer.*"])
    # Folders of data (templates, the catalogs) hold no Python: each is listed, as a namespace
    # package, so that setuptools ships its files as its parent's package data without a warning.
    catalogs = find_namespace_packages("subscriptions", include=["locale", "locale.*"])
    found += [f"subscriptions.{folder}" for folder in catalogs]
    for name, directory in MAPPED.items():
        inner = find_namespace_packages(directory, exclude=["*__pycache__*"])
        found += [name, *(f"{name}.{folder}" for folder in inner)]
    return found


setup(packages=packages(), package_dir=MAPPED)
