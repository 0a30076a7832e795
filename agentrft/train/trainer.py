"""Step 6: build TRL's ``GRPOTrainer`` from a ``TrainConfig`` and run it, with checkpoints and resume.

The mapping from the tutorial's config to TRL 1.x:

=====================  =====================================================================
config                 GRPOTrainer / GRPOConfig
=====================  =====================================================================
group_size             ``num_generations`` (rollouts per prompt; advantages are group-relative)
kl_coef                ``beta`` — KL to a frozen reference; with LoRA the reference is the base
                       model with adapters switched off, so it costs no extra weight memory
batch_size             prompts per optimizer step: ``batch_size × group_size`` trajectories, split
                       into ``micro_batch_size`` chunks by gradient accumulation
updates_per_batch      ``num_iterations`` — optimizer steps on each generation batch; 1 (the default)
                       is on-policy, above 1 the later steps are off-policy and clipped
entropy_quantile       ``top_entropy_quantile`` — the share of generated tokens, highest entropy
                       first, that the loss trains on (1: all)
lora                   ``peft_config`` (peft ``LoraConfig``)
temperature            ``temperature`` — TRL divides logits by it when it scores the sampled tokens,
                       so it must equal the sampling temperature of the rollouts
=====================  =====================================================================

Rollouts are not TRL's: ``rollout.AgentRollouts`` runs agentrft's agent loop and returns the loss
mask that keeps tool output out of the gradient.

On GPUs: ``bf16`` unless the config turns it off, and gradient checkpointing. On a CPU the log-probs
TRL's loss asks for come from ``logprobs.install_compact_logprobs`` (TRL's own head scores every padded
position there), in float32 unless the config asks for ``bf16`` (``cpu_autocast``).

Rollouts come from the model being trained (``LocalPolicy``) or, with ``use_vllm``, from vLLM servers
(``vllm_rollouts.VLLMRollouts``): agentrft starts one from ``.venv-vllm`` for the run (on the training GPU,
with ``vllm_gpu_memory_utilization`` of it) or uses those in ``vllm_urls``, pushes the new weights to
them after every optimizer step through TRL's own sync hook, and turns on TRL's importance-sampling
correction for the engine/trainer log-prob mismatch. TRL's in-process vLLM is never used (its pins
clash with the training stack). Multi-GPU: ``agentrft train FILE --launcher accelerate --num-processes N``
re-executes the command under ``accelerate launch`` (see ``launch.py``); each process rolls out its
own slice of the prompts (through the same servers with ``use_vllm``), and TRL gathers the rewards so
groups are normalised across processes.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import warnings
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import logging as hf_logging

from ..agent.vllm_server import VLLMServer
from ..config import TrainConfig
from ..errors import UserError, where
from ..graders import default_grader, load_grader
from ..hardware import cpu_has_native_bf16
from ..jsonl import read_models
from ..schema import Row
from .logprobs import GeneratedTokens, covers, install_compact_logprobs
from .metrics import trim_metrics
from .monitor import Monitor
from .rollout import AgentRollouts, RolloutRunner, agent_loop_runner, check_trl_contract
from .vllm_rollouts import VLLMRollouts

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class TrainResult:
    """How a run ended: where its files are, how far it got, and why it stopped if it aborted."""

    run_dir: Path
    steps: int
    aborted: str | None
    abort_step: int | None
    best_step: int | None
    best_val_reward: float | None
    best_dir: Path | None
    last_checkpoint: Path | None


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (one with its trainer state written last), or None."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    found = []
    for path in folder.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX) :]
        if suffix.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(suffix), path))
    return max(found)[1] if found else None


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name[len(CHECKPOINT_PREFIX) :])


def load_rows(cfg: TrainConfig) -> tuple[list[Row], list[Row]]:
    """Training rows and the fixed val subset (a seeded sample, in file order)."""
    rows = read_models(cfg.train_path, Row)
    if not rows:
        raise UserError(f"{where(cfg.source or 'config', field='train_path')}: {cfg.train_path} has no rows")
    val: list[Row] = []
    if cfg.val_path is not None:
        val = read_models(cfg.val_path, Row)
        if len(val) > cfg.val_subset:
            keep = set(random.Random(cfg.seed).sample(range(len(val)), cfg.val_subset))
            val = [row for index, row in enumerate(val) if index in keep]
    return rows, val


def prepare_run_dir(cfg: TrainConfig, resume: bool, console: Console) -> Path | None:
    """Create the run folder; on resume, return the checkpoint to continue from and trim metrics after it."""
    run_dir = cfg.output_dir
    if not resume:
        if (run_dir / "metrics.jsonl").exists():
            raise UserError(
                f"{where(cfg.source or 'config', field='output_dir')}: {run_dir} already holds a run; "
                "pass --resume to continue it or choose another output_dir"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
        )
        return None
    checkpoint = last_checkpoint(run_dir)
    # A kill during a save leaves a checkpoint folder without its trainer state: never resume from it.
    for partial in (run_dir / CHECKPOINTS_DIR).glob(f"{CHECKPOINT_PREFIX}*"):
        if not (partial / "trainer_state.json").is_file():
            shutil.rmtree(partial, ignore_errors=True)
    step = checkpoint_step(checkpoint) if checkpoint else 0
    dropped = trim_metrics(run_dir, step)
    if checkpoint is None:
        console.print(f"resume: no checkpoint in {run_dir} yet; starting from step 0", markup=False)
    else:
        console.print(
            f"resume: continuing from {checkpoint.name} (dropped {dropped} metric rows after step {step})",
            markup=False,
        )
    return checkpoint


def build_grader(cfg: TrainConfig) -> Any:
    return load_grader(cfg.grader) if cfg.grader is not None else default_grader()


def grpo_args(cfg: TrainConfig, use_cuda: bool, world_size: int) -> Any:
    """The GRPOConfig for this config (see the module docstring for the mapping)."""
    from trl import GRPOConfig

    micro = cfg.effective_micro_batch
    per_step = micro * world_size
    if cfg.trajectories_per_step % per_step:
        raise UserError(
            f"{where(cfg.source or 'config', field='batch_size')}: batch_size × group_size = "
            f"{cfg.trajectories_per_step} must be a multiple of micro_batch_size × processes = {per_step}"
        )
    # On a CPU, bf16 is the compact log-prob forward's autocast (``cpu_autocast``), not TRL's: TRL's
    # would autocast every forward of the model, the rollouts' included.
    bf16 = use_cuda and cfg.bf16 is not False
    return GRPOConfig(
        output_dir=str(cfg.output_dir / CHECKPOINTS_DIR),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        warmup_steps=cfg.warmup_steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=cfg.trajectories_per_step // per_step,
        num_generations=cfg.group_size,
        beta=cfg.kl_coef,
        scale_rewards=cfg.scale_rewards,
        num_iterations=cfg.updates_per_batch,
        top_entropy_quantile=cfg.entropy_quantile,
        loss_type=cfg.loss_type,
        lr_scheduler_type="constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_completion_length=cfg.max_trajectory_tokens,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        bf16=bf16,
        use_cpu=not use_cuda,
        gradient_checkpointing=use_cuda,
        logging_steps=cfg.logging_steps,
        # A NaN loss must reach the abort rule, not be smoothed away by the logger.
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=cfg.save_every,
        save_total_limit=1,
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
    )


def train(
    cfg: TrainConfig,
    resume: bool = False,
    runner: RolloutRunner | None = None,
    console: Console | None = None,
    grader: Any = None,
) -> TrainResult:
    """Run GRPO for ``cfg``. ``runner`` and ``grader`` replace the agent loop and the configured grader."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # the contract is checked just below
    check_trl_contract()
    console = console or Console(highlight=False, soft_wrap=True)
    hf_logging.set_verbosity_error()
    # transformers 5 renames gradient_checkpointing; TRL still sets the old name. Not the user's to fix.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    # TRL warns about ungraded samples by dumping the whole sample; the no_grade column reports them.
    logging.getLogger("trl.trainer.grpo_trainer").setLevel(logging.ERROR)
    rows, val_rows = load_rows(cfg)
    checkpoint = prepare_run_dir(cfg, resume, console)
    use_cuda = torch.cuda.is_available()
    with ExitStack() as stack:
        if runner is None and cfg.use_vllm:
            runner = stack.enter_context(vllm_rollouts(cfg, use_cuda, console))
        if runner is None:
            runner = agent_loop_runner(cfg, cfg.tools_token())
        return _train(cfg, rows, val_rows, checkpoint, runner, grader, console, use_cuda)


def _train(cfg: TrainConfig, rows: list[Row], val_rows: list[Row], checkpoint: Path | None, runner: RolloutRunner,
           grader: Any, console: Console, use_cuda: bool) -> TrainResult:
    from datasets import Dataset  # heavy, and only a run needs them
    from trl import GRPOTrainer

    # on a CPU the compact log-prob forward scores only the tokens the rollouts say the policy generated
    generated = None if use_cuda else GeneratedTokens()
    rollouts = AgentRollouts(rows, runner, grader or build_grader(cfg), seed=cfg.seed, generated=generated)

    args = grpo_args(cfg, use_cuda, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.base_model)
        model = AutoModelForCausalLM.from_pretrained(
            cfg.base_model, dtype=torch.bfloat16 if args.bf16 else torch.float32
        )
    except OSError as exc:
        raise UserError(
            f"{where(cfg.source or 'config', field='base_model')}: cannot load {cfg.base_model} ({exc})"
        ) from None
    torch.manual_seed(cfg.seed)
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)

    monitor = Monitor(cfg, cfg.output_dir, rollouts, runner, val_rows, console=console)

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[rollouts.make_reward_func()],
        args=args,
        train_dataset=Dataset.from_list(rollouts.dataset_rows()),
        processing_class=tokenizer,
        peft_config=_lora_config(cfg),
        rollout_func=rollouts.rollout_func,
        callbacks=[monitor],
    )
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    if generated is not None:
        _compact_logprobs(trainer, cfg.temperature, cpu_autocast(cfg), generated)
    if cfg.kl_cap is not None and cfg.kl_coef > 0:
        cap_kl(trainer, cfg.kl_cap)
    if isinstance(runner, VLLMRollouts):
        runner.attach(trainer)
    monitor.attach(trainer)
    trainer.rollouts = rollouts  # reachable from tests and custom runners
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        monitor.close()
    best = monitor.best
    return TrainResult(
        run_dir=cfg.output_dir,
        steps=trainer.state.global_step,
        aborted=monitor.abort_reason,
        abort_step=monitor.abort_step,
        best_step=best.step if best else None,
        best_val_reward=best.val_reward if best else None,
        best_dir=monitor.best_dir if best else None,
        last_checkpoint=last_checkpoint(cfg.output_dir),
    )


@contextmanager
def vllm_rollouts(cfg: TrainConfig, use_cuda: bool, console: Console) -> Iterator[VLLMRollouts]:
    """Rollouts through the config's vLLM servers, or through one started here for the run's length."""
    urls = list(cfg.vllm_urls)
    with ExitStack() as stack:
        if not urls:
            server = VLLMServer(
                cfg.base_model,
                dtype="bfloat16" if use_cuda and cfg.bf16 is not False else "float32",
                lora_rank=cfg.lora.rank if cfg.lora is not None else None,
                dev_mode=cfg.lora is None,  # full weights are reloaded through the dev-mode routes
                max_num_seqs=cfg.trajectories_per_step,
                log_path=cfg.output_dir / "vllm.log",
                extra_args=("--gpu-memory-utilization", str(cfg.vllm_gpu_memory_utilization)) if use_cuda else (),
            )
            console.print(f"starting a vLLM server for {cfg.base_model} (log: {server.log_path})", markup=False)
            urls = [stack.enter_context(server).url]
            console.print(f"vLLM serving on {urls[0]} after {server.startup_s:.0f}s", markup=False)
        yield VLLMRollouts(urls, cfg.tools_url, cfg.tools_token(), cfg.rollout_settings(), cfg.output_dir,
                           lora=cfg.lora is not None)


def cpu_autocast(cfg: TrainConfig) -> bool:
    """Whether the loss's backbone runs in bf16 autocast on a CPU (weights and rollouts stay float32): only when
    the config asks for it. The rollouts sample in float32, and a bf16 forward of the same weights can score a
    sampled token very differently where attention is sharp — a copy head choosing between two positions whose
    scores bf16 cannot tell apart — and such a token wrecks that step's KL and its gradient
    (``bench/RESULTS.md``)."""
    return bool(cfg.bf16) and cpu_has_native_bf16()


def _compact_logprobs(trainer: Any, temperature: float, autocast: bool, generated: GeneratedTokens) -> None:
    """On a CPU, TRL's fused LM head scores every padded position; ``logprobs`` scores only labels."""
    policy = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    for model, with_entropy in ((policy, True), (trainer.ref_model, False)):
        if model is not None and covers(model):
            install_compact_logprobs(
                model, temperature, with_entropy=with_entropy, autocast=autocast, generated=generated
            )


def kl_log_ratio_limit(cap: float) -> float:
    """The log-ratio ``r > 0`` where TRL's per-token KL estimate ``exp(r) - r - 1`` equals ``cap``."""
    r = math.log1p(cap)  # exp(r) - r - 1 = cap - log1p(cap) < cap here, and the estimate is convex in r
    for _ in range(50):  # Newton from below converges monotonically
        step = (math.expm1(r) - r - cap) / math.expm1(r)
        r -= step
        if abs(step) < 1e-12:
            break
    return r


def cap_kl(trainer: Any, cap: float) -> None:
    """Bound every generated token's KL estimate by ``cap`` (``kl_cap``), keeping TRL's loss as it is.

    TRL's KL term is ``exp(ref - logp) - (ref - logp) - 1`` per token. It is unbounded above when a
    token the policy now makes rare (it was sampled anyway) is one the reference still likes: one such
    token in a step can outweigh all others in both the reported KL and the gradient. Each generation
    batch's reference log-probs are lowered to at most the sampling log-prob plus the log-ratio where
    the estimate reaches ``cap``; the policy's log-prob in the loss is that sampling log-prob on-policy
    (and moves only within the PPO clip off it), so each token's term stays near the cap and its
    gradient bounded, while every token below it is untouched. Tokens with no finite sampling log-prob
    keep their reference log-prob.
    """
    limit = kl_log_ratio_limit(cap)
    generate = trainer._generate_and_score_completions

    @functools.wraps(generate)
    def capped(inputs: Any) -> dict[str, Any]:
        output = generate(inputs)
        ref = output.get("ref_per_token_logps")
        policy = output.get("old_per_token_logps", output.get("sampling_per_token_logps"))
        if ref is not None and policy is not None:
            ceiling = torch.where(torch.isfinite(policy), policy.to(ref.dtype) + limit, ref)
            output["ref_per_token_logps"] = torch.minimum(ref, ceiling)
        return output

    trainer._generate_and_score_completions = capped


def _lora_config(cfg: TrainConfig) -> Any:
    if cfg.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        target_modules=list(cfg.lora.target_modules),
        lora_dropout=cfg.lora.dropout,
        task_type="CAUSAL_LM",
    )


__all__ = ["TrainResult", "cap_kl", "grpo_args", "kl_log_ratio_limit", "last_checkpoint", "load_rows", "train"]
