"""The command line's own contract: usage errors and bad input end in a short message, never a traceback."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentrft.cli", *args], capture_output=True, text=True, timeout=120)


def test_unknown_command_and_bad_option_are_usage_errors():
    for args in (("no-such-command",), ("data", "synth", "--companies", "many")):
        result = run(*args)
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        assert "Error:" in result.stderr


def test_user_error_is_one_line_with_exit_1(tmp_path):
    result = run("data", "validate", str(tmp_path / "missing.jsonl"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:") and "missing.jsonl" in result.stderr


def test_help_lists_every_step():
    out = run("--help").stdout
    for command in ("data", "tools", "grade", "prior-check", "config", "train", "eval", "compare", "inspect",
                    "report", "plan", "serve", "demo"):
        assert command in out, command


def test_a_command_exit_code_reaches_the_shell():
    import pytest
    import typer

    from agentrft.cli import app, main

    @app.command("exit-three", hidden=True)
    def exit_three() -> None:
        raise typer.Exit(3)

    try:
        with pytest.raises(SystemExit) as exc:
            main(["exit-three"])
        assert exc.value.code == 3
    finally:
        app.registered_commands = [c for c in app.registered_commands if c.name != "exit-three"]
