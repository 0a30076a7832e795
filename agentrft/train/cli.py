"""Commands of agentrft.train: ``agentrft config check FILE`` (step 5) and ``agentrft train FILE`` (step 6)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

config_app = typer.Typer(help="Step 5: check a training config.", no_args_is_help=True)

_out = Console(highlight=False, soft_wrap=True)


@config_app.command("check")
def config_check(
    file: Path = typer.Argument(..., help="The training config (YAML)."),
    files: bool = typer.Option(True, "--files/--no-files", help="Also open train/val files and the grader."),
) -> None:
    """Validate a config: errors name the field; warnings explain settings that usually hurt RFT."""
    from .config import check_config, load_config

    cfg = load_config(file)
    warnings = check_config(cfg, check_files=files)
    for warning in warnings:
        _out.print(f"warning: {warning}", markup=False)
    _out.print(
        f"{file}: ok — {cfg.algorithm}, group_size {cfg.group_size}, kl_coef {cfg.kl_coef:g}, "
        f"learning_rate {cfg.learning_rate:g}, epochs {cfg.epochs:g}, "
        f"{cfg.trajectories_per_step} trajectories per step"
        f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    """Add this step's commands to the main app."""
    app.add_typer(config_app, name="config")
