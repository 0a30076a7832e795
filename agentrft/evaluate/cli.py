"""Commands of steps 7 and 8: ``eval``, ``compare``, ``inspect`` and ``report``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UserError
from ..graders import load_grader
from .compare import BUCKETS, compare_runs, format_comparison
from .inspect import format_regrade, format_regressions
from .inspect import regrade as regrade_runs
from .records import load_eval, load_rows
from .report import write_report
from .run import EvalOptions, evaluate


def _split_keys(by: str) -> list[str]:
    keys = [k.strip() for k in by.split(",") if k.strip()]
    if not keys:
        raise UserError("--by: give one or more metadata keys separated by commas, e.g. task_type,difficulty")
    return keys


def eval_command(
    model: Annotated[str, typer.Option(help="A local model directory, or an OpenAI-compatible URL (http://host:8000/v1).")],
    data: Annotated[Path, typer.Option(help="Dataset JSONL to evaluate (e.g. research_val.jsonl).")],
    out: Annotated[Path, typer.Option(help="EvalRecord JSONL to write; rows already there are skipped.")],
    samples: Annotated[int, typer.Option(min=1, help="Samples per row; 1 is greedy, more sample at --temperature.")] = 1,
    tools_url: Annotated[Optional[str], typer.Option(help="Base URL of the tool server (default: the config's, else http://127.0.0.1:8000).")] = None,
    token_file: Annotated[Optional[Path], typer.Option(help="File holding the tool server's bearer token (default: $TOOL_BEARER).")] = None,
    grader: Annotated[Optional[str], typer.Option(help="Grader JSON/YAML file or built-in name (numeric, tool_use); default numeric.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Training config YAML whose rollout limits to use.")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature when --samples > 1 (default 1.0).")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    served_model: Annotated[Optional[str], typer.Option(help="Model name to request from an endpoint --model.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate only the first N rows.")] = None,
    tool_timeout: Annotated[Optional[float], typer.Option(min=0.001, help="Seconds a tool call may take before the model is told it timed out (default 30).")] = None,
    engine: Annotated[str, typer.Option(help="local (transformers) or vllm (token-in / token-out through a vLLM server).")] = "local",
    vllm_url: Annotated[Optional[str], typer.Option(help="With --engine vllm: a running server of the model (default: start one from .venv-vllm).")] = None,
) -> None:
    """Step 7: run the agent on a dataset and grade every rollout (one EvalRecord per row and sample)."""
    options = EvalOptions(
        model=model, data=data, out=out, samples=samples, tools_url=tools_url, token_file=token_file,
        grader=grader, config=config, temperature=temperature, seed=seed, served_model=served_model,
        limit=limit, tool_timeout=tool_timeout, engine=engine, vllm_url=vllm_url,
    )
    summary = evaluate(options)
    typer.echo(summary.describe())


def compare_command(
    base: Annotated[Path, typer.Argument(help="EvalRecord JSONL of the base model.")],
    tuned: Annotated[Path, typer.Argument(help="EvalRecord JSONL of the tuned model.")],
    by: Annotated[str, typer.Option(help="Metadata keys to slice by, comma-separated.")] = "task_type,difficulty",
    rows: Annotated[Optional[Path], typer.Option(help="Dataset JSONL, to slice by metadata keys beyond task_type/difficulty.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    resamples: Annotated[int, typer.Option(min=100, help="Bootstrap resamples for the interval.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    threshold: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Reward at which a sample counts as a success: regressed rows are then split into "
        "those reaching it less often and those that only lost partial credit.")] = None,
) -> None:
    """Step 7: base vs tuned per row — mean Δreward with a 95% interval, buckets and slices."""
    comparison = compare_runs(
        load_eval(base), load_eval(tuned), by=_split_keys(by),
        rows=load_rows(rows) if rows else None, resamples=resamples, seed=seed, threshold=threshold,
    )
    if as_json:
        typer.echo(json.dumps(comparison.to_dict(), indent=2, ensure_ascii=False))
    else:
        typer.echo(format_comparison(comparison))


def inspect_command(
    base: Annotated[Path, typer.Argument(help="EvalRecord JSONL of the base model.")],
    tuned: Annotated[Path, typer.Argument(help="EvalRecord JSONL of the tuned model.")],
    top: Annotated[int, typer.Option(help="How many regressions to show (0 = all).")] = 5,
    rows: Annotated[Optional[Path], typer.Option(help="Dataset JSONL, for prompts and references.")] = None,
    regrade: Annotated[Optional[str], typer.Option(help="Grade both runs again with this grader (file or built-in name).")] = None,
    bucket: Annotated[str, typer.Option(help="Rows to show: regressed, improved, solved, unsolved or partial.")] = "regressed",
) -> None:
    """Step 8: regressions worst-first with the tuned trace (--bucket for others); --regrade to test a grader fix."""
    if bucket not in BUCKETS:
        raise UserError(f"--bucket {bucket}: expected one of {', '.join(BUCKETS)}")
    base_run, tuned_run = load_eval(base), load_eval(tuned)
    dataset = load_rows(rows) if rows else None
    comparison = compare_runs(base_run, tuned_run)
    typer.echo(format_regressions(comparison, dataset, top=top, bucket=bucket))
    if regrade is not None:
        if dataset is None:
            raise UserError("--regrade needs --rows VAL.jsonl: the grader compares answers with each row's reference")
        result = regrade_runs(base_run, tuned_run, load_grader(regrade), dataset, comparison)
        typer.echo("")
        typer.echo(format_regrade(result))


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (config.yaml, metrics.jsonl, eval/).")],
    base: Annotated[Optional[Path], typer.Option(help="Base EvalRecord JSONL (default RUN_DIR/eval/base.jsonl).")] = None,
    tuned: Annotated[Optional[Path], typer.Option(help="Tuned EvalRecord JSONL (default RUN_DIR/eval/tuned.jsonl).")] = None,
    rows: Annotated[Optional[Path], typer.Option(help="Dataset JSONL, for prompts and references.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the page (default RUN_DIR/report.html).")] = None,
) -> None:
    """Step 8: one self-contained report.html — curves, slices, the comparison, regressions, config."""
    path = write_report(run_dir, base=base, tuned=tuned, rows=rows, out=out)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add this step's commands to the main app."""
    app.command("eval")(eval_command)
    app.command("compare")(compare_command)
    app.command("inspect")(inspect_command)
    app.command("report")(report_command)
