"""``agentrft demo``: the nine steps end to end on the embedded default model.

Runs the steps that exist and names the ones that do not yet — it never pretends a step ran.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(highlight=False)


def run_demo(out: Path, seed: int) -> None:
    """Run every available step into ``out``; list the missing ones."""
    console.print(f"[bold]agentrft demo[/] → {out}")
    console.print("No steps are wired into the demo yet.")


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Path = typer.Option(Path("demo-out"), help="Directory for the corpus, models, runs and report."),
        seed: int = typer.Option(0, help="Seed for the corpus, the model and training."),
    ) -> None:
        """Run the nine steps end to end on the embedded tiny model and write a report."""
        run_demo(out, seed)
