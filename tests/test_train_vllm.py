"""GRPO with rollouts through a real vLLM server (CPU build): weights pushed after every optimizer step.

The rollouts of each step come from the server; before them the trained model's new weights are pushed
(full weights reloaded, or the LoRA adapter loaded in place), and at that moment the engine's
log-probs of a probe trajectory must equal the training model's. TRL's importance-sampling correction
for the engine/trainer mismatch is on.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from agentrft.config import config_from_dict
from agentrft.train.metrics import read_metrics
from agentrft.train.vllm_rollouts import VLLMRollouts, _groups

from conftest import TOOL_TOKEN
from test_train import OddTokenGrader


def trainer_logprobs(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_grpo_steps_with_vllm_rollouts_keep_the_engine_in_sync(
    lora: bool, tmp_path: Path, synth_dir: Path, tiny_model_dir: Path, tool_server: str, vllm_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trl import GRPOTrainer

    from agentrft.agent.vllm import VLLMPolicy, save_weights
    from agentrft.train.trainer import train

    checks: list[tuple[int, float]] = []
    push = VLLMRollouts._push

    def push_and_probe(self: VLLMRollouts, model: Any, step: int) -> None:
        push(self, model, step)
        probe = self.trainer.rollouts.last.trajectories[0].token_ids
        engine = torch.tensor(self.policies[0].score(probe))
        was_training = model.training
        model.eval()
        ours = trainer_logprobs(model, probe)
        model.train(was_training)
        checks.append((step, float((engine - ours).abs().mean())))

    monkeypatch.setattr(VLLMRollouts, "_push", push_and_probe)
    corrected: list[bool] = []
    original = GRPOTrainer._compute_loss

    @functools.wraps(original)
    def spy(self, model, inputs):  # type: ignore[no-untyped-def]
        corrected.append("importance_sampling_ratio" in inputs)
        return original(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", spy)
    monkeypatch.setenv("TOOL_BEARER", TOOL_TOKEN)
    torch.set_num_threads(1)
    cfg = config_from_dict(dict(
        train_path=str(synth_dir / "research_train.jsonl"), val_path=None, base_model=str(tiny_model_dir),
        tools_url=tool_server, group_size=4, batch_size=2, max_steps=3, temperature=0.7, kl_coef=0.03,
        learning_rate=3e-3 if lora else 1e-3, warmup_steps=0, seed=0, max_new_tokens=24,
        max_trajectory_tokens=1024, max_tool_calls=2, output_dir=str(tmp_path / "run"), save_every=3,
        trace_samples=0, bf16=False, use_vllm=True, vllm_urls=[vllm_server.url],
        lora={"rank": 8, "alpha": 16} if lora else None,
    ))
    try:
        result = train(cfg, grader=OddTokenGrader())
    finally:  # the session's server serves the base model again, for the other tests
        restore = VLLMPolicy(vllm_server.url)
        restore.reload_weights(save_weights(_base(tiny_model_dir), tmp_path / "base-weights"))

    assert result.steps == 3 and result.aborted is None
    assert [step for step, _ in checks] == [1, 2]  # before the rollouts of steps 2 and 3
    print("engine vs trainer, mean |Δ| per push:", checks)
    assert all(delta <= 1e-4 for _, delta in checks), checks
    assert corrected and all(corrected)  # TRL's importance-sampling correction reached the loss
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert [row.weight_sync_s is not None for row in rows[1:]] == [False, True, True]
    assert len(list((result.run_dir / "vllm-weights").glob("step-*"))) == 1  # only the newest is kept


def _base(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)


def test_groups_tell_a_groups_copies_of_a_row_apart() -> None:
    from agentrft.schema import Row

    a, b = (Row(id=i, prompt=f"question {i}", reference_answer="1") for i in "ab")
    assert _groups([a, a, a, b, b, b]) == ([a, b], 3)
    assert _groups([a, b]) == ([a, b], 1)
    assert _groups([a, b, a]) == ([a, b, a], 1)
