"""agentrft inspect: regressions worst-first with the tuned trace, and regrading stored answers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentrft.cli import main
from agentrft.evaluate.compare import compare_runs
from agentrft.evaluate.inspect import format_regrade, regrade, render_trace
from agentrft.evaluate.records import load_eval, load_rows
from agentrft.schema import Grade, Row, ToolCallTurn, ToolResultTurn, Trajectory

DATA = Path(__file__).parent / "data" / "eval"
BASE, TUNED, ROWS = DATA / "base.jsonl", DATA / "tuned.jsonl", DATA / "rows.jsonl"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    main(list(argv))
    return capsys.readouterr().out


def test_regressions_worst_first_with_prompt_reference_and_trace(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(capsys, "inspect", str(BASE), str(TUNED), "--rows", str(ROWS))
    blocks = out.split("\n\n")
    assert blocks[0].splitlines() == [
        "2 of 10 rows regressed",
        "not compared: 1 only in base, 1 only in tuned, 1 without a grade (listed by agentrft compare)",
    ]
    assert blocks[1].splitlines() == [
        "=== val-0008 Δreward=-1.00 Δtools=+2",
        "PROMPT: What was Henderson's revenue in Q3 2024?",
        "REFERENCE: $842M",
        "GRADE: base 1.00 (exact match) → tuned 0.00 (no number in the answer parses)",
        '  → search({"query": "henderson 2024"})',
        "  ← filings/henderson-10q-2025-q3.html (score 0.90)\\n  Revenue: $842M; gross margin $…",
        '  → read({"path": "filings/henderson-10q-2025-q3.html"})',
        "  ← Henderson 10-Q for the quarter ended September 30, 2025. Revenue was $842M and t…",
        '  → search({"query": "henderson 2024"})',
        "  ← filings/henderson-10q-2025-q3.html (score 0.92)\\n  Revenue: $842M; gross margin $…",
        "  [model] $842 million dollars",
    ]
    assert blocks[2].splitlines()[:4] == [
        "=== val-0007 Δreward=-0.50 Δtools=-3",
        "PROMPT: What was Atlas Corp's gross margin in fiscal 2024?",
        "REFERENCE: 28.7%",
        "GRADE: base 1.00 (exact match) → tuned 0.50 (rounding: 0.03% off)",
    ]
    assert blocks[2].splitlines()[-1] == "  [model] 28.71%"
    assert len(blocks) == 3


def test_top_limits_and_prompt_falls_back_to_the_trace(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(capsys, "inspect", str(BASE), str(TUNED), "--top", "1")
    assert out.startswith("2 of 10 rows regressed; the worst 1 follow\nnot compared: ")
    assert out.count("=== ") == 1 and "=== val-0008" in out
    # No --rows: the prompt is the trace's user message; the reference cannot be known.
    assert "PROMPT: What was Henderson's revenue in Q3 2024?" in out
    assert "REFERENCE: (unknown: pass --rows VAL.jsonl)" in out


def test_missing_trace_is_named_not_fatal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tuned = tmp_path / "tuned.jsonl"
    tuned.write_text(TUNED.read_text())  # the traces file is not copied along
    out = run_cli(capsys, "inspect", str(BASE), str(tuned), "--rows", str(ROWS), "--top", "1")
    assert re.search(r"\(no trace: .*tuned\.traces\.jsonl: cannot read the traces file; answer: \$842 million dollars\)", out)


def test_render_trace_shows_malformed_calls_errors_and_stops() -> None:
    trajectory = Trajectory(
        row_id="r",
        stop_reason="max_tool_calls",
        turns=[
            ToolCallTurn(call_id="1", name="search", raw='{"name": "search", "arguments": {', error="invalid JSON"),
            ToolResultTurn(call_id="1", name="search", output="Error: arguments are not JSON\nretry", is_error=True),
            ToolCallTurn(call_id="2", name="read", args={"path": "filings/é.html"}),
        ],
    )
    assert render_trace(trajectory) == [
        '  → search({"name": "search", "arguments": {)  ✗ invalid JSON',
        "  ← Error: arguments are not JSON\\nretry",
        '  → read({"path": "filings/é.html"})',
        "  (stopped: max_tool_calls)",
    ]


class FixedGrader:
    """A stand-in for a fixed numeric grader: "$842 million dollars" means 842,000,000."""

    name = "fixed_numeric"
    SCALE = {"b": 1e9, "billion": 1e9, "m": 1e6, "million": 1e6}

    def _value(self, text: str) -> float | None:
        match = re.search(r"(-?\d+(?:\.\d+)?)\s*(billion|million|b|m)?", text.lower())
        if not match:
            return None
        return float(match.group(1)) * self.SCALE.get(match.group(2) or "", 1.0)

    def grade(self, row: Row, trajectory: Trajectory) -> Grade:
        want, got = self._value(row.reference_answer), self._value(trajectory.output_text)
        if got is None or want is None:
            return Grade(reward=0.0, grader=self.name, reason="no number")
        off = abs(got - want) / abs(want)
        reward = 1.0 if off == 0 else 0.5 if off <= 0.002 else 0.0
        return Grade(reward=reward, grader=self.name, reason=f"{off:.2%} off")


def test_regrade_makes_the_grader_bug_regression_disappear() -> None:
    base, tuned, rows = load_eval(BASE), load_eval(TUNED), load_rows(ROWS)
    before = compare_runs(base, tuned)
    result = regrade(base, tuned, FixedGrader(), rows, before)
    assert result.disappeared() == ["val-0008"]
    assert result.remaining() == ["val-0007"]
    assert result.new() == []
    text = format_regrade(result)
    assert "regressions that disappear: 1/2" in text
    assert "  val-0008  Δreward -1.00 → +0.00  tuned 0.00 → 1.00  answer: $842 million dollars" in text
    # The stored files are untouched: regrading is a view, not a rewrite.
    assert load_eval(TUNED).rows["val-0008"].reward == 0.0


def test_regrade_needs_the_rows(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    grader = tmp_path / "grader.json"
    grader.write_text('{"type": "string_check", "name": "x", "operation": "eq", "input": "{{sample.output_text}}", "reference": "{{item.reference_answer}}"}')
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(BASE), str(TUNED), "--regrade", str(grader)])
    assert exit_info.value.code == 1
    assert "--regrade needs --rows" in capsys.readouterr().err


def test_regrade_cli_with_the_numeric_grader_clears_the_dollars_regression(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run_cli(
        capsys, "inspect", str(BASE), str(TUNED), "--rows", str(ROWS),
        "--regrade", str(DATA / "fixed_grader.json"), "--top", "0",
    )
    regrade_part = out.split("\nregraded with ")[1].splitlines()
    assert regrade_part[0] == "numeric_v2:"
    assert regrade_part[1] == "regressions that disappear: 1/2"
    assert regrade_part[2].startswith("  val-0008  Δreward -1.00 → +0.00  tuned 0.00 → 1.00")
    assert regrade_part[3] == "regressions that remain: 1"
    assert regrade_part[4].startswith("  val-0007  Δreward -0.50 → -0.50")
    assert regrade_part[5] == "new regressions: 0"


def test_other_buckets_show_what_may_be_suspiciously_right_or_still_unsolved(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run_cli(capsys, "inspect", str(BASE), str(TUNED), "--bucket", "improved", "--top", "3")
    assert out.startswith("4 of 10 rows improved; the largest 3 follow\n")
    assert re.findall(r"=== (\S+) Δreward=(\S+) Δtools=(\S+)", out) == [
        ("val-0001", "+1.00", "-4"), ("val-0005", "+1.00", "-4"), ("val-0002", "+0.50", "-2"),
    ]
    out = run_cli(capsys, "inspect", str(BASE), str(TUNED), "--bucket", "unsolved")
    assert out.startswith("1 of 10 rows still unsolved\n")
    assert "=== val-0004 Δreward=+0.00 Δtools=-4" in out and "  (stopped: max_tool_calls)" in out
    with pytest.raises(SystemExit):
        main(["inspect", str(BASE), str(TUNED), "--bucket", "worse"])
    assert "--bucket worse: expected one of regressed, improved" in capsys.readouterr().err
