"""Step 7: ``agentrft eval`` — run the agent on a dataset and grade every rollout, per row and sample.

The loop that evaluates is the loop that trains (``agentrft.agent.run_rollouts``), so a reward
measured here means the same as one logged in training. Evaluation is greedy by default: one
deterministic answer per row makes base vs tuned a paired comparison with no sampling noise; with
``--samples K`` each row is sampled K times and compared on its mean.

Records are appended batch by batch, trajectory first and record second, so an interrupted run
resumes where it stopped: rows (and samples) already in the output file are skipped. A batch whose
write fails (the disk full) is cut back whole, so the records before it stay readable and the same
command continues from them.

Faults the run survives rather than stops for: a tool server that goes down and comes back (its
unanswered calls are tool errors the model saw, counted per record and reported as a rate), a tool
that hangs (``--tool-timeout``), a judge that times out (that sample has no grade and stays out of
the mean reward, never scored 0).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..agent.loop import rows_per_call, run_rollouts, run_sync
from ..agent.settings import RolloutSettings, fit_context
from ..config import load_config
from ..errors import UserError
from ..files import refuse_overwrite
from ..graders import Grader, default_grader, grade_all, load_grader
from ..jsonl import read_models, write_models
from ..schema import EvalRecord, Row, ToolResultTurn, Trajectory
from ..tools.client import ToolClient, ToolServerUnavailable, read_token
from .records import traces_path_for

DEFAULT_TOOLS_URL = "http://127.0.0.1:8000"
"""Where ``agentrft tools serve`` listens by default (and the training config's default)."""


@dataclass
class EvalOptions:
    """What ``agentrft eval`` was asked to do (the CLI's flags, one to one)."""

    model: str
    data: Path
    out: Path
    samples: int = 1
    tools_url: str | None = None
    token_file: Path | None = None
    grader: str | Path | None = None
    config: Path | None = None
    temperature: float | None = None
    seed: int = 0
    served_model: str | None = None
    limit: int | None = None
    progress: bool = True
    tool_timeout: float | None = None
    engine: str = "local"
    vllm_url: str | None = None


@dataclass
class EvalSummary:
    """What an evaluation wrote, and the file's totals (old and new records together)."""

    out: Path
    traces: Path
    written: int
    skipped_rows: int
    records: int
    mean_reward: float | None
    mean_tool_calls: float
    ungraded: int
    tool_calls: int = 0
    tool_errors: int = 0
    """Tool results that were errors (the model's own mistakes, and calls the server never answered)."""

    @property
    def tool_error_rate(self) -> float | None:
        return self.tool_errors / self.tool_calls if self.tool_calls else None

    def describe(self) -> str:
        reward = "n/a" if self.mean_reward is None else f"{self.mean_reward:.3f}"
        lines = [
            f"wrote {self.written} records to {self.out} (trajectories in {self.traces.name})",
            f"mean reward: {reward} over {self.records - self.ungraded} graded records; "
            f"mean tool calls: {self.mean_tool_calls:.2f}",
        ]
        if self.skipped_rows:
            lines.insert(1, f"skipped {self.skipped_rows} rows already in {self.out.name}")
        if self.tool_error_rate is not None:
            lines.append(f"tool errors: {self.tool_errors} of {self.tool_calls} calls ({self.tool_error_rate:.1%})")
        if self.ungraded:
            lines.append(f"no grade (the grader failed): {self.ungraded} records, left out of the mean")
        return "\n".join(lines)


def _read_token(options: EvalOptions, config_token: str | None) -> str | None:
    """``--token-file`` wins; else the config's token; else the TOOL_BEARER environment variable."""
    if options.token_file is not None:
        try:
            return read_token(options.token_file)
        except UserError as exc:
            raise UserError(f"--token-file {exc}") from None
    return config_token or read_token()


def resolve_settings(options: EvalOptions) -> tuple[RolloutSettings, str, str | None, str | Path | None]:
    """Rollout settings, tool server URL, token and grader path, from the flags and the config."""
    fields: dict[str, Any] = {"seed": options.seed}
    tools_url, config_token, grader = options.tools_url, None, options.grader
    if options.config is not None:
        cfg = load_config(options.config)
        for name in ("max_tool_calls", "max_trajectory_tokens", "max_new_tokens", "top_p", "top_k", "system_prompt"):
            fields[name] = getattr(cfg, name)
        tools_url = tools_url or cfg.tools_url
        config_token = cfg.tools_token()
        grader = grader or cfg.grader
        if options.samples > 1 and options.temperature is None:
            fields["temperature"] = cfg.temperature
    if options.samples == 1 and options.temperature is None:
        fields["temperature"] = 0.0  # greedy: one deterministic answer per row
    elif options.temperature is not None:
        fields["temperature"] = options.temperature
    if options.tool_timeout is not None:
        fields["tool_timeout_s"] = options.tool_timeout
    return RolloutSettings(**fields), tools_url or DEFAULT_TOOLS_URL, _read_token(options, config_token), grader


def fit_policy(policy: Any, options: EvalOptions, settings: RolloutSettings) -> tuple[Any, RolloutSettings]:
    """For a local model, the token budget fits its context (vLLM cuts turns at its own context)."""
    from ..agent.local import LocalPolicy  # torch

    if not isinstance(policy, LocalPolicy):
        return policy, settings
    policy.name = options.model
    settings = fit_context(settings, policy)
    turn = getattr(policy.model.generation_config, "max_new_tokens", None)
    if options.config is None and turn:
        # the model's own turn length, unless a config says otherwise
        settings = settings.model_copy(update={"max_new_tokens": int(turn)})
    return policy, settings


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    from ..agent.policy import is_endpoint  # torch

    return not is_endpoint(a) and not is_endpoint(b) and Path(a).resolve() == Path(b).resolve()


def load_done(out: Path, model: str) -> list[EvalRecord]:
    """Records already in ``out``; refuses a file written by another model (it would mix two runs)."""
    if not out.exists():
        return []
    done = read_models(out, EvalRecord, allow_empty=True)
    others = sorted({r.model for r in done if r.model and not _same_model(r.model, model)})
    if others:
        raise UserError(f"{out}: holds results of model {others[0]}, not {model}; choose another --out")
    return done


def _next_trace_line(path: Path) -> int:
    """Lines already in a traces file, after closing a last line cut short by an interrupted run
    (so the next trajectory starts on a line of its own and every trace_line stays right)."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) != b"\n":
            handle.write(b"\n")
        handle.seek(0)
        return sum(1 for _ in handle)


def _record(row: Row, trajectory: Trajectory, grade: Any, model: str, trace_file: str, line: int) -> EvalRecord:
    return EvalRecord(
        id=row.id, sample_index=trajectory.sample_index, model=model,
        reward=grade.reward, reason=grade.reason, tool_calls=trajectory.n_tool_calls,
        answer=trajectory.output_text, stop_reason=trajectory.stop_reason,
        task_type=row.metadata.task_type, difficulty=row.metadata.difficulty,
        trace_file=trace_file, trace_line=line,
        tool_errors=sum(isinstance(t, ToolResultTurn) and t.is_error for t in trajectory.turns),
    )


async def _run_batches(
    todo: list[tuple[Row, set[int]]], options: EvalOptions, policy: Any, grader: Grader,
    settings: RolloutSettings, tools_url: str, token: str | None, advance: Any,
) -> int:

    traces = traces_path_for(options.out)
    trace_file = os.path.relpath(traces, options.out.parent)
    line = _next_trace_line(traces)
    written = 0
    async with ToolClient(tools_url, token=token, timeout_s=settings.tool_timeout_s) as client:
        per_call = rows_per_call(options.samples)
        for start in range(0, len(todo), per_call):
            batch = todo[start : start + per_call]
            rows = [row for row, _ in batch]
            try:
                trajectories = await run_rollouts(rows, policy, client, settings, options.samples, advance)
            except ToolServerUnavailable as exc:
                raise UserError(f"{exc}; is 'agentrft tools serve' running at {tools_url}?") from None
            by_row = {row.id: (row, missing) for row, missing in batch}
            keep = [t for t in trajectories if t.sample_index in by_row[t.row_id][1]]
            pairs = [(by_row[t.row_id][0], t) for t in keep]
            grades = await asyncio.to_thread(grade_all, grader, [r for r, _ in pairs], [t for _, t in pairs])
            records = []
            for (row, trajectory), grade in zip(pairs, grades):
                line += 1
                records.append(_record(row, trajectory, grade, options.model, trace_file, line))
            try:
                write_models(traces, [t for _, t in pairs], append=True)
                written += write_models(options.out, records, append=True)
            except UserError as exc:
                raise UserError(f"{exc} ({written} new records before it); "
                                "free space and rerun the same command to continue") from None
    return written


def _summary(options: EvalOptions, written: int, skipped: int) -> EvalSummary:
    records = read_models(options.out, EvalRecord, allow_empty=True) if options.out.exists() else []
    graded = [r.reward for r in records if r.reward is not None]
    return EvalSummary(
        out=options.out, traces=traces_path_for(options.out), written=written, skipped_rows=skipped,
        records=len(records), mean_reward=sum(graded) / len(graded) if graded else None,
        mean_tool_calls=sum(r.tool_calls for r in records) / len(records) if records else 0.0,
        ungraded=len(records) - len(graded), tool_calls=sum(r.tool_calls for r in records),
        tool_errors=sum(r.tool_errors for r in records),
    )


def evaluate(options: EvalOptions) -> EvalSummary:
    """Evaluate a model on a dataset into ``options.out`` (appending; rows already there are skipped)."""
    from ..agent.policy import open_policy  # torch

    refuse_overwrite(options.out, options.data)
    rows = read_models(options.data, Row)[: options.limit]
    if not rows:
        raise UserError(f"{options.data}: no rows to evaluate")
    twice = [rid for rid, n in Counter(row.id for row in rows).items() if n > 1]
    if twice:
        raise UserError(f"{options.data}: row id {twice[0]} appears twice; ids must be unique to pair results by row")
    settings, tools_url, token, grader_path = resolve_settings(options)
    grader = load_grader(grader_path) if grader_path else default_grader()
    done: dict[str, set[int]] = {}
    for rec in load_done(options.out, options.model):
        done.setdefault(rec.id, set()).add(rec.sample_index)
    todo = [(row, set(range(options.samples)) - done.get(row.id, set())) for row in rows]
    todo = [(row, missing) for row, missing in todo if missing]
    skipped = len(rows) - len(todo)
    if not todo:
        return _summary(options, 0, skipped)
    total = len(todo) * options.samples
    with open_policy(options.model, options.served_model, options.engine, options.vllm_url) as policy, Progress(
        TextColumn("eval {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=not options.progress,
    ) as progress:
        policy, settings = fit_policy(policy, options, settings)
        task = progress.add_task(getattr(policy, "name", options.model), total=total)
        written = run_sync(
            _run_batches(todo, options, policy, grader, settings, tools_url, token,
                         lambda n: progress.advance(task, n))
        )
    return _summary(options, written, skipped)
