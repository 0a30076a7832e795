"""``agentrft prior-check CONFIG``: step 1, is there signal for RFT in the base model?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..errors import UserError

_out = Console(highlight=False, soft_wrap=True)


def prior_check_command(
    config: Path = typer.Argument(..., help="The training config (YAML): base_model, val_path, tools, grader, sampling."),
    n: int = typer.Option(50, "--n", min=1, help="Rows to check (the first N of --data)."),
    data: Path = typer.Option(None, "--data", help="Rows to check (JSONL of Row); default the config's val_path. "
                              "Pass the training rows with --write-filtered to train on the signal band."),
    rollouts: int = typer.Option(5, "--rollouts", min=1, help="Rollouts per row."),
    out: Path = typer.Option(None, "--out", help="Per-row results (JSONL of PriorResult); default <output_dir>/prior.jsonl."),
    write_filtered: Path = typer.Option(None, "--write-filtered", help="Write the rows in the signal band here (JSONL of Row)."),
    model: str = typer.Option(None, "--model", help="Model folder, hub id or http(s) endpoint; default the config's base_model."),
    served_model: str = typer.Option(None, "--served-model", help="Model name at the endpoint; default the first it lists."),
    threshold: float = typer.Option(1.0, "--threshold", min=0.0, max=1.0, help="Reward at which a rollout counts as a success."),
    traces: Path = typer.Option(None, "--traces", help="Also write every trajectory here (JSONL of Trajectory)."),
    engine: str = typer.Option("local", "--engine", help="local (transformers) or vllm (token-in / token-out "
                               "through a vLLM server)."),
    vllm_url: str = typer.Option(None, "--vllm-url", help="With --engine vllm: a running server of the model "
                                 "(default: start one from .venv-vllm)."),
) -> None:
    """Step 1: run the base model N times per row through the tools; bucket rows never/sometimes/always."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..files import refuse_overwrite
    from ..graders import default_grader, load_grader
    from ..jsonl import read_models, write_models
    from ..prior import prior_check
    from ..schema import Row
    from ..tools.client import ToolServerUnavailable
    from ..train.config import load_config
    from .policy import open_policy

    cfg = load_config(config)
    if data is None and cfg.val_path is None:
        raise UserError(f"{config}: val_path is null; pass --data with the rows to check")
    source = data if data is not None else cfg.val_path
    for written, flag in ((out, "--out"), (traces, "--traces"), (write_filtered, "--write-filtered")):
        if written is not None:
            refuse_overwrite(written, source, flag=flag)
    rows = read_models(source, Row)[:n]
    if not rows:
        raise UserError(f"{source}: no rows")
    grader = load_grader(cfg.grader) if cfg.grader else default_grader()
    out = out or cfg.output_dir / "prior.jsonl"
    with open_policy(model or cfg.base_model, served_model, engine, vllm_url) as policy:
        settings = rollout_settings(cfg, policy)
        _out.print(
            f"prior check: {len(rows)} rows × {rollouts} rollouts of {policy.name} "
            f"(temperature {settings.temperature:g}; success = reward ≥ {threshold:g} from {grader.name})",
            markup=False,
        )
        columns = (TextColumn("rollouts"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=_out, transient=True) as bar:
            task = bar.add_task("rollouts", total=len(rows) * rollouts)
            try:
                summary, trajectories = prior_check(
                    rows, policy, grader, cfg.tools_url, cfg.tools_token(), settings, rollouts, threshold,
                    progress=lambda k: bar.advance(task, k),
                )
            except ToolServerUnavailable as exc:
                raise UserError(f"{exc}; is 'agentrft tools serve' running at {cfg.tools_url}?") from None
    _out.print(repr(summary.counts), markup=False)
    _out.print(summary.band_line(), markup=False)
    _out.print(f"verdict: {summary.verdict} — {summary.advice()}", markup=False)
    if summary.ungraded:
        _out.print(f"warning: {summary.ungraded} rollouts got no grade (the grader failed) and are left out", markup=False)
    write_models(out, summary.results)
    _out.print(f"wrote {out} ({len(summary.results)} rows)", markup=False)
    if traces is not None:
        write_models(traces, trajectories)
        _out.print(f"wrote {traces} ({len(trajectories)} trajectories)", markup=False)
    if write_filtered is not None:
        keep = {r.id for r in summary.results if r.bucket == "sometimes"}
        kept = [row for row in rows if row.id in keep]
        write_models(write_filtered, kept)
        _out.print(f"wrote {write_filtered} ({len(kept)} rows in the signal band)", markup=False)


def rollout_settings(cfg: Any, policy: Any) -> Any:
    """The config's sampling and budgets; a local model's token budget is capped at its context length."""
    from .policy import LocalPolicy

    settings = cfg.rollout_settings(seed=cfg.seed)
    if isinstance(policy, LocalPolicy):
        # A trajectory longer than the model's position table is outside anything it can attend to.
        limit = getattr(policy.model.config, "max_position_embeddings", None)
        if limit and settings.max_trajectory_tokens > limit:
            settings = settings.model_copy(update={"max_trajectory_tokens": int(limit)})
    return settings


def register(app: typer.Typer) -> None:
    """Add this step's commands to the main app."""
    app.command("prior-check")(prior_check_command)
