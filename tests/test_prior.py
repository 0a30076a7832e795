"""Step 1: the prior check's buckets and verdicts, and ``agentrft prior-check`` end to end."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest

from agentrft.cli import main
from agentrft.jsonl import read_models
from agentrft.prior import band_by_slice, bucket_of, decide, select_rows, slices_line, summarise
from agentrft.schema import Grade, PriorResult, Row, Trajectory
from conftest import TOOL_TOKEN


def question(messages: list[dict]) -> str:
    """The row's prompt: the first user message (a system prompt may come before it)."""
    return next(m["content"] for m in messages if m["role"] == "user")

pytestmark = pytest.mark.timeout(120)


def test_buckets_and_verdicts():
    assert [bucket_of(0, 5), bucket_of(2, 5), bucket_of(5, 5), bucket_of(0, 0)] == ["never", "sometimes", "always", "never"]
    assert decide(Counter(sometimes=19, never=18, always=13), 50) == "go"
    assert decide(Counter(sometimes=7, never=30, always=13), 50) == "fix the prior first"  # 14% < 15%
    assert decide(Counter(sometimes=2, never=8, always=40), 50) == "already solved"


def test_summary_leaves_ungraded_rollouts_out_and_uses_the_threshold():
    rows = [Row(id=f"r{i}", prompt="q", reference_answer="1") for i in range(2)]
    trajectories = [Trajectory(row_id=r.id, sample_index=k) for r in rows for k in range(3)]
    rewards = [1.0, 0.5, None, 1.0, 1.0, 1.0]
    grades = [Grade(reward=r, grader="g") for r in rewards]
    summary = summarise(rows, trajectories, grades, success_threshold=1.0)
    first, second = summary.results
    assert (first.rollouts, first.successes, first.bucket, first.mean_reward) == (2, 1, "sometimes", 0.75)
    assert second.bucket == "always" and summary.ungraded == 1
    assert summarise(rows, trajectories, grades, success_threshold=0.5).results[0].bucket == "always"
    assert summary.band_line() == "1/2 (50%) of rows are in the signal band — well over the 15%–30% rule of thumb."


def test_a_summary_read_back_from_its_results_file_is_the_same(tmp_path):
    """The demo prints a cached check's outcome from the ``--out`` file alone: the counts, the verdict
    and the ungraded rollouts (those missing from a row's count) come back from it."""
    from agentrft.jsonl import write_models
    from agentrft.prior import PriorSummary

    rows = [Row(id=f"r{i}", prompt="q", reference_answer="1") for i in range(3)]
    trajectories = [Trajectory(row_id=r.id, sample_index=k) for r in rows for k in range(3)]
    rewards = [1.0, 0.5, None, 1.0, 1.0, 1.0, 0.0, None, None]
    summary = summarise(rows, trajectories, [Grade(reward=r, grader="g") for r in rewards])
    write_models(tmp_path / "prior.jsonl", summary.results)
    again = PriorSummary.of_results(read_models(tmp_path / "prior.jsonl", PriorResult), rollouts=3)
    assert (again.results, again.counts, again.verdict, again.ungraded) == (
        summary.results, summary.counts, summary.verdict, summary.ungraded) and summary.ungraded == 3


def test_rows_to_train_on_by_band_or_by_slice():
    """easy: 2 of 10 rows in the band (20%); medium: 1 of 12 (8%); hard: none of 3."""
    from agentrft.schema import RowMetadata

    rows, results = [], []
    for difficulty, n, band in (("easy", 10, 2), ("medium", 12, 1), ("hard", 3, 0)):
        for i in range(n):
            rows.append(Row(id=f"{difficulty}-{i}", prompt="q", reference_answer="1",
                            metadata=RowMetadata(task_type="numerical_qa", difficulty=difficulty)))
            results.append(PriorResult(id=rows[-1].id, rollouts=4, successes=1 if i < band else 0,
                                       rate=0.25 if i < band else 0.0, bucket="sometimes" if i < band else "never",
                                       mean_reward=0.0, mean_tool_calls=1.0))
    by_slice = band_by_slice(rows, results)
    assert by_slice == {"numerical_qa/medium": (1, 12), "numerical_qa/easy": (2, 10), "numerical_qa/hard": (0, 3)}
    assert slices_line(by_slice) == ("signal band by slice: numerical_qa/medium 1/12, numerical_qa/easy 2/10, "
                                     "numerical_qa/hard 0/3")
    assert [r.id for r in select_rows(rows, results, "band")] == ["easy-0", "easy-1", "medium-0"]
    assert [r.id for r in select_rows(rows, results, "slices")] == [f"easy-{i}" for i in range(10)]
    assert len(select_rows(rows, results, "slices", min_share=0.05)) == 22  # medium's 8% is enough
    assert select_rows(rows[:3], results[:3], "slices") == rows[:3]  # a row never checked is never kept
    assert select_rows(rows, results[:5], "slices") == rows[:5]


@pytest.fixture(scope="module")
def val_rows(synth_dir: Path) -> list[Row]:
    rows = read_models(synth_dir / "research_val.jsonl", Row)
    return [row for row in rows if any(c.isdigit() for c in row.reference_answer)][:6]  # numeric grader


def write_config(tmp_path: Path, val_rows: list[Row], base_model: str, tools_url: str, **extra) -> Path:
    val = tmp_path / "val.jsonl"
    val.write_text("".join(r.model_dump_json() + "\n" for r in val_rows))
    fields = {"base_model": base_model, "val_path": str(val), "tools_url": tools_url,
              "tools_token_env": "PRIOR_TEST_TOKEN", "output_dir": str(tmp_path / "run"), "seed": 3, **extra}
    path = tmp_path / "config.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in fields.items()))
    return path


def test_prior_check_against_an_endpoint(tmp_path, val_rows, tool_server, monkeypatch, capsys):
    """Rows 0–1 always right, 2–3 right in 2 of 5 rollouts, 4–5 never: the counts and files follow."""
    from agentrft.agent.testing import running_chat_server

    by_prompt = {row.prompt: (i, row.reference_answer) for i, row in enumerate(val_rows)}
    answered: Counter[str] = Counter()
    lock = threading.Lock()

    def script(messages):
        if not any(m["role"] == "tool" for m in messages):
            return {"tool_calls": [("search", json.dumps({"query": question(messages)}))]}
        index, reference = by_prompt[question(messages)]
        with lock:
            answered[question(messages)] += 1
            k = answered[question(messages)]
        right = index < 2 or (index < 4 and k <= 2)
        return {"content": reference if right else "I do not know."}

    monkeypatch.setenv("PRIOR_TEST_TOKEN", TOOL_TOKEN)
    with running_chat_server(script, model="base-7b") as (url, log):
        config = write_config(tmp_path, val_rows, url, tool_server)
        filtered = tmp_path / "filtered.jsonl"
        main(["prior-check", str(config), "--n", "6", "--write-filtered", str(filtered), "--traces", str(tmp_path / "t.jsonl")])
    printed = capsys.readouterr().out
    assert "Counter({'always': 2, 'sometimes': 2, 'never': 2})" in printed
    assert "2/6 (33%) of rows are in the signal band — well over the 15%–30% rule of thumb." in printed
    assert "verdict: go" in printed
    results = read_models(tmp_path / "run" / "prior.jsonl", PriorResult)
    assert [(r.id, r.rollouts, r.successes) for r in results] == [
        (row.id, 5, s) for row, s in zip(val_rows, [5, 5, 2, 2, 0, 0])
    ]
    assert all(r.mean_tool_calls == 1.0 for r in results)
    assert [r.id for r in read_models(filtered, Row)] == [val_rows[2].id, val_rows[3].id]
    assert "(2 rows in the signal band)" in printed
    assert len(read_models(tmp_path / "t.jsonl", Trajectory)) == 30
    assert {r["model"] for r in log.requests} == {"base-7b"}  # the name /v1/models would list is used as given


def test_prior_check_with_the_untrained_local_model(tmp_path, val_rows, tool_server, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("PRIOR_TEST_TOKEN", TOOL_TOKEN)
    config = write_config(tmp_path, val_rows, str(tiny_model_dir), tool_server, max_new_tokens=16, temperature=0.7)
    main(["prior-check", str(config), "--n", "2", "--rollouts", "2", "--out", str(tmp_path / "p.jsonl")])
    printed = capsys.readouterr().out
    assert "Counter({'never': 2})" in printed and "verdict: fix the prior first" in printed
    assert len(read_models(tmp_path / "p.jsonl", PriorResult)) == 2


def test_prior_check_errors_are_one_line(tmp_path, val_rows, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        main(["prior-check", str(tmp_path / "missing.yaml")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'missing.yaml'}: no such file"

    from agentrft.agent.testing import running_chat_server

    with running_chat_server(lambda m: "42") as (url, _):
        config = write_config(tmp_path, val_rows, url, "http://127.0.0.1:9")
        with pytest.raises(SystemExit) as exit_info:
            main(["prior-check", str(config), "--n", "1", "--rollouts", "1", "--served-model", "m"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "127.0.0.1:9" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["prior-check", str(config), "--filter", "rows"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and err == "error: --filter: 'rows' is not one of band, slices"
