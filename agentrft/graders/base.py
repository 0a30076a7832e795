"""The Grader protocol and what every grader shares: the views a template sees, clamping, a way to
grade a bare answer string.

A grader turns one rollout into a ``Grade``: a reward in [0, 1], or ``reward=None`` ("no grade")
when the grader itself could not decide — a judge that timed out, a user's grading function that
raised. Training drops ungraded samples instead of learning from a silent 0.

Example::

    class ExactAnswer:
        name = "exact"

        def grade(self, row: Row, trajectory: Trajectory) -> Grade:
            ok = trajectory.output_text.strip() == row.reference_answer.strip()
            return Grade(reward=1.0 if ok else 0.0, grader=self.name, reason="exact match" if ok else "differs")
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from ..schema import Expected, Grade, MessageTurn, Row, ToolResultTurn, Trajectory


@runtime_checkable
class Grader(Protocol):
    """Anything with a ``name`` and ``grade(row, trajectory) -> Grade``."""

    name: str

    def grade(self, row: Row, trajectory: Trajectory) -> Grade: ...


def item_view(row: Row) -> dict[str, Any]:
    """The dataset row as a grader template or a python grader sees it (``{{item.*}}``)."""
    return row.model_dump(mode="json")


def sample_view(trajectory: Trajectory) -> dict[str, Any]:
    """The rollout as OpenAI-style graders see it (``{{sample.*}}``): output_text, output_json
    (the answer parsed as JSON, or None), output_tools (the calls made), plus our own counters."""
    text = trajectory.output_text
    try:
        output_json = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        output_json = None
    results = {t.call_id: t for t in trajectory.turns if isinstance(t, ToolResultTurn)}
    tools = [
        {
            "name": call.name,
            "arguments": call.args,
            "error": call.error,
            "output": results[call.call_id].output if call.call_id in results else None,
        }
        for call in trajectory.tool_calls
    ]
    return {
        "output_text": text,
        "output_json": output_json,
        "output_tools": tools,
        "n_tool_calls": trajectory.n_tool_calls,
        "stop_reason": trajectory.stop_reason,
    }


_TEMPLATE = re.compile(r"\{\{\s*(item|sample)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*\}\}")


def render(template: str, item: dict[str, Any], sample: dict[str, Any]) -> str:
    """Fill ``{{item.reference_answer}}`` / ``{{sample.output_text}}`` / ``{{item.expected.x}}``.

    A missing key renders as an empty string (a row without a metadata key is not an error);
    dicts and lists render as JSON.
    """

    def fill(match: re.Match[str]) -> str:
        value: Any = item if match.group(1) == "item" else sample
        for key in match.group(2).strip(".").split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            return ""
        return value if isinstance(value, str) else json.dumps(value)

    return _TEMPLATE.sub(fill, template)


def clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def answer_trajectory(answer: str, row_id: str = "adhoc") -> Trajectory:
    """A one-message rollout holding just ``answer`` (for grading a bare string)."""
    return Trajectory(row_id=row_id, turns=[MessageTurn(role="assistant", content=answer)])


def grade_answer(
    grader: Grader,
    reference: str,
    answer: str,
    expected: Expected | dict[str, Any] | None = None,
    prompt: str = "(no prompt)",
) -> Grade:
    """Grade a bare answer string against a reference (the CLI's ``agentrft grade``)."""
    if isinstance(expected, dict):
        expected = Expected.model_validate(expected)
    row = Row(id="adhoc", prompt=prompt, reference_answer=reference, expected=expected or Expected())
    return grader.grade(row, answer_trajectory(answer))


def grade_all(
    grader: Grader, rows: Sequence[Row], trajectories: Sequence[Trajectory], max_workers: int = 8
) -> list[Grade]:
    """Grade pairs concurrently, in order. Threads, because the slow graders (a judge over HTTP, a
    python grader in its own process) wait on I/O; the numeric grader is fast either way."""
    if len(rows) != len(trajectories):
        raise ValueError(f"{len(rows)} rows but {len(trajectories)} trajectories")
    if max_workers <= 1 or len(rows) <= 1:
        return [grader.grade(r, t) for r, t in zip(rows, trajectories)]
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(grader.grade, rows, trajectories))


__all__ = [
    "Grader",
    "answer_trajectory",
    "clamp01",
    "grade_all",
    "grade_answer",
    "is_number",
    "item_view",
    "render",
    "sample_view",
]
