"""GRPO's plumbing through TRL on the tiny model: what one update does to the policy.

The rollouts go through the real agent loop and tool server; the policy's turns are scripted
(``ScriptedLocalPolicy``: the same token bookkeeping as a sampled turn), so each trajectory's generated tokens are known and the
grader can give them the rewards a test needs. Training is full-parameter with a rate high enough
for one step to show.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from agentrft.schema import Grade, Row, ToolResultTurn, Trajectory
from agentrft.config import config_from_dict

from conftest import TOOL_TOKEN

SEARCH = '<tool_call>\n{"name": "search", "arguments": {"query": "Atlas Corp revenue"}}\n</tool_call>'
RIGHT, WRONG = "Revenue: $107M", "Revenue: $999M"


def scripted(model: Any, tokenizer: Any, scripts: list[list[str]]) -> Any:
    """A scripted policy writing ``scripts[k][turn]`` for the k-th rollout of the batch."""
    from agentrft.agent.testing import ScriptedLocalPolicy

    order: dict[int, int] = {}

    def script(messages: list[dict[str, Any]]) -> str:
        k = order.setdefault(id(messages), len(order)) % len(scripts)  # one list per rollout, kept all along
        return scripts[k][sum(m["role"] == "assistant" for m in messages)]

    return ScriptedLocalPolicy(model, tokenizer, script)


def scripted_runner(tools_url: str, scripts: list[list[str]]) -> Any:
    from agentrft.agent.loop import RolloutSettings, rollout

    def run(rows, model, tokenizer, greedy, seed):  # type: ignore[no-untyped-def]
        settings = RolloutSettings(max_tool_calls=2, max_trajectory_tokens=1024, max_new_tokens=32, seed=seed)
        return rollout(rows, scripted(model, tokenizer, scripts), tools_url, TOOL_TOKEN, settings)

    return run


class AnswerGrader:
    """1 for the right figure, 0 for the wrong one; ``same`` gives every trajectory 0.5."""

    name = "answer"

    def __init__(self, same: bool = False) -> None:
        self.same = same

    def grade(self, row: Row, trajectory: Trajectory) -> Grade:
        if self.same:
            return Grade(reward=0.5, grader=self.name)
        return Grade(reward=1.0 if "107" in trajectory.output_text else 0.0, grader=self.name)


def one_step(tmp_path: Path, synth_dir: Path, model_dir: Path, url: str, grader: Any,
             monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> tuple[Any, list[dict[str, Any]]]:
    """One GRPO step on one prompt with two scripted rollouts; returns the result and TRL's loss inputs."""
    from trl import GRPOTrainer

    from agentrft.train.trainer import train

    seen: list[dict[str, Any]] = []
    original = GRPOTrainer._compute_loss

    @functools.wraps(original)
    def spy(self, model, inputs):  # type: ignore[no-untyped-def]
        seen.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in inputs.items()})
        return original(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", spy)
    monkeypatch.setenv("TOOL_BEARER", TOOL_TOKEN)
    data = dict(
        train_path=str(synth_dir / "research_train.jsonl"), val_path=None, base_model=str(model_dir),
        tools_url=url, group_size=2, batch_size=1, max_steps=1, temperature=1.0, kl_coef=0.03,
        learning_rate=3e-3, warmup_steps=0, seed=0, lora=None, bf16=False, output_dir=str(tmp_path / "run"),
        save_every=1, trace_samples=0,
    )
    data.update(overrides)
    torch.set_num_threads(1)
    result = train(config_from_dict(data), runner=scripted_runner(url, [[SEARCH, RIGHT], [SEARCH, WRONG]]),
                   grader=grader)
    return result, seen


def generated_logprob(model: Any, trajectory: Trajectory) -> float:
    """Sum of the model's log-probs of the trajectory's generated tokens (temperature 1)."""
    ids = torch.tensor([trajectory.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    picked = logp.gather(1, ids[0, 1:, None]).squeeze(1)
    mask = torch.tensor(trajectory.loss_mask[1:], dtype=torch.bool)
    return float(picked[mask].sum())


def trajectories(model: Any, tokenizer: Any, url: str, row: Row) -> list[Trajectory]:
    from agentrft.agent.loop import RolloutSettings, rollout

    settings = RolloutSettings(max_tool_calls=2, max_trajectory_tokens=1024, max_new_tokens=32)
    policy = scripted(model, tokenizer, [[SEARCH, RIGHT], [SEARCH, WRONG]])
    return rollout([row, row], policy, url, TOOL_TOKEN, settings)


def test_update_raises_the_better_completion_and_lowers_the_worse(
    tmp_path: Path, synth_dir: Path, tiny_model_dir: Path, tool_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, seen = one_step(tmp_path, synth_dir, tiny_model_dir, tool_server, AnswerGrader(), monkeypatch)
    assert result.steps == 1 and result.last_checkpoint is not None
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    row = Row.model_validate_json((synth_dir / "research_train.jsonl").read_text().splitlines()[0])
    before = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).float()
    right, wrong = trajectories(before, tokenizer, tool_server, row)
    after = AutoModelForCausalLM.from_pretrained(str(result.last_checkpoint)).float()
    assert generated_logprob(after, right) > generated_logprob(before, right) + 0.05
    assert generated_logprob(after, wrong) < generated_logprob(before, wrong) - 0.05

    # What TRL's loss saw: advantages of opposite sign, and a loss mask that is 1 exactly on the
    # policy's own turns and 0 on every tool result.
    [inputs] = seen
    assert inputs["advantages"].shape == (2,) and float(inputs["advantages"].prod()) < 0
    mask = (inputs["completion_mask"] * inputs["tool_mask"]).bool()
    for ids, row_mask in zip(inputs["completion_ids"].tolist(), mask.tolist()):
        trained = tokenizer.decode([i for i, m in zip(ids, row_mask) if m])
        masked = tokenizer.decode([i for i, m in zip(ids, row_mask) if not m])
        assert "search" in trained and ("107" in trained or "999" in trained)
        output = next(t.output for t in right.turns if isinstance(t, ToolResultTurn))
        assert output[:40] in masked and output[:40] not in trained


def test_a_group_with_equal_rewards_contributes_no_gradient(
    tmp_path: Path, synth_dir: Path, tiny_model_dir: Path, tool_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    from agentrft.train.metrics import read_metrics

    result, seen = one_step(tmp_path, synth_dir, tiny_model_dir, tool_server, AnswerGrader(same=True), monkeypatch)
    [inputs] = seen
    assert torch.count_nonzero(inputs["advantages"]) == 0
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert rows[-1].grad_norm == 0.0 and rows[-1].zero_std_groups == 1.0
    before = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    after = AutoModelForCausalLM.from_pretrained(str(result.last_checkpoint)).state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_a_few_sampled_steps_move_the_policy(
    tmp_path: Path, synth_dir: Path, tiny_model_dir: Path, tool_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sampled rollouts from the model itself (not scripted): three steps change a fixed trajectory's log-probs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrft.train.trainer import train
    from test_train import OddTokenGrader
    from test_train import scripted_runner as first_call_searches

    monkeypatch.setenv("TOOL_BEARER", TOOL_TOKEN)
    torch.set_num_threads(1)
    cfg = config_from_dict(dict(
        train_path=str(synth_dir / "research_train.jsonl"), val_path=None, base_model=str(tiny_model_dir),
        tools_url=tool_server, group_size=4, batch_size=2, max_steps=3, temperature=0.7, kl_coef=0.03,
        learning_rate=1e-3, warmup_steps=0, seed=0, lora=None, max_new_tokens=24, output_dir=str(tmp_path / "run"),
        save_every=3, trace_samples=0,
    ))
    result = train(cfg, runner=first_call_searches(tool_server, TOOL_TOKEN), grader=OddTokenGrader())
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    row = Row.model_validate_json((synth_dir / "research_train.jsonl").read_text().splitlines()[0])
    before = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).float()
    fixed, _ = trajectories(before, tokenizer, tool_server, row)
    after = AutoModelForCausalLM.from_pretrained(str(result.last_checkpoint)).float()
    assert abs(generated_logprob(after, fixed) - generated_logprob(before, fixed)) > 1e-3


def test_kl_cap_bounds_each_tokens_kl_estimate(
    tmp_path: Path, synth_dir: Path, tiny_model_dir: Path, tool_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reference that likes a token far more than the policy does: with kl_cap no token's term passes the cap."""
    from trl import GRPOTrainer

    from agentrft.train.metrics import read_metrics
    from agentrft.train.trainer import kl_log_ratio_limit

    raised: list[dict[str, torch.Tensor]] = []
    original = GRPOTrainer._generate_and_score_completions

    @functools.wraps(original)
    def reference_likes_one_token_more(self, inputs):  # type: ignore[no-untyped-def]
        output = original(self, inputs)
        ref = output["ref_per_token_logps"].clone()
        ref[:, 0] += 6.0  # each completion's first token: exp(6) - 7 ≈ 396 without a cap
        output["ref_per_token_logps"] = ref
        raised.append({"completion_ids": output["completion_ids"].clone(), "ref": ref.clone()})
        return output

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", reference_likes_one_token_more)
    result, seen = one_step(tmp_path, synth_dir, tiny_model_dir, tool_server, AnswerGrader(), monkeypatch, kl_cap=1.0)
    [inputs], [batch] = seen, raised
    # TRL may reorder a generation batch's rows before the loss: match them by their completions
    order = [next(j for j, ids in enumerate(batch["completion_ids"].tolist()) if ids == row)
             for row in inputs["completion_ids"].tolist()]
    uncapped = batch["ref"][order]
    ref, sampled = inputs["ref_per_token_logps"], inputs["sampling_per_token_logps"]
    mask = (inputs["completion_mask"] * inputs["tool_mask"]).bool()
    assert torch.all(ref[mask] <= sampled[mask] + kl_log_ratio_limit(1.0) + 1e-6)
    assert torch.all(ref[:, 0] < uncapped[:, 0] - 1.0)  # the raised tokens were capped …
    untouched = mask.clone()
    untouched[:, 0] = False
    assert torch.equal(ref[untouched], uncapped[untouched])  # … and no other token moved
    kl = read_metrics(result.run_dir / "metrics.jsonl")[-1].kl_to_ref
    assert kl is not None and 0 < kl <= 1.0 + 1e-3


def test_kl_log_ratio_limit_solves_the_estimate() -> None:
    import math

    from agentrft.train.trainer import kl_log_ratio_limit

    for cap in (1e-3, 0.5, 1.0, 10.0, 1e4):
        r = kl_log_ratio_limit(cap)
        assert r > 0 and math.isclose(math.expm1(r) - r, cap, rel_tol=1e-9)
