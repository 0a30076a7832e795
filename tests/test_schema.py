import json

import pytest

from agentrft.schema import Grade, Row, Trajectory

TUTORIAL_ROW = """{"id": "row-2842", "prompt": "What was Henderson Industries' Q3 2025 operating margin?",
 "reference_answer": "13.4%",
 "expected": {"tolerance_rel": 0.02, "evidence_path": "filings/henderson-10q-2025-q3.html",
              "must_use_tools": ["search", "read"]},
 "tools": [{"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}],
 "metadata": {"task_type": "numerical_qa", "difficulty": "medium"}}"""


def test_tutorial_row_loads_unchanged():
    raw = json.loads(TUTORIAL_ROW)
    row = Row.model_validate(raw)
    assert row.id == "row-2842"
    assert row.expected.tolerance_rel == 0.02
    assert row.tool_names() == ["search"]
    dumped = row.model_dump(exclude={"schema_version"}, exclude_none=True)
    assert dumped["tools"] == raw["tools"]
    assert dumped["metadata"] == raw["metadata"]


def test_row_rejects_blank_reference_and_bad_tool_schema():
    raw = json.loads(TUTORIAL_ROW)
    with pytest.raises(ValueError, match="reference_answer is empty"):
        Row.model_validate({**raw, "reference_answer": "  "})
    bad_tool = {"type": "function", "function": {"name": "x", "parameters": {"type": "string"}}}
    with pytest.raises(ValueError, match="type"):
        Row.model_validate({**raw, "tools": [bad_tool]})


def test_trajectory_roundtrip_and_answer():
    traj = Trajectory.model_validate(
        {
            "row_id": "r1",
            "turns": [
                {"type": "message", "role": "user", "content": "q"},
                {"type": "tool_call", "call_id": "c1", "name": "search", "args": {"query": "x"}},
                {"type": "tool_result", "call_id": "c1", "name": "search", "output": "hit"},
                {"type": "message", "role": "assistant", "content": "13.4%"},
            ],
        }
    )
    again = Trajectory.model_validate_json(traj.model_dump_json())
    assert again.n_tool_calls == 1
    assert again.output_text == "13.4%"


def test_grade_bounds():
    assert Grade(reward=None, grader="judge", reason="timeout").graded is False
    with pytest.raises(ValueError):
        Grade(reward=1.5, grader="x")
