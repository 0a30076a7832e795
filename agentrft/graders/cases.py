"""Test a grader standalone before training (the tutorial's step-4 check), and grade stored
trajectories again (step 8's "fix the grader, re-evaluate, don't retrain").

A case file is JSONL, one ``GraderCase`` a line::

    {"reference_answer": "13.4%", "output_text": "13.41%", "expected_reward": 0.5}

with optional ``expected`` (the row's block, for its ``tolerance_rel``), ``prompt`` and ``note``.
``expected_reward: null`` asserts "no grade".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..jsonl import read_numbered_models
from ..schema import EvalRecord, Expected, Grade, Row, Trajectory
from .base import Grader, grade_all, grade_answer

MATCH_EPS = 1e-6


class GraderCase(BaseModel):
    """One standalone grader check: a reference, an answer, and the reward the grader should give."""

    model_config = ConfigDict(extra="forbid")

    reference_answer: str = Field(min_length=1)
    output_text: str
    expected_reward: float | None = Field(ge=0, le=1)
    expected: Expected = Field(default_factory=Expected)
    prompt: str = "(no prompt)"
    note: str = ""


@dataclass
class CaseResult:
    case: GraderCase
    grade: Grade

    @property
    def ok(self) -> bool:
        want, got = self.case.expected_reward, self.grade.reward
        if want is None or got is None:
            return want is got
        return abs(want - got) <= MATCH_EPS


def read_cases(path: str | Path) -> list[GraderCase]:
    """The cases of a JSONL file; an empty file is an error (``read_numbered_models``)."""
    return [case for _, case in read_numbered_models(Path(path), GraderCase)]


def run_cases(grader: Grader, cases: list[GraderCase]) -> list[CaseResult]:
    return [
        CaseResult(case, grade_answer(grader, case.reference_answer, case.output_text, case.expected, case.prompt))
        for case in cases
    ]


def regrade_traces(
    traces_path: str | Path, rows: list[Row], grader: Grader, out_path: str | Path, workers: int = 8
) -> list[EvalRecord]:
    """Grade every Trajectory in ``traces_path`` again; one EvalRecord per trajectory, pointing back
    at its line (``trace_file`` relative to ``out_path``'s folder)."""
    traces_path, out_path = Path(traces_path), Path(out_path)
    traces = read_numbered_models(traces_path, Trajectory)
    by_id = {row.id: row for row in rows}
    unknown = [f"{traces_path}:{line}: row_id {t.row_id!r} is not in the rows file" for line, t in traces
               if t.row_id not in by_id]  # fmt: skip
    if unknown:
        raise UserError("\n".join(unknown[:20]))
    grades = grade_all(grader, [by_id[t.row_id] for _, t in traces], [t for _, t in traces], workers)
    trace_file = os.path.relpath(traces_path.resolve(), out_path.resolve().parent)
    records = []
    for (line, trajectory), grade in zip(traces, grades):
        row = by_id[trajectory.row_id]
        records.append(
            EvalRecord(
                id=row.id,
                sample_index=trajectory.sample_index,
                model=trajectory.model,
                reward=grade.reward,
                reason=grade.reason,
                tool_calls=trajectory.n_tool_calls,
                answer=trajectory.output_text,
                stop_reason=trajectory.stop_reason,
                task_type=row.metadata.task_type,
                difficulty=row.metadata.difficulty,
                trace_file=trace_file,
                trace_line=line,
            )
        )
    return records


__all__ = ["CaseResult", "GraderCase", "read_cases", "regrade_traces", "run_cases"]
