"""The python grader runs user code in its own process: scores, clamping, exceptions, a hang."""

from __future__ import annotations

import re
import time

import pytest

from agentrft.errors import UserError
from agentrft.graders import grade_answer, load_grader
from agentrft.graders.python_grader import PythonGrader
from agentrft.schema import Expected, MessageTurn, Row, ToolCallTurn, ToolResultTurn, Trajectory

EXACT = """
def grade(sample, item) -> float:
    print("debug output must not break the protocol")
    return 1.0 if sample["output_text"].strip() == item["reference_answer"] else 0.0
"""


def _python(source: str, timeout_s: float = 5.0) -> PythonGrader:
    grader = load_grader({"type": "python", "name": "py", "source": source, "timeout_s": timeout_s})
    assert isinstance(grader, PythonGrader)
    return grader


def test_scores_come_back_from_the_worker() -> None:
    grader = _python(EXACT)
    try:
        assert grade_answer(grader, "13.4%", "13.4%").reward == 1.0
        assert grade_answer(grader, "13.4%", "12%").reward == 0.0
    finally:
        grader.close()


def test_sample_and_item_carry_tools_and_row_fields() -> None:
    source = """
def grade(sample, item):
    reads = [t for t in sample["output_tools"] if t["name"] == "read"]
    ok = reads and reads[0]["arguments"]["path"] == item["expected"]["evidence_path"]
    return 0.25 * sample["n_tool_calls"] + (0.5 if ok else 0.0)
"""
    row = Row(id="r1", prompt="q", reference_answer="1", expected=Expected(evidence_path="filings/a.html"))
    trajectory = Trajectory(row_id="r1", turns=[
        ToolCallTurn(call_id="c1", name="read", args={"path": "filings/a.html"}),
        ToolResultTurn(call_id="c1", name="read", output="text"),
        MessageTurn(role="assistant", content="1"),
    ])  # fmt: skip
    grader = _python(source)
    try:
        assert grader.grade(row, trajectory).reward == 0.75
    finally:
        grader.close()


def test_results_are_clamped_and_bad_results_are_no_grade() -> None:
    grader = _python("def grade(sample, item):\n    return float(sample['output_text'])\n")
    try:
        high = grade_answer(grader, "x", "3.5")
        assert high.reward == 1.0 and "clamped" in high.reason
        assert grade_answer(grader, "x", "-1").reward == 0.0
        assert grade_answer(grader, "x", "nan").reward is None
        failed = grade_answer(grader, "x", "not a number")
        assert failed.reward is None and "ValueError" in failed.reason
        assert grade_answer(grader, "x", "0.25").reward == 0.25  # the worker survives an exception
    finally:
        grader.close()


def test_a_hanging_grader_is_stopped_and_the_next_grade_works() -> None:
    source = """
import time
def grade(sample, item):
    if sample["output_text"] == "hang":
        time.sleep(60)
    return 0.5
"""
    grader = _python(source, timeout_s=0.5)
    try:
        start = time.monotonic()
        grade = grade_answer(grader, "x", "hang")
        assert time.monotonic() - start < 5
        assert grade.reward is None and "longer than 0.5s" in grade.reason
        assert grade_answer(grader, "x", "fine").reward == 0.5
    finally:
        grader.close()


def test_a_grader_that_kills_its_process_is_no_grade() -> None:
    grader = _python("import os\ndef grade(sample, item):\n    os._exit(3)\n")
    try:
        assert grade_answer(grader, "x", "y").reward is None
        assert grade_answer(grader, "x", "y").reward is None
    finally:
        grader.close()


def test_source_that_fails_at_import_is_no_grade_with_the_message() -> None:
    grader = _python("import no_such_module_here\ndef grade(sample, item):\n    return 1\n")
    try:
        grade = grade_answer(grader, "x", "y")
        assert grade.reward is None and "no_such_module_here" in grade.reason
    finally:
        grader.close()


@pytest.mark.parametrize(
    ("source", "message"),
    [("def grade(sample, item)\n    return 1", "line 1"), ("def score(sample, item):\n    return 1", "grade(sample, item)")],
)
def test_bad_source_is_refused_at_load(source: str, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        load_grader({"type": "python", "source": source})
