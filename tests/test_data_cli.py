"""The ``agentrft data`` commands end to end: real files in, one-line errors and exit codes out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from agentrft.jsonl import read_models
from agentrft.schema import Row

ROWS = Path(__file__).parent / "data" / "rows"
EXAMPLE_LOGS = Path(__file__).parent.parent / "examples" / "logs.jsonl"


def test_synth_then_validate_prints_the_tutorial_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["data", "synth", "--out", str(tmp_path), "--companies", "4", "--seed", "0"], capsys)
    assert code == 0 and "research_train.jsonl" in out
    files = [str(tmp_path / "research_train.jsonl"), str(tmp_path / "research_val.jsonl")]
    code, out, err = run_cli(["data", "validate", *files], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "Total rows: 200"
    assert lines[1] == "Train/val: 160 / 40"
    assert lines[2].startswith("Difficulty distribution: {'")
    assert "decided by file name" in out


BROKEN_TRAIN = ROWS / "broken_train.jsonl"
BROKEN_VAL = ROWS / "broken_val.jsonl"
EXPECTED_PROBLEMS = [
    (BROKEN_TRAIN, 2, "malformed JSON"),
    (BROKEN_TRAIN, 3, "missing required field 'reference_answer'"),
    (BROKEN_TRAIN, 4, "prompt: Input should be a valid string"),
    (BROKEN_TRAIN, 5, "reference_answer is empty"),
    (BROKEN_TRAIN, 6, "invalid tool spec at tools.0.function.parameters"),
    (BROKEN_TRAIN, 8, "expected.tolerance_rel: Input should be a valid number"),
    (BROKEN_TRAIN, 9, "expected a JSON object"),
    (BROKEN_TRAIN, 10, "unknown field 'refrence_answer'"),
    (BROKEN_VAL, 1, f"leakage: the same prompt is in train at {BROKEN_TRAIN}:1"),
    (BROKEN_VAL, 2, f"duplicate id 'train-0001' (first at {BROKEN_TRAIN}:1)"),
    (BROKEN_VAL, 4, "invalid tool spec at tools.0.function.name"),
]


def test_validate_reports_every_broken_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["data", "validate", str(BROKEN_TRAIN), str(BROKEN_VAL)], capsys)
    assert code == 1
    assert "Traceback" not in err + out
    lines = err.splitlines()
    for path, number, what in EXPECTED_PROBLEMS:
        prefix = f"error: {path}:{number}: "
        assert any(line.startswith(prefix) and what in line for line in lines), (number, what, err)
    assert lines[-1] == f"error: {len(EXPECTED_PROBLEMS)} problems found"
    # Good lines are not reported: train line 1 and val line 3 are fine, train line 7 is blank.
    for path, number in ((BROKEN_TRAIN, 1), (BROKEN_TRAIN, 7), (BROKEN_VAL, 3)):
        assert f"{path}:{number}:" not in err


def test_validate_decides_sides_by_id_prefix_when_the_name_says_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["data", "validate", str(ROWS / "good_mixed.jsonl")], capsys)
    assert code == 0
    assert "Train/val: 1 / 1" in out
    assert "decided by id prefix" in out
    assert "1 row(s) are neither train nor val" in out


def test_validate_missing_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(["data", "validate", str(tmp_path / "nope.jsonl")], capsys)
    assert code == 1
    assert err.strip() == f"error: {tmp_path / 'nope.jsonl'}: no such file"


def test_validate_without_traceback_in_a_real_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agentrft.cli", "data", "validate", str(BROKEN_TRAIN), str(BROKEN_VAL)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"{BROKEN_TRAIN}:2: malformed JSON" in proc.stderr


def test_split_command_is_stratified_and_keeps_lines(
    synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = tmp_path / "pool.jsonl"
    lines = [*(synth_dir / "research_train.jsonl").read_text().splitlines(),
             *(synth_dir / "research_val.jsonl").read_text().splitlines()]
    pool.write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(
        ["data", "split", str(pool), "--val-frac", "0.25", "--seed", "3", "--out-dir", str(tmp_path / "out")], capsys
    )
    assert code == 0, err
    assert "numerical_qa" in out and "val share" in out
    train = (tmp_path / "out" / "pool_train.jsonl").read_text().splitlines()
    val = (tmp_path / "out" / "pool_val.jsonl").read_text().splitlines()
    assert sorted(train + val) == sorted(lines)  # ids and bytes unchanged
    assert abs(len(val) - 0.25 * len(lines)) <= 7  # within one row per stratum (7 strata)


@pytest.mark.parametrize("frac", ["0", "0.7", "-0.1"])
def test_split_refuses_a_bad_val_fraction(frac: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        ["data", "split", str(ROWS / "good_mixed.jsonl"), "--val-frac", frac, "--out-dir", str(tmp_path)], capsys
    )
    assert code == 1
    assert err.startswith("error: --val-frac must be in (0, 0.5]")
    assert len(err.strip().splitlines()) == 1


def test_split_of_a_broken_file_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["data", "split", str(BROKEN_TRAIN), "--out-dir", str(tmp_path)], capsys)
    assert code == 1
    assert f"{BROKEN_TRAIN}:2: malformed JSON" in err
    assert not list(tmp_path.glob("*.jsonl"))


def test_stats_prints_distributions(synth_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["data", "stats", str(synth_dir / "research_train.jsonl")], capsys)
    assert code == 0
    assert "Difficulty distribution: {" in out
    assert "Task types: {" in out
    assert "160 rows" in out


def test_import_logs_keeps_labelled_and_reports_the_rest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "rows.jsonl"
    code, out, err = run_cli(["data", "import-logs", str(EXAMPLE_LOGS), "--out", str(out_file)], capsys)
    assert code == 0, err
    rows = read_models(out_file, Row)
    by_log = {(r.metadata.model_extra or {})["log_id"]: r for r in rows}
    assert by_log["chatcmpl-101"].reference_answer == "19.7%"  # reference_answer
    assert by_log["chatcmpl-102"].reference_answer == "Atlas Corp reported revenue of $166M."  # confirmed answer
    assert by_log["chatcmpl-103"].reference_answer == "$31M"  # reviewer's correction, not the wrong answer
    assert by_log["chatcmpl-104"].reference_answer == "61.0%"  # label.answer
    assert by_log["chatcmpl-109"].reference_answer == "3.6"
    assert by_log["chatcmpl-109"].prompt.startswith("By what percentage")  # content parts
    assert by_log["chatcmpl-109"].expected.tolerance_rel == 0.02
    assert set(by_log) == {"chatcmpl-101", "chatcmpl-102", "chatcmpl-103", "chatcmpl-104", "chatcmpl-109"}
    assert [r.id for r in rows] == ["log-0001", "log-0002", "log-0003", "log-0004", "log-0005"]
    assert all(r.tool_names() == ["search", "read"] for r in rows)
    reported = {line.split(": ", 1)[1].split(":")[1] for line in out.splitlines() if line.startswith("left out: ")}
    assert reported == {"5", "6", "7", "8", "10"}
    assert f"{EXAMPLE_LOGS}:6: feedback marks the answer wrong" in out
    assert "Kept 5 rows, left out 5" in out


def test_import_logs_with_nothing_usable_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = tmp_path / "logs.jsonl"
    logs.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    code, out, err = run_cli(["data", "import-logs", str(logs), "--out", str(tmp_path / "rows.jsonl")], capsys)
    assert code == 1
    assert f"{logs}:1: no usable reference" in out
    assert err.strip() == f"error: {logs}: no log line has a usable reference; nothing written"
    assert not (tmp_path / "rows.jsonl").exists()


def test_synth_refuses_too_many_companies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["data", "synth", "--out", str(tmp_path), "--companies", "40"], capsys)
    assert code == 1
    assert err.strip() == "error: --companies must be between 2 and 16, got 40"
