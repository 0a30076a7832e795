"""``agentrft sft``: demonstrations from chat logs, trajectories and eval records, and the warm start on them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agentrft.agent.loop import rollout
from agentrft.agent.settings import RolloutSettings
from agentrft.agent.testing import ScriptedLocalPolicy, running_chat_server, tool_call_text
from agentrft.cli import main
from agentrft.demonstrations import read_demonstrations
from agentrft.errors import UserError
from agentrft.jsonl import read_models, write_models
from agentrft.schema import EvalRecord, Row
from conftest import TOOL_TOKEN


@pytest.fixture(scope="module")
def rows(synth_dir: Path) -> list[Row]:
    return read_models(synth_dir / "research_val.jsonl", Row)[:4]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def question(messages: list[dict]) -> str:
    return next(m["content"] for m in messages if m["role"] == "user")


def research_script(messages: list[dict]) -> str:
    """Some text and a search, then read the top hit, then an answer."""
    results = [m for m in messages if m["role"] == "tool"]
    if not results:
        return "Searching first.\n" + tool_call_text("search", {"query": question(messages), "top_k": 2})
    if len(results) == 1:
        return tool_call_text("read", {"path": re.search(r"(\S+\.html)", results[0]["content"]).group(1)})
    return "Revenue: $210M"


def test_a_rollout_renders_back_to_the_tokens_it_was_sampled_as(tiny_model_dir, tool_server, rows, tokenizer, tmp_path):
    """A demonstration made from a trajectory is the conversation the policy saw and wrote, token for token,
    and the warm start's loss falls on exactly the tokens the policy generated."""
    from transformers import AutoModelForCausalLM

    from agentrft.sft import encode_example

    policy = ScriptedLocalPolicy(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, research_script)
    settings = RolloutSettings(seed=0, max_trajectory_tokens=8192, system_prompt="Answer from the filings.")
    trajectories = rollout(rows[:2], policy, tool_server, TOOL_TOKEN, settings)
    traces = tmp_path / "traces.jsonl"
    write_models(traces, trajectories)
    found = read_demonstrations([traces], {row.id: row for row in rows})
    assert len(found.kept) == 2 and not found.left_out
    for demo, trajectory in zip(found.kept, trajectories):
        assert [m["role"] for m in demo.messages] == ["system", "user", "assistant", "tool", "assistant", "tool",
                                                      "assistant"]
        assert demo.messages[2]["content"] == "Searching first." and len(demo.messages[2]["tool_calls"]) == 1
        example = encode_example(tokenizer, demo.messages, demo.tools)
        n = len(trajectory.token_ids)
        assert example["input_ids"][:n] == trajectory.token_ids
        assert example["assistant_masks"][:n] == trajectory.loss_mask
        assert not any(example["assistant_masks"][n:])  # the template's closing newline carries no loss


def test_eval_records_above_the_reward_line_become_demonstrations(tool_server, rows, tmp_path):
    """Rejection sampling: eval on an endpoint that is right on half the rows, keep the rollouts graded 1."""
    right = {rows[0].prompt, rows[2].prompt}

    def script(messages):
        if not any(m["role"] == "tool" for m in messages):
            return {"tool_calls": [("search", json.dumps({"query": question(messages)}))]}
        prompt = question(messages)
        row = next(r for r in rows if r.prompt == prompt)
        return {"content": row.reference_answer if prompt in right else "I do not know."}

    data, token, config = tmp_path / "rows.jsonl", tmp_path / "token", tmp_path / "config.yaml"
    write_models(data, rows)
    token.write_text(TOOL_TOKEN)
    config.write_text(f"tools_url: {tool_server}\ntools_token_file: {token}\n")
    records = tmp_path / "eval.jsonl"
    with running_chat_server(script) as (url, _):
        main(["eval", "--model", url, "--data", str(data), "--config", str(config), "--out", str(records),
              "--grader", "numeric"])
    assert sorted(r.reward for r in read_models(records, EvalRecord)) == [0.0, 0.0, 1.0, 1.0]
    found = read_demonstrations([records], {row.id: row for row in rows}, min_reward=1.0)
    assert found.left_out == {"reward below 1": 2}
    assert sorted(question(d.messages) for d in found.kept) == sorted(right)
    for demo in found.kept:
        call = demo.messages[1]["tool_calls"][0]
        assert demo.messages[2] == {"role": "tool", "tool_call_id": call["id"], "name": "search",
                                    "content": demo.messages[2]["content"]}
        assert demo.messages[-1]["role"] == "assistant" and demo.tools == [
            s.model_dump(exclude_none=True) for s in rows[0].tools]
    assert len(read_demonstrations([records], {row.id: row for row in rows}).kept) == 4  # no line: all of them


def chat_line(answer: str, weight: int | None = None) -> dict:
    first = {"role": "assistant", "content": "Let me think."}
    if weight is not None:
        first["weight"] = weight
    return {"messages": [{"role": "user", "content": "What was Atlas Corp's Q3 2025 revenue?"}, first,
                         {"role": "user", "content": "And the figure?"}, {"role": "assistant", "content": answer}]}


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "demos.jsonl:2: "),
    ("[1, 2]", "demos.jsonl:2: expected an object, got an array"),
    ('{"prompt": "hi"}', "demos.jsonl:2: not a demonstration"),
    ('{"messages": []}', "demos.jsonl:2: messages: expected a non-empty list"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "demos.jsonl:2: messages.0.role"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "demos.jsonl:2: messages: no assistant message"),
    ('{"row_id": "r1", "turns": []}', "demos.jsonl:2: a trajectory needs its row's tool specs"),
    ('{"id": "r1", "trace_file": "missing.jsonl", "trace_line": 1, "reward": 1.0}', "demos.jsonl:2: its trace:"),
])
def test_a_line_that_is_no_demonstration_is_an_error_naming_it(tmp_path, line, message):
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps(chat_line("Revenue: $12M")) + "\n" + line + "\n")
    with pytest.raises(UserError, match=re.escape(message)):
        read_demonstrations([path])


def test_sft_learns_the_assistant_turns_and_skips_weight_zero(tiny_model_dir, tokenizer, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    from agentrft.demonstrations import _weighted
    from agentrft.sft import encode_example, mask_spans

    demos = tmp_path / "demos.jsonl"
    lines = [chat_line(f"Revenue: ${n}M", weight=0) for n in (12, 40, 75, 310)]
    demos.write_text("".join(json.dumps(line) + "\n" for line in lines))
    kept = read_demonstrations([demos]).kept
    plain = [{k: v for k, v in m.items() if k != "weight"} for m in kept[0].messages]
    example = encode_example(tokenizer, plain, [])
    spans = mask_spans(example["assistant_masks"])
    assert len(spans) == 2 and mask_spans(_weighted(example["assistant_masks"], kept[0])) == spans[1:]

    def answer_logprob(model_dir: Path) -> float:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        ids = torch.tensor([example["input_ids"]])
        with torch.no_grad():
            logprobs = model(ids).logits[0, :-1].log_softmax(-1)
        start, end = spans[1]
        return sum(logprobs[i - 1, example["input_ids"][i]].item() for i in range(start, end))

    out = tmp_path / "warm"
    main(["sft", "--model", str(tiny_model_dir), "--demos", str(demos), "--out", str(out), "--epochs", "8",
          "--lr", "3e-3", "--batch-size", "4"])
    printed = capsys.readouterr().out
    assert "Demonstrations: 4 kept" in printed and f"Saved the warm-started model to {out}" in printed
    assert answer_logprob(out) > answer_logprob(tiny_model_dir) + 1.0
    with pytest.raises(SystemExit):  # the folder now holds a model: never overwritten
        main(["sft", "--model", str(tiny_model_dir), "--demos", str(demos), "--out", str(out)])
    assert "not empty" in capsys.readouterr().err
