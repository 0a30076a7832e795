"""The running example's commands, registered by ``agentrft.cli``: ``agentrft data synth``, ``agentrft model
tiny``, ``agentrft model warm-start`` and ``agentrft demo``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..data.cli import data_app
from ..data.stats import strata_table
from . import demo
from .model import cli as model_cli
from .synth import synth

console = Console(highlight=False, emoji=False, soft_wrap=True)


def synth_command(
    out: Path = typer.Option(..., "--out", help="Directory for corpus/ and research_{train,val}.jsonl."),
    companies: int = typer.Option(8, help="How many fictional companies (2-16); about 50 rows each."),
    seed: int = typer.Option(0, help="Same seed, same bytes."),
) -> None:
    """Generate the running example: a corpus of company filings and its question rows, split."""
    summary = synth(out, companies=companies, seed=seed)
    console.print(f"Wrote {summary.documents} documents under {out / 'corpus'}")
    console.print(f"Wrote {summary.train_rows} rows to {summary.train_path}")
    console.print(f"Wrote {summary.val_rows} rows to {summary.val_path}")
    console.print(strata_table(summary.strata))


def register(app: typer.Typer) -> None:
    """Add the running example's commands to the main app (``data synth`` into step 2's group)."""
    data_app.command("synth")(synth_command)
    model_cli.register(app)
    demo.register(app)
