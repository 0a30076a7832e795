"""What a training run writes per logging step: a ``metrics.jsonl`` row and a few sampled traces.

Every logging step appends one ``MetricsRow`` with the tutorial's columns (``step``, ``val_reward``,
``tool_calls``, ``kl_to_ref``, ``loss``) plus what tells a healthy run from a dying one: train reward
and its std, the share of groups whose rewards were all equal (they carry no gradient in GRPO), grad
norm, step time, and the train reward by slice of the rows (a mean that rises while one kind of question
falls is two stories). TRL names these its own way; ``metrics_row`` maps its log keys to our columns.
``traces/step-XXXX.jsonl`` keeps ``trace_samples`` of the step's trajectories with their grades.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import UserError
from ..files import iter_lines
from ..jsonl import describe_validation_error, iter_json_lines, write_models
from ..schema import Grade, MetricsRow, TraceRecord, Trajectory

METRICS_FILE = "metrics.jsonl"
TRACES_DIR = "traces"
SLICE_METRIC_PREFIX = "reward_by_slice/"
"""The log keys of the per-slice training reward (``reward_by_slice/numerical_qa/easy``)."""

# TRL's log keys → our column names.
_TRL_KEYS = {
    "kl": "kl_to_ref",
    "loss": "loss",
    "reward": "train_reward",
    "reward_std": "reward_std",
    "frac_reward_zero_std": "zero_std_groups",
    "grad_norm": "grad_norm",
    "learning_rate": "learning_rate",
    "step_time": "step_time_s",
    "tool_calls": "tool_calls",
    "completions/mean_length": "completion_tokens",
    "no_grade": "no_grade",
    "tool_errors": "tool_error_rate",
    "weight_sync_s": "weight_sync_s",
}


def metrics_row(step: int, epoch: float | None, logs: dict[str, Any]) -> MetricsRow:
    """The row for one of TRL's ``on_log`` calls (a value TRL logged as something not a number is None)."""
    row = MetricsRow(step=step, epoch=epoch, **{ours: _float(logs[theirs]) for theirs, ours in _TRL_KEYS.items()
                                                if theirs in logs})
    slices = {key[len(SLICE_METRIC_PREFIX):]: _float(value) for key, value in logs.items()
              if key.startswith(SLICE_METRIC_PREFIX)}
    row.train_reward_by_slice = {name: value for name, value in slices.items() if value is not None} or None
    return row


def slice_series(rows: Sequence[MetricsRow]) -> dict[str, tuple[list[float], list[float]]]:
    """Per slice (sorted by name), the steps it was trained in and its training reward at each."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        for name, value in (row.train_reward_by_slice or {}).items():
            steps, values = series.setdefault(name, ([], []))
            steps.append(float(row.step))
            values.append(value)
    return dict(sorted(series.items()))


def slice_trend(rows: Sequence[MetricsRow]) -> dict[str, tuple[float, float, int]]:
    """Per slice, its mean training reward over the first and the last quarter of the steps it was
    trained in (at least one step, at most ten), and how many steps that was; slices seen in fewer than
    two steps are left out. A slice's reward from one step is a handful of groups: the means are the trend."""
    trend = {}
    for name, (_, values) in slice_series(rows).items():
        if len(values) >= 2:
            window = min(10, max(1, len(values) // 4))
            trend[name] = (sum(values[:window]) / window, sum(values[-window:]) / window, len(values))
    return trend


def read_metric_lines(path: Path) -> tuple[list[MetricsRow], list[tuple[int, str]]]:
    """The rows of a metrics file, and ``(line, why)`` for each line that is not one; nothing when the
    file does not exist yet. A file that cannot be read at all is a UserError."""
    if not path.exists():
        return [], []
    rows, problems = [], []
    for number, value, error in iter_json_lines(path, "a metrics file"):
        if error is None and not isinstance(value, dict):
            error = "not a JSON object"
        if error is None:
            try:
                rows.append(MetricsRow.model_validate(value))
                continue
            except ValidationError as exc:
                error = f"not a metrics row ({describe_validation_error(exc)[0]})"
        problems.append((number, error))
    return rows, problems


def read_metrics(path: Path) -> list[MetricsRow]:
    """The rows of a run's own metrics file, to resume it (empty when the file does not exist yet).

    A last line that does not parse is a write the run was killed in the middle of, and is left out
    (it is after the last checkpoint, so a resume drops it anyway); a bad line before it is an error.
    """
    rows, problems = read_metric_lines(path)
    last = max((n for n, text in iter_lines(path, "a metrics file") if text.strip()), default=0) if problems else 0
    for number, why in problems:
        if number != last:
            raise UserError(f"{path}:{number}: {why}")
    return rows


def trim_metrics(run_dir: Path, last_step: int) -> int:
    """Drop metric rows and traces after ``last_step`` (the checkpoint a resume starts from).

    Returns how many rows were dropped. Without this, a run killed between a checkpoint and the
    next one would repeat those steps in its metrics after ``--resume``.
    """
    path = run_dir / METRICS_FILE
    rows = read_metrics(path)
    kept = [row for row in rows if row.step <= last_step]
    if len(kept) != len(rows):
        write_models(path, kept)
    for trace in (run_dir / TRACES_DIR).glob("step-*.jsonl"):
        if int(trace.stem.split("-")[1]) > last_step:
            trace.unlink()
    return len(rows) - len(kept)


def write_traces(run_dir: Path, step: int, trajectories: list[Trajectory], grades: list[Grade], samples: int) -> None:
    """Write ``samples`` of the step's trajectories, spread evenly over the batch, with their grades."""
    if not samples or not trajectories:
        return
    every = max(1, len(trajectories) // samples)
    records = []
    for index in list(range(0, len(trajectories), every))[:samples]:
        grade = grades[index] if index < len(grades) else None
        records.append(TraceRecord(step=step, reward=grade.reward if grade else None,
                                   reason=grade.reason if grade else "", trajectory=trajectories[index]))
    write_models(run_dir / TRACES_DIR / f"step-{step:04d}.jsonl", records)


def _float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


__all__ = ["METRICS_FILE", "TRACES_DIR", "metrics_row", "read_metrics", "trim_metrics", "write_traces"]
