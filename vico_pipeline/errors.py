"""The errors a user can fix: the CLI prints them as one line and exits 2 (contract.md).

A module below everything else, so any module can raise them without importing the CLI.
"""


class UserError(Exception):
    """A mistake a user can fix (a path that is not a version, a bad option, ...)."""


class RunError(UserError):
    """The run as a whole cannot go on (one line for the user)."""
