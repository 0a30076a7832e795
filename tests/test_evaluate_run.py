"""agentrft eval's bookkeeping without a model: settings from flags and config, traces file lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrft.errors import UserError
from agentrft.evaluate.run import DEFAULT_TOOLS_URL, EvalOptions, _next_trace_line, resolve_settings


def options(tmp_path: Path, **kw: object) -> EvalOptions:
    return EvalOptions(model="m", data=tmp_path / "val.jsonl", out=tmp_path / "out.jsonl", **kw)  # type: ignore[arg-type]


def test_greedy_by_default_and_sampling_for_k_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOOL_BEARER", raising=False)
    settings, url, token, grader = resolve_settings(options(tmp_path))
    assert settings.temperature == 0.0 and url == DEFAULT_TOOLS_URL and token is None and grader is None
    settings, *_ = resolve_settings(options(tmp_path, samples=4, seed=7))
    assert settings.temperature == 1.0 and settings.seed == 7
    settings, *_ = resolve_settings(options(tmp_path, samples=4, temperature=0.6))
    assert settings.temperature == 0.6
    monkeypatch.setenv("TOOL_BEARER", "from-env")
    assert resolve_settings(options(tmp_path))[2] == "from-env"


def test_config_supplies_limits_tools_token_and_grader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOOL_BEARER", raising=False)
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "grader.json").write_text('{"type": "numeric", "name": "n"}')
    config = tmp_path / "config.yaml"
    config.write_text(
        "tools_url: http://127.0.0.1:9100\ntools_token_file: token\ngrader: grader.json\n"
        "max_tool_calls: 3\nmax_new_tokens: 40\nmax_trajectory_tokens: 900\ntemperature: 0.7\n"
    )
    settings, url, token, grader = resolve_settings(options(tmp_path, config=config))
    assert (url, token, Path(str(grader))) == ("http://127.0.0.1:9100", "s3cret", tmp_path / "grader.json")
    assert (settings.max_tool_calls, settings.max_new_tokens, settings.max_trajectory_tokens) == (3, 40, 900)
    assert settings.temperature == 0.0  # one sample: greedy, whatever the training temperature
    settings, *_ = resolve_settings(options(tmp_path, config=config, samples=3))
    assert settings.temperature == 0.7
    # Flags win over the config.
    _, url, token, grader = resolve_settings(
        options(tmp_path, config=config, tools_url="http://h:1", token_file=tmp_path / "token", grader="tool_use")
    )
    assert (url, grader) == ("http://h:1", "tool_use")


def test_unreadable_token_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--token-file"):
        resolve_settings(options(tmp_path, token_file=tmp_path / "missing"))


def test_trace_lines_continue_after_an_interrupted_write(tmp_path: Path) -> None:
    traces = tmp_path / "x.traces.jsonl"
    assert _next_trace_line(traces) == 0
    traces.write_text('{"a": 1}\n{"b": 2}\n')
    assert _next_trace_line(traces) == 2
    traces.write_text('{"a": 1}\n{"b": 2}\n{"cut sho')
    assert _next_trace_line(traces) == 3
    assert traces.read_text().endswith('{"cut sho\n')  # the next trajectory gets a line of its own


def test_duplicate_row_ids_are_refused_before_any_rollout(tmp_path: Path) -> None:
    from agentrft.evaluate.run import evaluate

    row = '{"id": "val-1", "prompt": "What was X?", "reference_answer": "1%"}\n'
    (tmp_path / "val.jsonl").write_text(row + row)
    with pytest.raises(UserError, match="row id val-1 appears twice"):
        evaluate(options(tmp_path))
