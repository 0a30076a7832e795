"""Commands of agentrft.train: ``agentrft config check FILE`` (step 5) and ``agentrft train FILE`` (step 6)."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from ..config import check_config, load_config
from ..errors import UserError
from .launch import relaunch

config_app = typer.Typer(help="Step 5: check a training config.", no_args_is_help=True)

_out = Console(highlight=False, soft_wrap=True)

ABORT_EXIT_CODE = 3


@config_app.command("check")
def config_check(
    file: Path = typer.Argument(..., help="The training config (YAML)."),
    files: bool = typer.Option(True, "--files/--no-files", help="Also open train/val files and the grader."),
) -> None:
    """Validate a config: errors name the field; warnings explain settings that usually hurt RFT."""
    cfg = load_config(file)
    warnings = check_config(cfg, check_files=files)
    for warning in warnings:
        _out.print(f"warning: {warning}", markup=False)
    _out.print(
        f"{file}: ok — {cfg.algorithm}, group_size {cfg.group_size}, kl_coef {cfg.kl_coef:g}, "
        f"learning_rate {cfg.learning_rate:g}, epochs {cfg.epochs:g}, "
        f"{cfg.trajectories_per_step} trajectories per step ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})",
        markup=False,
    )


def train_command(
    file: Path = typer.Argument(..., help="The training config (YAML), e.g. examples/tiny_config.yaml."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint."),
    launcher: str = typer.Option("none", "--launcher", help="'accelerate' to run under accelerate launch."),
    num_processes: int = typer.Option(1, "--num-processes", help="Processes (GPUs) for --launcher accelerate."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
) -> None:
    """Step 6: GRPO on the config's base model with agentrft's agent loop, live metrics and abort rules."""
    cfg = load_config(file)
    if launcher not in ("none", "accelerate"):
        raise UserError(f"--launcher: expected 'none' or 'accelerate', got {launcher!r}")
    if launcher == "accelerate":
        raise typer.Exit(relaunch(file, num_processes, resume))
    if max_steps is not None:
        cfg = cfg.model_copy(update={"max_steps": max_steps})
    # Under a distributed launcher every process runs this command; only the first one talks.
    console = _out if int(os.environ.get("RANK", "0")) == 0 else Console(quiet=True)
    for warning in check_config(cfg):
        console.print(f"warning: {warning}", markup=False)

    from .trainer import train  # torch, transformers and TRL: not for --help

    result = train(cfg, resume=resume, console=console)
    best = (
        f"best checkpoint: {result.best_dir} (step {result.best_step}, val_reward {result.best_val_reward:.3f})"
        if result.best_dir is not None
        else "no val_reward measured, no best checkpoint"
    )
    print_slice_trend(console, result.run_dir)
    if result.aborted:
        console.print(f"aborted at step {result.abort_step}: {result.aborted}; {best}", markup=False)
        raise typer.Exit(ABORT_EXIT_CODE)
    last = f"last: {result.last_checkpoint}" if result.last_checkpoint else "no checkpoint"
    console.print(f"done: {result.steps} steps in {result.run_dir}; {best}; {last}", markup=False)


def print_slice_trend(console: Console, run_dir: Path) -> None:
    """Where the training reward moved: each slice's first steps against its last ones."""
    from .metrics import METRICS_FILE, read_metrics, slice_trend

    trend = slice_trend(read_metrics(run_dir / METRICS_FILE))
    if trend:
        console.print("train reward by slice, its first steps → its last (steps it was trained in):", markup=False)
        for name, (first, last, steps) in trend.items():
            console.print(f"  {name:<28} {first:.2f} → {last:.2f}  ({steps})", markup=False)


def register(app: typer.Typer) -> None:
    """Add this step's commands to the main app."""
    app.add_typer(config_app, name="config")
    app.command("train")(train_command)
