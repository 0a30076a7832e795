"""The bridge between agentrft's agent loop and TRL's ``GRPOTrainer``: a rollout function and a reward.

TRL owns the GRPO loss; agentrft owns the rollouts, so the loop that trains is the loop that
evaluates. TRL (1.x, experimental API) calls ``rollout_func(prompts, trainer)`` with this process's
slice of the generation batch — each prompt already repeated ``num_generations`` times, groups
contiguous — and expects one completion per entry:

- ``prompt_ids``: tokens before the policy's first generation (system prompt, question, tool specs);
- ``completion_ids``: everything after — the policy's turns *and* the tool results between them;
- ``logprobs``: sampling log-probs aligned with ``completion_ids`` (0.0 on tool tokens);
- ``env_mask``: 1 on tokens the policy generated, 0 on tool output and chat-template glue.

TRL multiplies ``env_mask`` into the loss mask, so a tool's output — the environment's words, not the
policy's — never gets a gradient; without that the policy would be rewarded for "writing" a filing.
Every other key is forwarded to reward functions by name: we pass the ``Trajectory`` itself so the
grader sees the same object evaluation grades, and ``row_id`` comes from the dataset column.
``check_trl_contract`` fails loudly if TRL changes this contract.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..agent.loop import rollout
from ..agent.policy import LocalPolicy
from ..agent.settings import fit_context
from ..config import TrainConfig
from ..schema import Grade, Row, ToolResultTurn, Trajectory
from .logprobs import GeneratedTokens
from .metrics import SLICE_METRIC_PREFIX

REQUIRED_KEYS = ("prompt_ids", "completion_ids", "logprobs")
ENV_MASK_KEY = "env_mask"


class RolloutRunner(Protocol):
    """Runs one rollout per row with a local model; ``greedy`` for validation, sampled for training.

    Example::

        def runner(rows, model, tokenizer, greedy, seed):
            policy = LocalPolicy(model, tokenizer, device=str(model.device))
            return rollout(rows, policy, tools_url, token, settings(greedy, seed))
    """

    def __call__(
        self, rows: list[Row], model: Any, tokenizer: Any, greedy: bool, seed: int | None
    ) -> list[Trajectory]: ...


def check_trl_contract() -> None:
    """Raise if the installed TRL no longer calls ``rollout_func`` the way this module assumes."""
    import trl
    from trl.trainer import grpo_trainer

    params = inspect.signature(grpo_trainer.GRPOTrainer.__init__).parameters
    if "rollout_func" not in params:
        raise RuntimeError(f"trl {trl.__version__}: GRPOTrainer has no rollout_func; agentrft needs trl>=1.0,<2")
    source = inspect.getsource(grpo_trainer.GRPOTrainer._generate)
    for needle in ("self.rollout_func(prompts, self)", '"env_mask"', *(f'"{key}"' for key in REQUIRED_KEYS)):
        if needle not in source:
            raise RuntimeError(f"trl {trl.__version__}: rollout_func contract changed ({needle} not found)")
    # vllm_rollouts.VLLMRollouts pushes weights through this hook before each rollout_func.
    if "self.vllm_generation.sync_weights()" not in source or "self._last_loaded_step" not in source:
        raise RuntimeError(f"trl {trl.__version__}: the weight-sync hook before rollout_func changed")
    # logprobs.GeneratedTokens leaves tool tokens' log-probs at 0: the loss must mask them out first.
    loss = inspect.getsource(inspect.unwrap(grpo_trainer.GRPOTrainer._compute_loss))
    needle = 'mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]'
    if needle not in loss:
        raise RuntimeError(f"trl {trl.__version__}: the loss no longer masks tool tokens the way agentrft relies on")
    # trainer.cap_kl (kl_cap) lowers the reference log-probs a generation batch hands the KL term.
    batch = inspect.getsource(grpo_trainer.GRPOTrainer._generate_and_score_completions)
    for needle in ('output["ref_per_token_logps"]', 'output["sampling_per_token_logps"]'):
        if needle not in batch:
            raise RuntimeError(f"trl {trl.__version__}: a generation batch no longer carries {needle[8:-2]}")
    if 'inputs["ref_per_token_logps"]' not in loss:
        raise RuntimeError(f"trl {trl.__version__}: the KL term no longer reads the batch's reference log-probs")


def to_trl_batch(trajectories: Sequence[Trajectory], pad_token_id: int) -> dict[str, Any]:
    """Split each trajectory at its prompt length into TRL's prompt/completion ids, masks and log-probs."""
    out: dict[str, list[Any]] = {"prompt_ids": [], "completion_ids": [], "logprobs": [], ENV_MASK_KEY: []}
    have_logprobs = all(t.logprobs is not None for t in trajectories)
    for t in trajectories:
        if t.token_ids is None or t.loss_mask is None or t.prompt_length is None:
            raise RuntimeError(
                f"trajectory {t.row_id}/{t.sample_index} has no token ids; training needs a local policy"
            )
        if len(t.loss_mask) != len(t.token_ids):
            raise RuntimeError(f"trajectory {t.row_id}: loss_mask and token_ids differ in length")
        cut = t.prompt_length
        if any(t.loss_mask[:cut]):
            raise RuntimeError(f"trajectory {t.row_id}: loss_mask marks prompt tokens as generated")
        completion, mask = list(t.token_ids[cut:]), list(t.loss_mask[cut:])
        if not completion:  # TRL reads completion_ids[-1]; an empty rollout gets one masked pad token
            completion, mask = [pad_token_id], [0]
        out["prompt_ids"].append(list(t.token_ids[:cut]))
        out["completion_ids"].append(completion)
        out[ENV_MASK_KEY].append(mask)
        if have_logprobs:
            sampled = iter(t.logprobs or [])
            out["logprobs"].append([next(sampled, 0.0) if m else 0.0 for m in mask])
    if not have_logprobs:
        out["logprobs"] = None  # type: ignore[assignment]  # TRL accepts None: no sampling log-probs
    return out


@dataclass
class StepRecord:
    """What the last training step's rollouts looked like, for the monitor (traces, tool calls)."""

    step: int
    trajectories: list[Trajectory] = field(default_factory=list)
    grades: list[Grade] = field(default_factory=list)


class AgentRollouts:
    """Owns the rows, the runner and the grader; hands TRL a ``rollout_func`` and a reward function."""

    def __init__(
        self,
        rows: Sequence[Row],
        runner: RolloutRunner,
        grader: Any,
        seed: int = 0,
        generated: GeneratedTokens | None = None,
    ) -> None:
        self.rows_by_id = {row.id: row for row in rows}
        # TRL hands the rollout function prompt text only; rows sharing a prompt roll out alike and
        # are told apart at grading time by the dataset's row_id column.
        self.rows_by_prompt: dict[str, Row] = {}
        for row in rows:
            self.rows_by_prompt.setdefault(row.prompt, row)
        self.runner = runner
        self.grader = grader
        self.seed = seed
        self.generated = generated
        self._lock = threading.Lock()
        self.last: StepRecord | None = None

    def dataset_rows(self) -> list[dict[str, str]]:
        """The training dataset TRL iterates: the prompt (TRL's column) and our row id."""
        return [{"prompt": row.prompt, "row_id": row.id} for row in self.rows_by_id.values()]

    def rollout_func(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        """TRL's rollout hook: run the agent loop on each prompt and return token-level results."""
        rows = [self._row_for(prompt) for prompt in prompts]
        model = trainer.accelerator.unwrap_model(trainer.model)
        tokenizer = trainer.processing_class
        step = trainer.state.global_step
        # Distinct seed per step and process, fixed by the config seed: reruns sample the same.
        seed = self.seed * 1_000_003 + step * 64 + trainer.accelerator.process_index
        was_training = model.training
        model.eval()  # no dropout while sampling; gradient checkpointing off for generation
        try:
            with torch.no_grad():
                trajectories = self.runner(rows, model, tokenizer, greedy=False, seed=seed)
        finally:
            model.train(was_training)
        if len(trajectories) != len(prompts):
            raise RuntimeError(f"rollout runner returned {len(trajectories)} trajectories for {len(prompts)} prompts")
        for index, trajectory in enumerate(trajectories):
            trajectory.sample_index = index % max(1, trainer.num_generations)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        batch = to_trl_batch(trajectories, pad)
        if self.generated is not None:
            self.generated.record(
                [p + c for p, c in zip(batch["prompt_ids"], batch["completion_ids"], strict=True)],
                [[0] * len(p) + m for p, m in zip(batch["prompt_ids"], batch[ENV_MASK_KEY], strict=True)],
            )
        batch["trajectory"] = trajectories
        with self._lock:
            self.last = StepRecord(step=step, trajectories=trajectories)
        return batch

    def _row_for(self, prompt: Any) -> Row:
        text = prompt if isinstance(prompt, str) else _last_user_text(prompt)
        row = self.rows_by_prompt.get(text)
        if row is None:
            raise RuntimeError(f"rollout_func got a prompt that is not in the training rows: {text[:80]!r}")
        return row

    def make_reward_func(self) -> Callable[..., list[float | None]]:
        """A TRL reward function that grades each trajectory with the configured grader."""

        def reward(
            prompts: list[Any],
            completions: list[Any],
            row_id: list[str],
            trajectory: list[Trajectory],
            log_metric: Callable[[str, float], None] | None = None,
            **_: Any,
        ) -> list[float | None]:
            grades = [self.grader.grade(self.rows_by_id[rid], traj) for rid, traj in zip(row_id, trajectory)]
            if log_metric is not None and trajectory:
                log_metric("tool_calls", sum(t.n_tool_calls for t in trajectory) / len(trajectory))
                results = [turn for t in trajectory for turn in t.turns if isinstance(turn, ToolResultTurn)]
                log_metric("tool_errors", sum(r.is_error for r in results) / len(results) if results else 0.0)
                log_metric("no_grade", sum(not g.graded for g in grades) / len(grades))
                log_metric("answered", sum(t.stop_reason == "answer" for t in trajectory) / len(trajectory))
                for name, value in reward_by_slice([self.rows_by_id[rid] for rid in row_id], grades).items():
                    log_metric(SLICE_METRIC_PREFIX + name, value)
                step_metrics = getattr(self.runner, "step_metrics", None)  # e.g. the vLLM weight push
                for name, value in (step_metrics() if step_metrics else {}).items():
                    log_metric(name, value)
            with self._lock:
                last = self.last
                if last is not None and len(last.trajectories) == len(trajectory):
                    if all(a is b for a, b in zip(last.trajectories, trajectory)):
                        last.grades = grades
            # None is "no grade": TRL turns it into NaN and gives that sample no advantage.
            return [g.reward for g in grades]

        reward.__name__ = getattr(self.grader, "name", "grader")
        return reward


def agent_loop_runner(cfg: TrainConfig, token: str | None) -> RolloutRunner:
    """The default runner: agentrft's agent loop with a LocalPolicy on the model being trained."""

    def run(rows: list[Row], model: Any, tokenizer: Any, greedy: bool, seed: int | None) -> list[Trajectory]:
        policy = LocalPolicy(model, tokenizer, device=str(next(model.parameters()).device))
        settings = fit_context(cfg.rollout_settings(greedy=greedy, seed=seed), policy)
        return rollout(rows, policy, cfg.tools_url, token, settings, samples_per_row=1)

    return run


def reward_by_slice(rows: Sequence[Row], grades: Sequence[Grade]) -> dict[str, float]:
    """Mean graded reward per slice of the rows (``Row.slice``); a slice with nothing graded is left out."""
    by_slice: dict[str, list[Grade]] = {}
    for row, grade in zip(rows, grades, strict=True):
        by_slice.setdefault(row.slice, []).append(grade)
    means = {name: mean_reward(group) for name, group in sorted(by_slice.items())}
    return {name: value for name, value in means.items() if value is not None}


def mean_reward(grades: Sequence[Grade]) -> float | None:
    """Mean of the graded rewards; None when nothing could be graded."""
    values = [g.reward for g in grades if g.reward is not None and math.isfinite(g.reward)]
    return sum(values) / len(values) if values else None


def _last_user_text(messages: Any) -> str:
    for message in reversed(list(messages)):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content", "")
            return content if isinstance(content, str) else str(content)
    return str(messages)


__all__ = [
    "AgentRollouts",
    "RolloutRunner",
    "StepRecord",
    "agent_loop_runner",
    "check_trl_contract",
    "mean_reward",
    "reward_by_slice",
    "to_trl_batch",
]
