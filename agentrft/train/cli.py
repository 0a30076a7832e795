"""Commands of agentrft.train (registered on the main app by agentrft.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this step's commands to the main app."""
