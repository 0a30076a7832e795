"""Errors a user can act on: one line naming the file, the line and what is wrong.

Every command raises ``UserError`` for bad input; ``agentrft.cli.main`` prints its message on one
line and exits non-zero, so a user never sees a traceback for a mistake in their own files.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a file, a flag, a config field). The message is the whole story."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def where(path: object, line: int | None = None, field: str | None = None) -> str:
    """Format a location as ``file:line: field`` for error messages."""
    loc = str(path)
    if line is not None:
        loc += f":{line}"
    if field:
        loc += f": {field}"
    return loc
