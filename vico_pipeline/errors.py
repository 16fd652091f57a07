"""The errors a user can fix: the CLI prints them as one line and exits 2 (contract.md).

A leaf: it imports nothing of the project, so every module can raise these without
importing the CLI or each other. Each subclass names where the mistake was made.
"""
from __future__ import annotations

import importlib
from typing import Any


class UserError(Exception):
    """A mistake a user can fix (a path that is not a version, a bad option, ...)."""


class RunError(UserError):
    """The run as a whole cannot go on (one line for the user)."""


class ConfigError(UserError):
    """A user's mistake in a config file or a --set override (one line)."""


class ManifestError(UserError):
    """The manifest as a whole cannot be used (missing, unreadable, empty)."""


class ModelUserError(UserError):
    """A user's mistake (missing shards, missing checkpoint, bad path): the CLI prints it as one line."""


class MissingPackage(UserError):
    """An optional package is not installed (raised where it is first needed, e.g. a stage's construction)."""


def require(module: str, extra: str) -> Any:
    """Import `module` or fail with the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackage(
            f"'{module}' is not installed; install it with: pip install 'vico[{extra}]'") from None
