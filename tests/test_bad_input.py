"""Every command that reads a user's file, fed every kind of bad file: one line naming the file (and
the line, where there is one), a non-zero exit, no traceback, and the file left as it was.

Commands run in-process through ``agentrft.cli.main``; an exception other than ``SystemExit``
escaping it fails the test with its traceback.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from agentrft.cli import main
from agentrft.files import MAX_LINE_BYTES

DATA = Path(__file__).parent / "data"
EVAL = DATA / "eval"
BASE, TUNED, ROWS = EVAL / "base.jsonl", EVAL / "tuned.jsonl", EVAL / "rows.jsonl"
TRACES = EVAL / "base.traces.jsonl"
LOGS = Path(__file__).parent.parent / "examples" / "logs.jsonl"


def first_line(path: Path) -> str:
    return path.read_text(encoding="utf-8").split("\n", 1)[0]


GOOD_CASE = '{"reference_answer": "13.4%", "output_text": "13.4%", "expected_reward": 1}'


def wrong_type(line: str, field: str, value: object) -> str:
    """``line`` (a JSON object) with one field of the wrong type."""
    return json.dumps({**json.loads(line), field: value})


# kind → (file name, a good first line for the "truncated" case, a line with a field of the wrong type)
KINDS: dict[str, tuple[str, str, str]] = {
    "rows": ("rows.jsonl", first_line(ROWS), wrong_type(first_line(ROWS), "id", 7)),
    "eval": ("eval.jsonl", first_line(BASE), wrong_type(first_line(BASE), "reward", "high")),
    "traces": ("traces.jsonl", first_line(TRACES), wrong_type(first_line(TRACES), "turns", 3)),
    "cases": ("cases.jsonl", GOOD_CASE, wrong_type(GOOD_CASE, "expected_reward", "yes")),
    "logs": ("logs.jsonl", first_line(LOGS), wrong_type(first_line(LOGS), "messages", "hello")),
    "config": ("config.yaml", "group_size: 8", "group_size: many"),
    "grader": ("grader.json", "{", '{"type": "numeric", "tolerance_rel": "wide"}'),
}
TRUNCATED_TAIL = {"config": 'kl_coef: "0.0', "grader": '  "type": "numeric", "na'}


def bad_input(kind: str, bad: str, folder: Path) -> Path:
    """Write the bad input of ``kind`` under ``folder`` (or leave it missing) and return its path."""
    name, good, wrong_field = KINDS[kind]
    path = folder / name
    content: dict[str, bytes] = {
        "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8\xff\xe0" * 8,
        "utf16": f"{good}\n".encode("utf-16"),
        "empty": b"",
        "truncated": f"{good}\n{TRUNCATED_TAIL.get(kind, good[: len(good) // 2])}".encode(),
        "array": b"- 1\n- 2\n" if kind == "config" else b"[1, 2]\n",
        "number": b"42\n",
        "wrong_field": f"{wrong_field}\n".encode(),
    }
    if bad == "directory":
        path.mkdir()
    elif bad != "missing":
        path.write_bytes(content[bad])
    return path


def report_run(folder: Path) -> Path:
    """A copy of the test run directory (config.yaml, metrics.jsonl) to break files in."""
    run = folder / "run"
    shutil.copytree(EVAL / "run", run)
    return run


def good_cases(folder: Path) -> Path:
    path = folder / "good_cases.jsonl"
    path.write_text(GOOD_CASE + "\n", encoding="utf-8")
    return path


# command → (kind of file it reads, argv with the bad file's path in it)
Argv = Callable[[Path, Path], list[str]]
COMMANDS: dict[str, tuple[str, Argv]] = {
    "data validate": ("rows", lambda bad, tmp: ["data", "validate", str(bad)]),
    "data split": ("rows", lambda bad, tmp: ["data", "split", str(bad), "--out-dir", str(tmp / "out")]),
    "data stats": ("rows", lambda bad, tmp: ["data", "stats", str(bad)]),
    "data import-logs": ("logs", lambda bad, tmp: ["data", "import-logs", str(bad), "--out", str(tmp / "o.jsonl")]),
    "config check": ("config", lambda bad, tmp: ["config", "check", str(bad)]),
    "train": ("config", lambda bad, tmp: ["train", str(bad)]),
    "prior-check": ("config", lambda bad, tmp: ["prior-check", str(bad)]),
    "grade --grader": ("grader", lambda bad, tmp: ["grade", "-r", "13.4%", "-a", "13.4%", "--grader", str(bad)]),
    "grade test": ("cases", lambda bad, tmp: ["grade", "test", str(bad)]),
    "grade test --grader": ("grader", lambda bad, tmp: ["grade", "test", str(good_cases(tmp)), "--grader", str(bad)]),
    "grade run (traces)": ("traces", lambda bad, tmp: ["grade", "run", str(bad), "--rows", str(ROWS), "--out", str(tmp / "o.jsonl")]),
    "grade run --rows": ("rows", lambda bad, tmp: ["grade", "run", str(TRACES), "--rows", str(bad), "--out", str(tmp / "o.jsonl")]),
    "compare": ("eval", lambda bad, tmp: ["compare", str(bad), str(TUNED)]),
    "compare --rows": ("rows", lambda bad, tmp: ["compare", str(BASE), str(TUNED), "--rows", str(bad)]),
    "inspect": ("eval", lambda bad, tmp: ["inspect", str(BASE), str(bad)]),
    "inspect --regrade": ("grader", lambda bad, tmp: ["inspect", str(BASE), str(TUNED), "--rows", str(ROWS), "--regrade", str(bad)]),
    "report --base": ("eval", lambda bad, tmp: ["report", str(report_run(tmp)), "--base", str(bad), "--tuned", str(TUNED)]),
    "eval --data": ("rows", lambda bad, tmp: ["eval", "--model", "unused", "--data", str(bad), "--out", str(tmp / "o.jsonl")]),
    "eval --grader": ("grader", lambda bad, tmp: ["eval", "--model", "unused", "--data", str(ROWS), "--grader", str(bad), "--out", str(tmp / "o.jsonl")]),
}  # fmt: skip
BAD = ["binary", "utf16", "empty", "truncated", "array", "number", "wrong_field", "directory", "missing"]

# Known gaps, all in agentrft/config.py's load_config (being edited elsewhere): it reads the
# config without agentrft.files, so a non-UTF-8 config gets cli.main's last-net line, which cannot
# name the file; and it takes an empty file for "all defaults", so prior-check's error is about the
# default val file instead. strict: the day load_config is fixed, these start passing and fail here.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(path: Path) -> object:
    """The input as it is on disk: its bytes, a directory's listing, or 'missing'."""
    if path.is_dir():
        return sorted(p.name for p in path.iterdir())
    return path.read_bytes() if path.exists() else "missing"


def assert_one_line_error(code: int, out: str, err: str, path: Path) -> str:
    assert code != 0, out + err
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and str(path) in lines[0], lines[0]
    return lines[0]


# Production logs are often cut mid-write: import-logs keeps the good lines and lists each one left
# out with its place (examples/logs.jsonl ends so), rather than refuse the whole export.
LENIENT = {("data import-logs", "truncated"): "left out: {path}:2: malformed JSON"}
# The line each bad input's problem is on, where it has one.
PLACE = {
    "jsonl": {"truncated": 2, "array": 1, "number": 1, "wrong_field": 1, "utf16": 1},
    "config": {"truncated": 2, "wrong_field": 1},
    "grader": {"truncated": 2, "utf16": 1},
}


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_input_is_one_line_naming_the_file(
    command: str, bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    if (command, bad) in KNOWN_GAPS:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_GAPS[command, bad], strict=True))
    kind, argv = COMMANDS[command]
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = bad_input(kind, bad, inputs)
    before = snapshot(path)
    code, out, err = run_cli(argv(path, tmp_path), capsys)
    assert snapshot(path) == before
    if (command, bad) in LENIENT:
        assert code == 0 and LENIENT[command, bad].format(path=path) in out, out + err
        return
    line = assert_one_line_error(code, out, err, path)
    number = PLACE.get(kind, PLACE["jsonl"]).get(bad)
    if number is not None:  # import-logs lists each line it left out, and why, on stdout
        assert f"{path}:{number}: " in (out + line if kind == "logs" else line), out + line


METRICS_BAD = ["binary", "utf16", "directory"]


@pytest.mark.parametrize("bad", METRICS_BAD)
@pytest.mark.parametrize("name", ["metrics.jsonl", "config.yaml"])
def test_report_refuses_an_unreadable_run_file(
    name: str, bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = report_run(tmp_path)
    target = run / name
    target.unlink()
    if bad == "directory":
        target.mkdir()
    else:
        target.write_bytes(b"\x89PNG\x00\xff binary" if bad == "binary" else "step: 1\n".encode("utf-16"))
    before = snapshot(target)
    code, out, err = run_cli(["report", str(run), "--base", str(BASE), "--tuned", str(TUNED)], capsys)
    assert_one_line_error(code, out, err, target)
    assert snapshot(target) == before and not (run / "report.html").exists()


def test_report_notes_metrics_lines_a_live_run_may_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """metrics.jsonl is written while training runs: a cut last line or a stray value is a note on
    the page (naming file and line), not a failed report."""
    run = report_run(tmp_path)
    good = first_line(run / "metrics.jsonl")
    lines = [good, "[1, 2]", '{"step": "two", "loss": "high"}', good[:20]]
    (run / "metrics.jsonl").write_text("\n".join(lines), encoding="utf-8")
    code, _, err = run_cli(["report", str(run), "--base", str(BASE), "--tuned", str(TUNED)], capsys)
    assert code == 0, err
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "metrics.jsonl:2: not a JSON object" in html and "metrics.jsonl:4: malformed JSON" in html


@pytest.mark.parametrize("command", ["inspect", "report"])
def test_an_unreadable_traces_file_is_a_note_beside_the_comparison(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Traces only illustrate a comparison: one that cannot be read is named, with its line, where
    the trace would be shown, and the rest of the output stands."""
    for name in ("base.jsonl", "base.traces.jsonl", "tuned.jsonl", "tuned.traces.jsonl"):
        shutil.copy(EVAL / name, tmp_path / name)
    traces = tmp_path / "tuned.traces.jsonl"
    traces.write_bytes("\n".join(["{}"] * 3).encode("utf-16"))
    before = traces.read_bytes()
    argv = [command, str(tmp_path / "base.jsonl"), str(tmp_path / "tuned.jsonl")]
    if command == "report":
        argv = ["report", str(report_run(tmp_path)), "--base", argv[1], "--tuned", argv[2]]
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and "Traceback" not in out + err, err
    shown = out if command == "inspect" else (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert f"{traces}:1: UTF-16 text" in shown
    assert traces.read_bytes() == before


def test_a_50_mb_line_is_refused_without_reading_it_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.jsonl"
    prompt = "x" * (50 * 2**20)
    path.write_text(f'{first_line(ROWS)}\n{{"id": "val-9", "prompt": "{prompt}", "reference_answer": "1"}}\n')
    size = path.stat().st_size
    commands = (["data", "validate"], ["compare"], ["grade", "-r", "1", "-a", "1", "--grader"])
    for argv in ([*command, str(path), *([str(TUNED)] if command == ["compare"] else [])] for command in commands):
        code, out, err = run_cli(argv, capsys)
        line = assert_one_line_error(code, out, err, path)
        assert "MiB" in line and len(line) < 300, line
        assert argv[0] == "grade" or f"{path}:2: line longer than" in line
    assert path.stat().st_size == size and size > MAX_LINE_BYTES


def test_utf8_with_a_byte_order_mark_reads_as_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bom_val.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + ROWS.read_bytes())
    code, out, err = run_cli(["data", "validate", str(path)], capsys)
    assert code == 0, err
    assert f"Total rows: {len(ROWS.read_text().splitlines())}" in out


def test_a_unicode_line_separator_is_not_a_line_break(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """JSON strings may hold U+2028 raw; JSONL lines end at \\n only, so split copies rows intact."""
    lines = ROWS.read_text(encoding="utf-8").splitlines()
    lines[0] = lines[0].replace("operating margin", "operating\u2028margin")
    assert "\u2028" in lines[0]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["data", "split", str(pool), "--val-frac", "0.5", "--out-dir", str(tmp_path / "out")]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    written = [
        line
        for side in ("train", "val")
        for line in (tmp_path / "out" / f"pool_{side}.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
    ]
    assert sorted(written) == sorted(lines)


OVERWRITES: dict[str, Callable[[Path], list[str]]] = {
    "data import-logs": lambda f: ["data", "import-logs", str(f), "--out", str(f)],
    "grade run": lambda f: ["grade", "run", str(f), "--rows", str(ROWS), "--out", str(f)],
    "eval": lambda f: ["eval", "--model", "unused", "--data", str(f), "--out", str(f)],
    "report": lambda f: ["report", str(EVAL / "run"), "--base", str(f), "--tuned", str(TUNED), "--out", str(f)],
}
OVERWRITE_SOURCE = {"data import-logs": LOGS, "grade run": TRACES, "eval": ROWS, "report": BASE}


@pytest.mark.parametrize("command", list(OVERWRITES))
def test_an_output_onto_its_own_input_is_refused(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / OVERWRITE_SOURCE[command].name
    shutil.copy(OVERWRITE_SOURCE[command], path)
    before = path.read_bytes()
    code, out, err = run_cli(OVERWRITES[command](path), capsys)
    assert "is the input file" in assert_one_line_error(code, out, err, path)
    assert path.read_bytes() == before
