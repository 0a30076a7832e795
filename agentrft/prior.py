"""Step 1, the prior check: can the base model sometimes succeed? If never, RFT has nothing to climb.

Each row is rolled out N times (5 by default) through the same agent loop and tools that training
uses, at the training temperature, and graded with the training grader. A rollout *succeeds* when its
reward reaches ``success_threshold`` (1.0 by default: the numeric grader's full credit, so its 0.5
for a rounded figure is not a success). Rows are bucketed by success rate:

- ``never`` (0 successes): no signal, every rollout in the group gets the same reward;
- ``sometimes`` (0 < rate < 1): the signal band, where GRPO's group-relative advantage is non-zero;
- ``always`` (every rollout succeeds): nothing left to learn.

The tutorial's rule of thumb: at least 15–30% of rows in the signal band. Below it, the verdict is
"fix the prior first" (mostly never: warm-start, better prompt or tools) or "already solved" (mostly
always: harder rows). Rollouts a grader could not grade (reward None) are left out of the rates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .agent.loop import rows_per_call, run_rollouts, run_sync
from .agent.settings import fit_context
from .config import load_config
from .errors import UserError
from .files import refuse_overwrite
from .graders import default_grader, grade_all, load_grader
from .jsonl import read_models, write_models
from .schema import Grade, PriorResult, Row, Trajectory
from .tools.client import ToolClient, ToolServerUnavailable

Bucket = Literal["never", "sometimes", "always"]
Verdict = Literal["go", "fix the prior first", "already solved"]

SIGNAL_BAND_RULE = (0.15, 0.30)
"""The tutorial's rule of thumb for the share of rows in the signal band."""
SLICE_MIN_SHARE = 0.1
"""``--filter slices`` keeps a slice when at least this share of its rows is in the signal band."""
Filter = Literal["band", "slices"]


def band_by_slice(rows: Sequence[Row], results: Sequence[PriorResult]) -> dict[str, tuple[int, int]]:
    """Per slice, (rows in the signal band, rows checked); largest slice first, then by name."""
    bucket = {r.id: r.bucket for r in results}
    counts: dict[str, list[int]] = {}
    for row in rows:
        if row.id in bucket:
            tally = counts.setdefault(row.slice, [0, 0])
            tally[0] += bucket[row.id] == "sometimes"
            tally[1] += 1
    return {name: (k, n) for name, (k, n) in sorted(counts.items(), key=lambda item: (-item[1][1], item[0]))}


def slices_line(by_slice: dict[str, tuple[int, int]]) -> str:
    """``signal band by slice: numerical_qa/easy 49/96, numerical_qa/medium 9/64, computation/medium 0/48``"""
    return "signal band by slice: " + ", ".join(f"{name} {k}/{n}" for name, (k, n) in by_slice.items())


def select_rows(rows: Sequence[Row], results: Sequence[PriorResult], how: Filter,
                min_share: float = SLICE_MIN_SHARE) -> list[Row]:
    """The rows to train on: the signal band itself (``band``), or every checked row of each slice with at
    least ``min_share`` of its rows in the band (``slices``). A row that failed every rollout of the check
    can still be the kind of task the model learns from its band neighbours, and training on all of a
    slice's rows instead of its few band rows spreads the updates over more prompts; slices with no
    signal stay out, since their groups' answers cannot differ."""
    if how == "band":
        keep = {r.id for r in results if r.bucket == "sometimes"}
        return [row for row in rows if row.id in keep]
    by_slice = band_by_slice(rows, results)
    learnable = {name for name, (k, n) in by_slice.items() if n and k / n >= min_share}
    checked = {r.id for r in results}
    return [row for row in rows if row.id in checked and row.slice in learnable]


def bucket_of(successes: int, rollouts: int) -> Bucket:
    if rollouts == 0 or successes == 0:
        return "never"
    return "always" if successes == rollouts else "sometimes"


def summarise_row(
    row: Row, trajectories: Sequence[Trajectory], grades: Sequence[Grade], success_threshold: float = 1.0
) -> PriorResult:
    """One row's success rate over its rollouts (ungraded rollouts left out)."""
    rewards = [g.reward for g in grades if g.reward is not None]
    successes = sum(1 for r in rewards if r >= success_threshold)
    n = len(rewards)
    return PriorResult(
        id=row.id,
        rollouts=n,
        successes=successes,
        rate=successes / n if n else 0.0,
        bucket=bucket_of(successes, n),
        mean_reward=sum(rewards) / n if n else 0.0,
        mean_tool_calls=sum(t.n_tool_calls for t in trajectories) / len(trajectories) if trajectories else 0.0,
    )


@dataclass
class PriorSummary:
    """The prior check's outcome: per-row results, bucket counts and the verdict."""

    results: list[PriorResult]
    counts: Counter[str]
    verdict: Verdict
    ungraded: int = 0

    @property
    def signal_share(self) -> float:
        return self.counts["sometimes"] / len(self.results) if self.results else 0.0

    def band_line(self) -> str:
        """``19/50 (38%) of rows are in the signal band — well over the 15–30% rule of thumb.``"""
        n, k = len(self.results), self.counts["sometimes"]
        low, high = SIGNAL_BAND_RULE
        share = self.signal_share
        if share > high:
            where = "well over"
        elif share >= low:
            where = "within"
        else:
            where = "below"
        return f"{k}/{n} ({share:.0%}) of rows are in the signal band — {where} the {low:.0%}–{high:.0%} rule of thumb."

    @classmethod
    def of_results(cls, results: Sequence[PriorResult], rollouts: int) -> PriorSummary:
        """The summary a check of ``rollouts`` per row wrote as ``results`` (its ``--out`` file): a row's
        rollouts that got no grade are the ones missing from its count."""
        counts = Counter(r.bucket for r in results)
        ungraded = sum(max(0, rollouts - r.rollouts) for r in results)
        return cls(list(results), counts, decide(counts, len(results)), ungraded)

    def advice(self) -> str:
        if self.verdict == "go":
            return "RFT has something to learn here. Move on."
        if self.verdict == "already solved":
            return "The base model already solves most rows: use harder rows (or skip RFT)."
        return (
            "The base model rarely succeeds, so most groups give RFT no signal: warm-start it "
            "(agentrft sft), improve the prompt or tools, or use easier rows."
        )


def decide(counts: Counter[str], n_rows: int) -> Verdict:
    """go when the signal band reaches the rule of thumb's floor; otherwise name what to fix."""
    if n_rows and counts["sometimes"] / n_rows >= SIGNAL_BAND_RULE[0]:
        return "go"
    return "already solved" if counts["always"] > counts["never"] else "fix the prior first"


def summarise(
    rows: Sequence[Row],
    trajectories: Sequence[Trajectory],
    grades: Sequence[Grade],
    success_threshold: float = 1.0,
) -> PriorSummary:
    """Group trajectories (any order) by row, compute each row's rate, bucket and decide."""
    by_row: dict[str, list[tuple[Trajectory, Grade]]] = {row.id: [] for row in rows}
    for trajectory, grade in zip(trajectories, grades, strict=True):
        by_row[trajectory.row_id].append((trajectory, grade))
    results = []
    for row in rows:
        pairs = by_row[row.id]
        results.append(summarise_row(row, [t for t, _ in pairs], [g for _, g in pairs], success_threshold))
    counts = Counter(r.bucket for r in results)
    ungraded = sum(1 for g in grades if g.reward is None)
    return PriorSummary(results, counts, decide(counts, len(results)), ungraded)


def prior_check(
    rows: Sequence[Row],
    policy: Any,
    grader: Any,
    tools_url: str,
    token: str | None,
    settings: Any,
    rollouts: int = 5,
    success_threshold: float = 1.0,
    progress: Callable[[int], None] | None = None,
    rows_per_batch: int | None = None,
) -> tuple[PriorSummary, list[Trajectory]]:
    """Roll out each row ``rollouts`` times, grade, and summarise. Returns the summary and the traces.

    Rows go through the loop in calls of about ``ROLLOUTS_PER_CALL`` rollouts, so progress shows early and
    memory stays bounded; every rollout of a row is in the same call.
    """
    per_batch = rows_per_batch or rows_per_call(rollouts)
    trajectories: list[Trajectory] = []
    grades: list[Grade] = []

    async def run() -> None:
        async with ToolClient(tools_url, token=token) as client:
            await client.specs()  # fail before the first rollout if the server is down or refuses the token
            for start in range(0, len(rows), per_batch):
                batch = list(rows[start : start + per_batch])
                done = await run_rollouts(batch, policy, client, settings, rollouts, progress)
                by_id = {row.id: row for row in batch}
                grades.extend(grade_all(grader, [by_id[t.row_id] for t in done], done))
                trajectories.extend(done)

    run_sync(run())
    return summarise(rows, trajectories, grades, success_threshold), trajectories


_out = Console(highlight=False, soft_wrap=True)


def print_summary(rows: Sequence[Row], summary: PriorSummary) -> None:
    """The check's outcome as the command prints it: bucket counts, the band, its slices, the verdict."""
    _out.print(repr(summary.counts), markup=False)
    _out.print(summary.band_line(), markup=False)
    by_slice = band_by_slice(rows, summary.results)
    if len(by_slice) > 1:
        _out.print(slices_line(by_slice), markup=False)
    _out.print(f"verdict: {summary.verdict} — {summary.advice()}", markup=False)
    if summary.ungraded:
        _out.print(f"warning: {summary.ungraded} rollouts got no grade (the grader failed) and are left out", markup=False)


def prior_check_command(
    config: Path = typer.Argument(..., help="The training config (YAML): base_model, val_path, tools, grader, sampling."),
    n: int = typer.Option(50, "--n", min=1, help="Rows to check (the first N of --data)."),
    data: Path = typer.Option(None, "--data", help="Rows to check (JSONL of Row); default the config's val_path. "
                              "Pass the training rows with --write-filtered to train on the signal band."),
    rollouts: int = typer.Option(5, "--rollouts", min=1, help="Rollouts per row."),
    out: Path = typer.Option(None, "--out", help="Per-row results (JSONL of PriorResult); default <output_dir>/prior.jsonl."),
    write_filtered: Path = typer.Option(None, "--write-filtered", help="Write the rows to train on here (JSONL of Row): "
                                        "see --filter."),
    filter_: str = typer.Option("band", "--filter", help="What --write-filtered keeps: the signal band's rows (band), "
                                "or every row of each slice (task_type/difficulty) with at least --slice-min of "
                                "its rows in the band (slices)."),
    slice_min: float = typer.Option(SLICE_MIN_SHARE, "--slice-min", min=0.0, max=1.0,
                                    help="With --filter slices: the band share that makes a slice learnable."),
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
    from .agent.policy import open_policy  # loads torch

    if filter_ not in ("band", "slices"):
        raise UserError(f"--filter: {filter_!r} is not one of band, slices")
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
        settings = fit_context(cfg.rollout_settings(seed=cfg.seed), policy)
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
    print_summary(rows, summary)
    write_models(out, summary.results)
    _out.print(f"wrote {out} ({len(summary.results)} rows)", markup=False)
    if traces is not None:
        write_models(traces, trajectories)
        _out.print(f"wrote {traces} ({len(trajectories)} trajectories)", markup=False)
    if write_filtered is not None:
        kept = select_rows(rows, summary.results, filter_, slice_min)  # type: ignore[arg-type]
        write_models(write_filtered, kept)
        if filter_ == "band":
            what = "rows in the signal band"
        else:
            names = sorted({row.slice for row in kept})
            what = (f"rows: every row of {', '.join(names)}, the slices with ≥ {slice_min:.0%} of their rows in "
                    "the signal band" if names else f"rows: no slice has ≥ {slice_min:.0%} of its rows in the signal band")
        _out.print(f"wrote {write_filtered} ({len(kept)} {what})", markup=False)


def register(app: typer.Typer) -> None:
    """Add this step's commands to the main app."""
    app.command("prior-check")(prior_check_command)


__all__ = [
    "SIGNAL_BAND_RULE",
    "SLICE_MIN_SHARE",
    "band_by_slice",
    "select_rows",
    "slices_line",
    "PriorSummary",
    "bucket_of",
    "decide",
    "prior_check",
    "prior_check_command",
    "print_summary",
    "summarise",
    "summarise_row",
]
