"""The running example's model commands: ``agentrft model tiny`` (build) and ``agentrft model warm-start`` (its warm start).

Both load torch, transformers and TRL, so their modules are imported inside the commands."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from ...errors import UserError
from ...jsonl import read_models
from ...schema import Row
from ...tools.client import ToolServerUnavailable, read_token
from .measure import measure_strategies, strategy_line

if TYPE_CHECKING:
    from .warm_start import WarmStartResult

console = Console(highlight=False, emoji=False, soft_wrap=True)

model_app = typer.Typer(
    help="The embedded default model: build a tiny Qwen2 model with its own tokenizer.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@model_app.command("tiny")
def tiny_command(
    corpus: Path = typer.Option(..., "--corpus", help="Corpus directory the tokenizer is trained on."),
    out: Path = typer.Option(..., "--out", help="Where the model and tokenizer are saved."),
    seed: int = typer.Option(0, help="Seed of the random initialisation."),
    induction_steps: int = typer.Option(600, min=0, help="Steps of induction pretraining (0 with --lookup-steps 0: keep the weights random)."),
    lookup_steps: int = typer.Option(300, min=0, help="Steps of look-up pretraining on synthetic highlight tables."),
) -> None:
    """Build the tiny model: corpus-trained tokenizer, Qwen2.5 chat template, ~1M-parameter Qwen2."""
    from transformers import AutoConfig, AutoTokenizer

    from .tiny import build_tiny_model  # torch

    start = time.perf_counter()
    console.print(f"Pretraining: {induction_steps} induction + {lookup_steps} look-up steps (a few minutes on 2 cores)")
    path = build_tiny_model(corpus, out, seed=seed, induction_steps=induction_steps, lookup_steps=lookup_steps,
                            log=lambda line: console.print(line, highlight=False))
    config, tokenizer = AutoConfig.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    info = json.loads((path / "agentrft_model.json").read_text())
    console.print(f"Built {config.model_type} model with {info['parameters']:,} parameters, vocabulary {len(tokenizer):,}")
    for stage, losses in info["pretrain_losses"].items():
        if losses:
            console.print(f"{stage.capitalize()} pretraining: loss {losses[0]:.2f} → {losses[-1]:.2f}")
    console.print(f"Saved to {path} in {time.perf_counter() - start:.1f}s")


def warm_start_command(
    model: Path = typer.Option(..., "--model", help="Model directory to warm-start (e.g. from 'agentrft model tiny')."),
    rows: Path = typer.Option(..., "--rows", help="Training rows (JSONL) the demonstrations are made on."),
    tools_url: str = typer.Option(..., "--tools-url", help="Base URL of the running tool server."),
    out: Path = typer.Option(..., "--out", help="Where the warm-started model is saved."),
    token_file: Path | None = typer.Option(None, "--token-file", help="Bearer token file (default: $TOOL_BEARER)."),
    epochs: int | None = typer.Option(None, min=1, help="Passes over the demonstrations (fresh drills each pass); default 9."),
    learning_rate: float | None = typer.Option(None, "--lr", help="Peak learning rate; default 1.5e-3."),
    seed: int = typer.Option(0, help="Seed of the strategy mixture, drills and training."),
    measure: int = typer.Option(0, min=0, help="Also sample 4 rollouts on each of the first N rows before and "
                                               "after, and report their strategy shares."),
    max_seconds: float | None = typer.Option(None, "--max-seconds", min=1.0,
                                             help="Stop training after this much wall time (a baseline's budget)."),
) -> None:
    """The tiny model's warm start: SFT on scripted filings demonstrations of mixed quality, with drills."""
    from .warm_start import WarmStartSettings, warm_start  # torch, TRL

    if not (model / "config.json").is_file():
        raise UserError(f"{model}: no config.json; pass a model directory (build one with 'agentrft model tiny')")
    row_list = read_models(rows, Row)
    if not row_list:
        raise UserError(f"{rows}: no rows to demonstrate on")
    token = read_token(token_file)
    chosen = {key: value for key, value in (("epochs", epochs), ("learning_rate", learning_rate)) if value is not None}
    settings = WarmStartSettings(seed=seed, **chosen)
    console.print(f"Demonstrating on {len(row_list)} rows against {tools_url}, then {settings.epochs} epochs of SFT ...")
    try:
        result = warm_start(model, row_list, tools_url, out, token=token, settings=settings, max_seconds=max_seconds)
        _report(result, out)
        if measure:
            _measure_strategies(result, model, out, row_list[:measure], tools_url, token, seed)
    except ToolServerUnavailable as exc:
        raise UserError(f"{exc}; is 'agentrft tools serve' running at {tools_url}?") from None


def _report(result: WarmStartResult, out: Path) -> None:
    shares = ", ".join(
        f"{name} {n} ({result.demonstrations_correct.get(name, 0)} correct)"
        for name, n in sorted(result.strategy_counts.items())
    )
    console.print(f"Demonstrations: {result.demonstrations} — {shares}")
    console.print(f"Trained on {result.examples} examples ({result.drills} reading drills) in {result.steps} steps, "
                  f"{result.train_seconds:.0f}s; final loss {result.final_loss:.3f}")
    console.print(f"Saved the warm-started model to {out}")


def _measure_strategies(result: WarmStartResult, before: Path, after: Path, rows: list[Row], tools_url: str,
                        token: str | None, seed: int) -> None:
    """Strategy shares of sampled rollouts before and after the warm start, printed and kept in warm_start.json."""
    samples, start = 4, time.perf_counter()
    shares = [measure_strategies(path, rows, tools_url, token, samples, seed) for path in (before, after)]
    record = after / "warm_start.json"
    result.strategies_before, result.strategies_after = shares
    result.measured_rollouts = len(rows) * samples
    record.write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    console.print(f"Strategies in {len(rows) * samples} sampled rollouts ({len(rows)} rows × {samples}), "
                  f"measured in {time.perf_counter() - start:.0f}s:")
    console.print(strategy_line(*shares))


def register(app: typer.Typer) -> None:
    """Add this step's commands to the main app."""
    app.add_typer(model_app, name="model")
    model_app.command("warm-start")(warm_start_command)
