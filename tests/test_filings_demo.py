"""Step 6 of the demo when training fails: an abort rule is shown and the demo goes on, anything else stops
it (the whole demo runs in `make demo`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrft.filings import demo as demo_module
from agentrft.filings.demo import Demo, StepFailed, train_step
from agentrft.train.cli import ABORT_EXIT_CODE


def _failing_train(code: int, calls: list) -> object:
    def run(*args):  # exits as `agentrft train` does
        calls.append(args)
        raise StepFailed(f"agentrft train exited with {code}", code)

    return run


def test_an_aborted_training_run_is_shown_and_the_demo_goes_on(tmp_path: Path, monkeypatch, capsys) -> None:
    calls: list = []
    monkeypatch.setattr(demo_module, "agentrft", _failing_train(ABORT_EXIT_CODE, calls))
    demo = Demo(out=tmp_path, seed=0, cache=tmp_path / "cache", train_steps=3)
    assert train_step(demo) is False
    assert calls == [("train", demo.config)]
    assert "training stopped on an abort rule" in capsys.readouterr().out


def test_any_other_training_failure_stops_the_demo(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(demo_module, "agentrft", _failing_train(1, []))
    with pytest.raises(StepFailed, match="exited with 1"):
        train_step(Demo(out=tmp_path, seed=0, cache=tmp_path / "cache", train_steps=3))
