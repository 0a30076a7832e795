"""Reading evaluation files back: EvalRecords grouped per row, and the trajectories they point to.

An evaluation file holds one EvalRecord per row and sample; its trajectories live in a traces JSONL
(``trace_file``, relative to the evaluation file, at 1-based ``trace_line``). With K samples per
row every view compares rows on the mean over their samples, so a row counts once whatever K is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ..errors import UserError
from ..files import read_text, split_lines
from ..jsonl import describe_validation_error, read_models
from ..schema import EvalRecord, Row, Trajectory


@dataclass(frozen=True)
class RowResult:
    """One row's result in one evaluation run, averaged over its samples."""

    id: str
    reward: float | None
    """Mean reward over the graded samples; None when the grader failed on every sample."""
    tool_calls: float
    samples: int
    task_type: str
    difficulty: str
    records: tuple[EvalRecord, ...]


@dataclass(frozen=True)
class EvalRun:
    """An evaluation file read back, keyed by row id in file order."""

    path: Path
    rows: dict[str, RowResult]

    @property
    def model(self) -> str:
        names = {rec.model for result in self.rows.values() for rec in result.records if rec.model}
        return ", ".join(sorted(names)) or self.path.stem


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def load_eval(path: str | Path) -> EvalRun:
    """Read an EvalRecord JSONL and group its records per row (refusing duplicate samples)."""
    path = Path(path)
    return group_records(path, read_models(path, EvalRecord))


def group_records(path: Path, records: list[EvalRecord]) -> EvalRun:
    """Group records per row in file order; each row's reward is the mean over its graded samples."""
    grouped: dict[str, list[EvalRecord]] = {}
    seen: set[tuple[str, int]] = set()
    for rec in records:
        key = (rec.id, rec.sample_index)
        if key in seen:
            raise UserError(
                f"{path}: row {rec.id} sample {rec.sample_index} appears twice; "
                "keep one record per row and sample"
            )
        seen.add(key)
        grouped.setdefault(rec.id, []).append(rec)
    rows = {}
    for row_id, recs in grouped.items():
        graded = [r.reward for r in recs if r.reward is not None]
        rows[row_id] = RowResult(
            id=row_id,
            reward=_mean(graded) if graded else None,
            tool_calls=_mean([float(r.tool_calls) for r in recs]),
            samples=len(recs),
            task_type=recs[0].task_type,
            difficulty=recs[0].difficulty,
            records=tuple(sorted(recs, key=lambda r: r.sample_index)),
        )
    return EvalRun(path=path, rows=rows)


def load_rows(path: str | Path) -> dict[str, Row]:
    """Read a dataset JSONL into a dict keyed by row id."""
    return {row.id: row for row in read_models(path, Row)}


def traces_path_for(eval_path: Path) -> Path:
    """Where ``agentrft eval`` writes the trajectories of ``eval_path``: ``X.jsonl`` → ``X.traces.jsonl``."""
    stem = eval_path.name[: -len(".jsonl")] if eval_path.name.endswith(".jsonl") else eval_path.name
    return eval_path.with_name(stem + ".traces.jsonl")


class TraceStore:
    """Loads the trajectory an EvalRecord refers to; each traces file is read at most once."""

    def __init__(self) -> None:
        self._lines: dict[Path, list[str] | str] = {}

    def _file_lines(self, path: Path) -> list[str] | str:
        """The file's lines, numbered as the writer counted them, or why it cannot be read."""
        if path not in self._lines:
            if not path.is_file():
                self._lines[path] = f"{path}: cannot read the traces file"
            else:
                try:
                    self._lines[path] = split_lines(read_text(path, "a traces file", max_bytes=None))
                except UserError as exc:
                    self._lines[path] = str(exc)
        return self._lines[path]

    def load(self, eval_path: Path, record: EvalRecord) -> Trajectory | str:
        """The record's trajectory, or a one-line reason why it cannot be shown."""
        if not record.trace_file or not record.trace_line:
            return "no trace recorded"
        trace_path = (eval_path.parent / record.trace_file).resolve()
        lines = self._file_lines(trace_path)
        if isinstance(lines, str):
            return lines
        if not 1 <= record.trace_line <= len(lines):
            return f"{trace_path}:{record.trace_line}: no such line"
        where = f"{trace_path}:{record.trace_line}"
        try:
            trajectory = Trajectory.model_validate(json.loads(lines[record.trace_line - 1]))
        except json.JSONDecodeError as exc:
            return f"{where}: malformed JSON ({exc.msg})"
        except ValidationError as exc:
            return f"{where}: " + "; ".join(describe_validation_error(exc)[:3])
        if trajectory.row_id != record.id:
            return f"{where}: holds row {trajectory.row_id}, not {record.id}"
        return trajectory
