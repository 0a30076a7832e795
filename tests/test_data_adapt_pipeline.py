"""Adapted benchmark rows go through the rest of the pipeline unchanged: the tool server serves the
adapted corpus, ``eval`` grades them with the graders ``data adapt`` wrote, ``prior-check`` runs on them.

A scripted endpoint that searches, reads and answers with the reference shows every grader file
gives full credit where it should; the untrained tiny model shows the same commands run on a local
model (its rewards say nothing about the data).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import TOOL_TOKEN

from agentrft.agent.testing import running_chat_server
from agentrft.cli import main
from agentrft.jsonl import read_models
from agentrft.schema import EvalRecord, PriorResult, Row, Trajectory
from agentrft.tools.local_server import running_server


def question(messages: list[dict]) -> str:
    """The row's prompt: the first user message (a system prompt may come before it)."""
    return next(m["content"] for m in messages if m["role"] == "user")

TATQA = Path(__file__).parent / "data" / "benchmarks" / "tatqa_sample.json"
KINDS = ("numeric", "span", "multi_span")


@pytest.fixture(scope="module")
def adapted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adapted")
    main(["data", "adapt", str(TATQA), "--format", "tatqa", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def adapted_server(adapted: Path):
    with running_server(corpus_dir=adapted / "corpus", token=TOOL_TOKEN) as url:
        yield url


@pytest.fixture(scope="module")
def config(adapted: Path, adapted_server: str) -> Path:
    token = adapted / "token"
    token.write_text(TOOL_TOKEN + "\n")
    path = adapted / "config.yaml"
    fields = {"base_model": "unused", "tools_url": adapted_server, "tools_token_file": str(token),
              "output_dir": str(adapted / "run"), "max_new_tokens": 24, "max_tool_calls": 2, "seed": 0}
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in fields.items()))
    return path


def researcher(rows: dict[str, Row]):
    """Search with the question, read the first hit, answer with the row's reference."""

    def script(messages: list[dict[str, Any]]) -> dict[str, Any]:
        tools = [m for m in messages if m["role"] == "tool"]
        if not tools:
            return {"tool_calls": [("search", json.dumps({"query": question(messages), "top_k": 1}))]}
        if len(tools) == 1:
            path = tools[0]["content"].split(" (score")[0]
            return {"tool_calls": [("read", json.dumps({"path": path}))]}
        return {"content": f"From the report: {rows[question(messages)].reference_answer}."}

    return script


def test_a_researcher_gets_full_credit_from_every_adapted_grader(adapted: Path, config: Path) -> None:
    for kind in KINDS:
        data = adapted / f"tatqa_sample_{kind}.jsonl"
        rows = {row.prompt: row for row in read_models(data, Row)}
        out = adapted / "eval" / f"{kind}.jsonl"
        with running_chat_server(researcher(rows), model="researcher") as (url, _):
            main(["eval", "--model", url, "--data", str(data), "--out", str(out), "--config", str(config),
                  "--grader", str(adapted / "graders" / f"{kind}.json")])
        records = read_models(out, EvalRecord)
        assert sorted(r.id for r in records) == sorted(row.id for row in rows.values())
        assert all(r.reward == 1.0 and r.tool_calls == 2 for r in records), [(r.id, r.reason) for r in records]
        traces = read_models(out.with_name(f"{kind}.traces.jsonl"), Trajectory)
        for trace in traces:  # search found the row's own document, and read served it
            row = next(r for r in rows.values() if r.id == trace.row_id)
            read = trace.tool_calls[1]
            assert read.args["path"] == row.expected.evidence_path
            result = next(t for t in trace.turns if getattr(t, "call_id", None) == read.call_id and t.type == "tool_result")
            assert not result.is_error and "TAT-QA context" in result.output


def test_the_tiny_model_runs_eval_and_prior_check_on_adapted_rows(
    adapted: Path, config: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    span_rows = adapted / "tatqa_sample_span.jsonl"
    out = adapted / "eval" / "tiny_span.jsonl"
    main(["eval", "--model", str(tiny_model_dir), "--data", str(span_rows), "--out", str(out), "--config", str(config),
          "--grader", str(adapted / "graders" / "span.json")])
    records = read_models(out, EvalRecord)
    assert len(records) == len(read_models(span_rows, Row))
    assert all(r.reward is not None and r.task_type == "span" for r in records)
    numeric = adapted / "tatqa_sample_numeric.jsonl"
    prior = adapted / "prior.jsonl"
    main(["prior-check", str(config), "--data", str(numeric), "--model", str(tiny_model_dir), "--n", "2",
          "--rollouts", "2", "--out", str(prior)])
    assert "verdict:" in capsys.readouterr().out
    assert [r.rollouts for r in read_models(prior, PriorResult)] == [2, 2]
