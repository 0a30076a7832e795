"""End to end: evaluate the tiny model twice through the real tool server, then compare, inspect, report.

The tiny model is untrained, so its rewards are ~0; these tests check structure and bookkeeping
(records ↔ traces, resuming, K samples, the commands reading what eval wrote), not scores.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import TOOL_TOKEN

from agentrft.cli import main
from agentrft.jsonl import read_models, write_models
from agentrft.schema import EvalRecord, Row, Trajectory


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "token"
    path.write_text(TOOL_TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny-run"
    (run / "eval").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "val_reward": 0.1 * s if s % 2 == 0 else None, "tool_calls": 3 - 0.2 * s,
                            "kl_to_ref": 0.01 * s, "loss": 0.5 - 0.05 * s}) + "\n" for s in range(6))
    )
    (run / "config.yaml").write_text("group_size: 4\nkl_coef: 0.01\nmax_steps: 5\n")
    return run


@pytest.fixture(scope="module")
def eval_config(tool_server: str, token_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training config whose tool server, token and rollout limits eval takes (short turns keep it fast)."""
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(
        f"tools_url: {tool_server}\ntools_token_file: {token_file}\nmax_new_tokens: 24\nmax_tool_calls: 2\n"
    )
    return path


@pytest.fixture(scope="module")
def evaluations(tiny_model_dir: Path, synth_dir: Path, eval_config: Path, run_dir: Path) -> dict:
    """Base: greedy on 4 rows, then resumed to 5. Tuned: 2 samples per row at temperature 1."""
    val = synth_dir / "research_val.jsonl"
    base, tuned = run_dir / "eval" / "base.jsonl", run_dir / "eval" / "tuned.jsonl"
    common = ["--model", str(tiny_model_dir), "--data", str(val), "--config", str(eval_config)]
    main(["eval", *common, "--out", str(base), "--limit", "4"])
    first = read_models(base, EvalRecord)
    main(["eval", *common, "--out", str(base), "--limit", "5"])
    main(["eval", *common, "--out", str(tuned), "--limit", "5", "--samples", "2", "--temperature", "1.0", "--seed", "1",
          "--grader", "numeric"])
    return {"val": val, "base": base, "tuned": tuned, "first": first}


def test_eval_writes_one_record_per_row_and_sample_with_its_trace(evaluations: dict) -> None:
    rows = read_models(evaluations["val"], Row)[:5]
    for path, samples in ((evaluations["base"], 1), (evaluations["tuned"], 2)):
        records = read_models(path, EvalRecord)
        assert sorted((r.id, r.sample_index) for r in records) == sorted(
            (row.id, k) for row in rows for k in range(samples)
        )
        traces = path.with_name(path.stem + ".traces.jsonl").read_text().splitlines()
        assert len(traces) == len(records)
        by_id = {row.id: row for row in rows}
        for rec in records:
            assert rec.trace_file == path.stem + ".traces.jsonl"
            trajectory = Trajectory.model_validate_json(traces[rec.trace_line - 1])
            assert (trajectory.row_id, trajectory.sample_index) == (rec.id, rec.sample_index)
            assert rec.tool_calls == trajectory.n_tool_calls and rec.answer == trajectory.output_text
            assert rec.stop_reason == trajectory.stop_reason
            assert rec.task_type == by_id[rec.id].metadata.task_type
            assert rec.difficulty == by_id[rec.id].metadata.difficulty
            assert rec.reward is None or 0.0 <= rec.reward <= 1.0
            assert rec.reason  # every grade says why
            # The config gives no system prompt, so none is sent: the row's prompt opens the conversation.
            assert trajectory.turns[0].content == by_id[rec.id].prompt


def test_eval_resumes_where_it_stopped(evaluations: dict) -> None:
    first, records = evaluations["first"], read_models(evaluations["base"], EvalRecord)
    assert len(first) == 4 and len(records) == 5
    assert [r.model_dump() for r in records[:4]] == [r.model_dump() for r in first]  # untouched
    assert [r.trace_line for r in records] == list(range(1, 6))


def test_eval_is_greedy_by_default(
    evaluations: dict, tiny_model_dir: Path, eval_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    again = tmp_path / "again.jsonl"
    main(["eval", "--model", str(tiny_model_dir), "--data", str(evaluations["val"]), "--config", str(eval_config),
          "--out", str(again), "--limit", "2"])
    assert capsys.readouterr().out.startswith(f"wrote 2 records to {again}")
    fresh = again.with_name("again.traces.jsonl").read_text().splitlines()
    stored = evaluations["base"].with_name("base.traces.jsonl").read_text().splitlines()
    for line_a, line_b in zip(fresh, stored[:2], strict=True):
        a, b = Trajectory.model_validate_json(line_a), Trajectory.model_validate_json(line_b)
        assert a.token_ids == b.token_ids and a.turns == b.turns


def test_eval_hands_the_loop_whole_rows_in_calls_of_about_rollouts_per_call(
    evaluations: dict, tiny_model_dir: Path, eval_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import agentrft.agent.loop as loop
    import agentrft.evaluate.run as run

    calls: list[tuple[int, int]] = []
    real = run.run_rollouts

    async def counting(rows, policy, tools, settings, samples_per_row=1, progress=None):  # type: ignore[no-untyped-def]
        calls.append((len(rows), samples_per_row))
        return await real(rows, policy, tools, settings, samples_per_row, progress)

    monkeypatch.setattr(run, "run_rollouts", counting)
    monkeypatch.setattr(loop, "ROLLOUTS_PER_CALL", 4)
    out = tmp_path / "calls.jsonl"
    main(["eval", "--model", str(tiny_model_dir), "--data", str(evaluations["val"]), "--config", str(eval_config),
          "--out", str(out), "--limit", "5", "--samples", "2", "--temperature", "1.0", "--seed", "1"])
    assert calls == [(2, 2), (2, 2), (1, 2)]  # 4 rollouts a call, every sample of a row in the same one
    records = read_models(out, EvalRecord)
    rows = read_models(evaluations["val"], Row)[:5]
    assert [(r.id, r.sample_index) for r in records] == [(row.id, k) for row in rows for k in range(2)]


def test_eval_refuses_to_mix_models_and_names_bad_input(
    evaluations: dict, tiny_model_dir: Path, eval_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    other = tmp_path / "other.jsonl"
    write_models(other, [EvalRecord(id="val-0001", model="some-other-model", reward=1.0)])
    cases = (
        (["--model", str(tiny_model_dir), "--out", str(other)], "holds results of model some-other-model"),
        (["--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "x.jsonl")], "cannot load a model"),
        (["--model", str(tiny_model_dir), "--out", str(tmp_path / "y.jsonl"), "--token-file", str(tmp_path / "nope")],
         "--token-file"),
    )
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", "--data", str(evaluations["val"]), "--config", str(eval_config), *argv])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x.jsonl").exists()


def test_compare_inspect_and_report_read_what_eval_wrote(
    evaluations: dict, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["compare", str(evaluations["base"]), str(evaluations["tuned"]), "--json"])
    data = json.loads(capsys.readouterr().out)
    base = {r.id: r.reward for r in read_models(evaluations["base"], EvalRecord)}
    tuned: dict[str, list[float]] = {}
    for r in read_models(evaluations["tuned"], EvalRecord):
        if r.reward is not None:
            tuned.setdefault(r.id, []).append(r.reward)
    paired = [rid for rid, reward in base.items() if reward is not None and rid in tuned]
    assert data["n"] == len(paired) > 0
    expected = sum(sum(tuned[rid]) / len(tuned[rid]) - base[rid] for rid in paired) / len(paired)
    assert data["mean_d_reward"] == pytest.approx(expected)
    assert data["improved"] + data["regressed"] + data["unchanged"] == data["n"]
    assert sorted(data["ungraded"]) == sorted(rid for rid in base if rid not in paired)

    main(["compare", str(evaluations["base"]), str(evaluations["tuned"])])
    lines = capsys.readouterr().out.splitlines()
    n = data["n"]
    assert re.fullmatch(r"mean Δreward: [+-]\d\.\d{3}", lines[0])
    assert re.fullmatch(r"mean Δtools:  [+-]\d+\.\d{2}", lines[1])
    assert lines[2:5] == [
        f"improved:  {data['improved']}/{n}", f"regressed: {data['regressed']}/{n}", f"unchanged: {data['unchanged']}/{n}",
    ]

    main(["inspect", str(evaluations["base"]), str(evaluations["tuned"]), "--rows", str(evaluations["val"])])
    out = capsys.readouterr().out
    assert out.startswith(f"{data['regressed']} of {n} rows regressed")
    assert out.count("=== ") == min(5, data["regressed"])

    main(["report", str(run_dir)])
    assert capsys.readouterr().out == f"wrote {run_dir / 'report.html'}\n"
    html = (run_dir / "report.html").read_text()
    assert html.count('<figure class="curve"><svg') == 4
    assert len(re.findall(r'<details class="row ', html)) == n
    assert "group_size: 4" in html


def test_eval_through_an_endpoint_then_compare_with_the_tiny_model(
    evaluations: dict, eval_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scripted OpenAI-compatible endpoint plays a tuned agent: search once, then answer the reference
    (except on one row). Against the untrained tiny model, compare must count those as improvements."""
    from agentrft.agent.testing import running_chat_server

    rows = read_models(evaluations["val"], Row)[:5]
    answers = {row.prompt: row.reference_answer for row in rows}
    wrong = rows[1].prompt

    def agent(messages: list[dict]) -> dict:
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        if not any(m["role"] == "tool" for m in messages):
            return {"content": None, "tool_calls": [("search", json.dumps({"query": prompt}))]}
        return {"content": "I cannot tell" if prompt == wrong else answers[prompt]}

    out = tmp_path / "endpoint.jsonl"
    with running_chat_server(agent) as (url, log):
        main(["eval", "--model", url, "--data", str(evaluations["val"]), "--config", str(eval_config),
              "--out", str(out), "--limit", "5"])
    capsys.readouterr()
    assert log.requests[0]["model"] == "scripted"  # discovered from GET /v1/models
    assert log.requests[0]["temperature"] == 0.0  # greedy by default
    records = {r.id: r for r in read_models(out, EvalRecord)}
    assert {rid: r.tool_calls for rid, r in records.items()} == {row.id: 1 for row in rows}
    assert records[rows[1].id].reward == 0.0
    assert all(records[row.id].reward == 1.0 for row in rows if row.prompt != wrong)

    main(["compare", str(evaluations["base"]), str(out), "--json"])
    data = json.loads(capsys.readouterr().out)
    base = {r.id: r for r in read_models(evaluations["base"], EvalRecord)}
    paired = [rid for rid in records if base[rid].reward is not None]
    assert data["n"] == len(paired) > 0
    assert data["improved"] == sum(1 for rid in paired if records[rid].reward > base[rid].reward) >= 1
    assert data["mean_d_tools"] == pytest.approx(sum(1 - base[rid].tool_calls for rid in paired) / len(paired))
