"""One GRPO step of 8 prompts × 8 trajectories, phase by phase: agentrft against TRL's GRPOTrainer in the same run.

All three rows train the same model (the demo's warm-started tiny Qwen2, every weight trainable) on the
same rows with the same hyperparameters (learning rate, β, temperature, 8 prompts × 8, the demo's
grader) against the same tool server, in a process of its own as ``agentrft tools serve`` runs:

- TRL: ``GRPOTrainer(tools=[search, list, read])`` as the tutorial sets it up, with its own tool loop and
  its own loss path (its fused LM head, which on a CPU scores every padded position), micro-batches of
  one group, torch's default threads.
- agentrft with TRL's head: ``agentrft train`` with agentrft's rollouts (``rollout_func``) but TRL's fused
  head left in place, micro-batches of one group: the loss path as TRL ships it.
- agentrft: ``agentrft train`` as the demo runs it (``examples/tiny_config.yaml``): the compact log-prob
  forward (``agentrft/train/logprobs.py``), the whole step in one micro-batch.

Phases, timed around TRL's own methods: rollouts (``_generate``), grading (``_calculate_rewards``), the
reference forward (the rest of ``_generate_and_score_completions``: the frozen reference's log-probs),
policy forward and loss (``_compute_loss``), backward, optimizer step, and the rest of the step (TRL's
bookkeeping). The first step of each row is a warm-up; the table shows the median of the others. Run:
``python bench/train_step.py [--model DIR] [--steps 5]`` (without --model: the demo's cached model
under ``.cache/agentrft``, else a tiny model built and warm-started into bench/.cache once).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rollout import TOKEN, ensure_model, tool_server_process, trl_tools  # noqa: E402  (bench/rollout.py)

from agentrft.config import config_from_dict  # noqa: E402  (this checkout's, ROOT first on the path)
from agentrft.filings.model.prompts import READ_BUDGET_CHARS, SYSTEM_PROMPT  # noqa: E402
from agentrft.filings.synth import synth  # noqa: E402
from agentrft.graders import load_grader  # noqa: E402
from agentrft.jsonl import read_models  # noqa: E402
from agentrft.schema import MessageTurn, Row, Trajectory  # noqa: E402

PHASES = ("rollouts", "grading", "reference forward", "policy forward + loss", "backward", "optimizer", "other")


class PhaseClock:
    """Seconds per phase of each optimizer step, from wrappers around TRL's and torch's methods."""

    def __init__(self) -> None:
        self.current: dict[str, float] = collections.defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self._step_start = 0.0

    def wrap(self, owner: Any, name: str, phase: str) -> Callable[[], None]:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.current[phase] += time.perf_counter() - start

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)

    def begin_step(self) -> None:
        self.current = collections.defaultdict(float)
        self._step_start = time.perf_counter()

    def end_step(self) -> None:
        total = time.perf_counter() - self._step_start
        phases = dict(self.current)
        # _generate_and_score_completions holds rollouts, grading and the reference forward
        outer = phases.pop("generate and score", 0.0)
        phases["reference forward"] = max(0.0, outer - phases.get("rollouts", 0.0) - phases.get("grading", 0.0))
        phases["other"] = max(0.0, total - sum(phases.values()))
        phases["total"] = total
        self.steps.append(phases)


@contextlib.contextmanager
def timed_trainer(clock: PhaseClock) -> Iterator[None]:
    """Time every GRPOTrainer built inside the block, step by step."""
    import torch
    from accelerate import Accelerator
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    undo = [
        clock.wrap(GRPOTrainer, "_generate", "rollouts"),
        clock.wrap(GRPOTrainer, "_calculate_rewards", "grading"),
        clock.wrap(GRPOTrainer, "_generate_and_score_completions", "generate and score"),
        clock.wrap(GRPOTrainer, "_compute_loss", "policy forward + loss"),
        clock.wrap(Accelerator, "backward", "backward"),
        clock.wrap(torch.optim.AdamW, "step", "optimizer"),
    ]

    class Steps(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.begin_step()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.end_step()

    init = GRPOTrainer.__init__

    @functools.wraps(init)
    def with_callback(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), Steps()]
        init(self, *args, **kwargs)

    GRPOTrainer.__init__ = with_callback
    try:
        yield
    finally:
        GRPOTrainer.__init__ = init
        for restore in undo:
            restore()


def demo_config(work: Path, model: Path, url: str, steps: int, **overrides: Any) -> Any:
    """The demo's training config (examples/tiny_config.yaml), pointed at this run's files."""
    data = yaml.safe_load((ROOT / "examples" / "tiny_config.yaml").read_text())
    data.update(
        train_path=str(work / "research_train.jsonl"), val_path=None, base_model=str(model), tools_url=url,
        tools_token_env=None, output_dir=str(work / f"run-{len(list(work.glob('run-*')))}"), max_steps=steps,
        save_every=10_000, trace_samples=0, grader=str(ROOT / "examples" / "graders" / "answer_and_tools.yaml"),
        batch_size=8, group_size=8,
    )
    data.update(overrides)
    return config_from_dict(data)


def run_agentrft(cfg: Any, clock: PhaseClock, trl_head: bool) -> None:
    from agentrft.train import trainer as trainer_module  # torch, transformers

    token_file = cfg.output_dir.parent / "token"
    token_file.write_text(TOKEN)
    cfg = cfg.model_copy(update={"tools_token_file": token_file})
    compact = trainer_module._compact_logprobs
    if trl_head:
        trainer_module._compact_logprobs = lambda *args, **kwargs: None
    try:
        with timed_trainer(clock):
            trainer_module.train(cfg, console=Console(file=open(os.devnull, "w")))
    finally:
        trainer_module._compact_logprobs = compact


def run_trl(cfg: Any, model_dir: Path, url: str, clock: PhaseClock) -> None:
    """TRL's GRPOTrainer with its own tool loop, the same hyperparameters and the same grader."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = read_models(cfg.train_path, Row)
    by_prompt = {row.prompt: row for row in rows}
    grader = load_grader(cfg.grader)

    def reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float | None]:
        rewards = []
        for prompt, completion in zip(prompts, completions, strict=True):
            row = by_prompt[prompt[-1]["content"]]
            answer = completion[-1].get("content") or "" if completion else ""
            trajectory = Trajectory(row_id=row.id, turns=[MessageTurn(role="assistant", content=answer)])
            rewards.append(grader.grade(row, trajectory).reward)
        return rewards

    dataset = Dataset.from_list([
        {"prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": row.prompt}]}
        for row in rows
    ])
    args = GRPOConfig(
        output_dir=str(cfg.output_dir), learning_rate=cfg.learning_rate, beta=cfg.kl_coef,
        num_generations=cfg.group_size, per_device_train_batch_size=cfg.group_size,
        gradient_accumulation_steps=cfg.batch_size, temperature=cfg.temperature,
        max_completion_length=cfg.max_trajectory_tokens, max_tool_calling_iterations=cfg.max_tool_calls,
        generation_kwargs={"max_new_tokens": cfg.max_new_tokens, "use_cache": True},
        gradient_checkpointing=False, max_steps=cfg.max_steps, use_cpu=True, bf16=False, report_to="none",
        disable_tqdm=True, logging_steps=1, save_strategy="no", seed=cfg.seed,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with timed_trainer(clock):
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                              processing_class=AutoTokenizer.from_pretrained(model_dir), tools=trl_tools(url))
        trainer.remove_callback(PrinterCallback)  # a dict of metrics per step
        trainer.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="The warm-started model to train.")
    parser.add_argument("--steps", type=int, default=5, help="Optimizer steps per row (the first is a warm-up).")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="Extra latency of every tool call.")
    parser.add_argument("--skip-trl", action="store_true", help="Leave out TRL's own loop (the slowest row).")
    args = parser.parse_args()

    import torch

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    threads = torch.get_num_threads()
    work = Path(tempfile.mkdtemp(prefix="bench-train-step-"))
    synth(work, seed=0)
    model = args.model or demo_model()
    results: dict[str, list[dict[str, float]]] = {}
    with tool_server_process(work / "corpus", args.latency_ms / 1000, READ_BUDGET_CHARS, 1) as url:
        model = ensure_model(model, work, url)
        variants: list[tuple[str, Callable[[PhaseClock], None]]] = [
            ("agentrft", lambda c: run_agentrft(demo_config(work, model, url, args.steps), c, trl_head=False)),
            ("agentrft with TRL's head", lambda c: run_agentrft(
                demo_config(work, model, url, args.steps, micro_batch_size=None, bf16=False), c, trl_head=True)),
        ]
        if not args.skip_trl:
            variants.append(("TRL GRPOTrainer(tools=…)", lambda c: run_trl(
                demo_config(work, model, url, args.steps), model, url, c)))
        for name, run in variants:
            torch.set_num_threads(threads)
            clock = PhaseClock()
            run(clock)
            results[name] = clock.steps
            print(f"{name}: {len(clock.steps)} steps, {[round(s['total'], 1) for s in clock.steps]} s", flush=True)
    report(results, args, threads)


def demo_model() -> Path | None:
    """The demo's cached warm-started model, when a `make demo` has run here."""
    found = sorted((ROOT / ".cache" / "agentrft").glob("*/model/config.json"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace, threads: int) -> None:
    print(f"\none GRPO step, 8 prompts × 8 trajectories, {threads} CPU threads, "
          f"median of steps 2..{args.steps} (seconds)")
    header = ["row", *PHASES, "after rollouts", "step"]
    print("| " + " | ".join(header) + " |")
    print("|---" + "|---:" * (len(header) - 1) + "|")
    medians: dict[str, dict[str, float]] = {}
    for name, steps in results.items():
        measured = steps[1:] or steps
        med = {key: statistics.median(s.get(key, 0.0) for s in measured) for key in (*PHASES, "total")}
        after = statistics.median(s["total"] - s.get("rollouts", 0.0) - s.get("grading", 0.0) for s in measured)
        med["after rollouts"] = after
        medians[name] = med
        cells = [f"{med[p]:.2f}" for p in PHASES] + [f"{after:.2f}", f"{med['total']:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    ours = medians["agentrft"]
    for name, med in medians.items():
        if name != "agentrft":
            print(f"{name} / agentrft: step {med['total'] / ours['total']:.1f}×, "
                  f"after the rollouts {med['after rollouts'] / ours['after rollouts']:.1f}×")
    print(f"agentrft: after the rollouts / rollouts = {ours['after rollouts'] / max(ours['rollouts'], 1e-9):.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
