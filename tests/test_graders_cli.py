"""``agentrft grade``, ``grade test`` and ``grade run`` end to end; grader-file errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentrft.cli import main
from agentrft.graders import answer_trajectory, grade_answer, load_grader
from agentrft.jsonl import read_models, write_models
from agentrft.schema import EvalRecord, Expected, MessageTurn, Row, ToolCallTurn, ToolResultTurn, Trajectory

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_grade_prints_the_reward_last(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "grade", "--reference", "13.4%", "--answer", "0.134")
    assert code == 0 and out.splitlines()[-1] == "1"
    code, out, _ = run_cli(capsys, "grade", "-r", "13.4%", "-a", "13.41%", "--json")
    assert code == 0 and json.loads(out) == {
        "reward": 0.5, "reason": "13.41% is within 0.1 percentage point of the reference 13.4%",
        "grader": "numeric", "sub_rewards": {},
    }  # fmt: skip
    code, out, _ = run_cli(capsys, "grade", "-r", "$842M", "-a", "$850M", "--tolerance", "0.02")
    assert out.splitlines()[-1] == "1"
    code, out, _ = run_cli(capsys, "grade", "-r", "Henderson Industries", "-a", "henderson industries")
    assert code == 0 and out.splitlines()[-1] == "1"


def test_no_grade_prints_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text("type: numeric\nfallback: none\n")
    code, out, _ = run_cli(capsys, "grade", "-r", "Henderson", "-a", "Henderson", "-g", str(strict))
    assert code == 0 and out.splitlines() == ["numeric: reference 'Henderson' has no number to compare with (numeric grader)", "none"]


def test_grade_with_a_grader_file(capsys: pytest.CaptureFixture[str]) -> None:
    brittle = str(EXAMPLES / "graders" / "brittle_exact.json")
    code, out, _ = run_cli(capsys, "grade", "-r", "$842M", "-a", "$842 million dollars", "--grader", brittle)
    assert code == 0 and out.splitlines()[-1] == "0"


def test_grade_test_passes_the_shipped_cases_and_fails_the_brittle_grader(capsys: pytest.CaptureFixture[str]) -> None:
    cases = str(EXAMPLES / "grader_cases.jsonl")
    code, out, _ = run_cli(capsys, "grade", "test", cases)
    assert code == 0 and "5/5 cases match" in out and "$842 million dollars" in out
    code, out, err = run_cli(capsys, "grade", "test", cases, "--grader", str(EXAMPLES / "graders" / "brittle_exact.json"))
    assert code == 1 and "MISMATCH" in out and "2/5 cases match" in out
    assert err.strip() == f"error: 3 of 5 cases in {cases} do not get their expected reward"


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('{"type": "label_model"}', ".json", "type: unknown grader type 'label_model'"),
        ('{"type": "string_check", "operation": "eq", "pass_threshhold": 1}', ".json", "pass_threshhold: unknown key"),
        ('{"type": "multi", "graders": {"a": {"type": "numeric"}}, "calculate_output": "a + b"}', ".json",
         "calculate_output: b not among the graders"),
        ('{"type": "multi", "graders": {"a": {"type": "score_model", "model": "m", "input": []}}, '
         '"calculate_output": "a"}', ".json", "graders.a.input: List should have at least 1 item"),
        ('{"type": "numeric",', ".json", ":1: malformed JSON"),
        ("type: numeric\n  bad: [", ".yaml", "malformed YAML"),
        ("- 1\n- 2\n", ".yaml", "a grader must be an object"),
        ('{"type": "multi", "graders": {"a": {"type": "numeric"}}, "calculate_output": "a ** 2"}', ".json",
         "calculate_output: 'a ** 2' is not allowed"),
    ],
)  # fmt: skip
def test_bad_grader_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, suffix: str, message: str
) -> None:
    path = tmp_path / f"grader{suffix}"
    path.write_text(content)
    code, out, err = run_cli(capsys, "grade", "-r", "1", "-a", "1", "--grader", str(path))
    assert code == 1 and out == ""
    assert err.startswith(f"error: {path}") and message in err and "Traceback" not in err


def test_missing_answer_and_missing_files_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "grade", "--reference", "1")
    assert code == 1 and err.strip() == "error: grade needs both --reference and --answer"
    code, _, err = run_cli(capsys, "grade", "test", str(tmp_path / "none.jsonl"))
    assert code == 1 and "no such file" in err
    bad = tmp_path / "cases.jsonl"
    bad.write_text('{"reference_answer": "1", "output_text": "1"}\n')
    code, _, err = run_cli(capsys, "grade", "test", str(bad))
    assert code == 1 and err.strip() == f"error: {bad}:1: expected_reward: Field required"


def _traces(tmp_path: Path) -> tuple[Path, Path]:
    rows = [Row(id="val-1", prompt="Q3 revenue?", reference_answer="$842M",
                expected=Expected(evidence_path="filings/h.html", must_use_tools=["read"])),
            Row(id="val-2", prompt="Q3 margin?", reference_answer="13.4%")]  # fmt: skip
    read = [ToolCallTurn(call_id="c", name="read", args={"path": "filings/h.html"}),
            ToolResultTurn(call_id="c", name="read", output="Revenue: $842M")]  # fmt: skip
    trajectories = [
        Trajectory(row_id="val-1", model="tuned", turns=[*read, MessageTurn(role="assistant", content="$842 million dollars")]),
        Trajectory(row_id="val-2", model="tuned", sample_index=1, turns=[MessageTurn(role="assistant", content="12.0%")]),
    ]  # fmt: skip
    rows_path, traces_path = tmp_path / "val.jsonl", tmp_path / "traces" / "tuned.jsonl"
    write_models(rows_path, rows)
    write_models(traces_path, trajectories)
    return rows_path, traces_path


def test_grade_run_regrades_stored_trajectories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows_path, traces_path = _traces(tmp_path)
    out = tmp_path / "eval" / "regraded.jsonl"
    code, stdout, err = run_cli(capsys, "grade", "run", str(traces_path), "--rows", str(rows_path), "--out", str(out),
                                "--grader", str(EXAMPLES / "graders" / "answer_and_tools.yaml"))  # fmt: skip
    assert code == 0, err
    assert "graded 2 trajectories with answer_and_tools" in stdout
    first, second = read_models(out, EvalRecord)
    assert first.id == "val-1" and first.reward == 1.0 and first.tool_calls == 1 and first.answer == "$842 million dollars"
    assert second.reward == pytest.approx(0.2) and second.sample_index == 1 and second.model == "tuned"
    assert (out.parent / first.trace_file).resolve() == traces_path.resolve() and second.trace_line == 2


def test_grade_run_names_trajectories_without_a_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows_path, traces_path = _traces(tmp_path)
    write_models(rows_path, [Row(id="val-1", prompt="q", reference_answer="$842M")])
    code, _, err = run_cli(capsys, "grade", "run", str(traces_path), "--rows", str(rows_path), "--out", str(tmp_path / "o.jsonl"))
    assert code == 1 and err.strip() == f"error: {traces_path}:2: row_id 'val-2' is not in the rows file"


def test_the_installed_command_exits_and_prints_as_documented(tmp_path: Path) -> None:
    agentrft = Path(sys.executable).parent / "agentrft"
    ok = subprocess.run([str(agentrft), "grade", "--reference", "$842M", "--answer", "$842 million dollars"],
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0 and ok.stdout.splitlines()[-1] == "1"
    bad = tmp_path / "g.yaml"
    bad.write_text("type: numeric\ntolerance_rel: -1\n")
    failed = subprocess.run([str(agentrft), "grade", "-r", "1", "-a", "1", "-g", str(bad)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and "tolerance_rel" in failed.stderr


def test_every_synthetic_reference_grades_itself_as_correct(synth_dir: Path) -> None:
    rows = read_models(synth_dir / "research_train.jsonl", Row) + read_models(synth_dir / "research_val.jsonl", Row)
    grader = load_grader("default")
    assert {row.metadata.task_type for row in rows} >= {"numerical_qa", "comparison"}
    for row in rows:
        assert grader.grade(row, answer_trajectory(row.reference_answer)).reward == 1.0, row.reference_answer
        sentence = f"Based on the filing, the answer is {row.reference_answer}."
        grade = grade_answer(grader, row.reference_answer, sentence, row.expected, row.prompt)
        assert grade.reward == 1.0, (row.prompt, row.reference_answer, grade.reason)
