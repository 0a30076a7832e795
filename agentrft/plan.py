"""Step 9: which framework, how many GPUs — the memory math for a GRPO run with tool rollouts.

Where this deviates from the tutorial: the tutorial lists the reference model as "doubles weight
memory". With LoRA it does not — TRL (and verl, OpenRLHF) compute the reference log-probs with the
adapter disabled on the same base weights, so the frozen reference costs nothing extra. It only
costs a second copy of the weights in full fine-tuning, which is where a dedicated reference GPU pays.

The estimate is deliberately simple and itemised so a user can argue with each line:

- weights: bf16, 2 bytes a parameter;
- trainable state: bf16 gradient + fp32 master copy + two fp32 Adam moments = 14 bytes a trainable
  parameter (LoRA: only the adapter's parameters, plus their 2-byte weights);
- rollout KV cache: 2 (K and V) × layers × KV heads × head dim × 2 bytes × tokens, for every
  trajectory in flight (group size × prompts per step) — the "rollout buffer" teams underestimate;
- training activations with gradient checkpointing: one hidden-state checkpoint per layer per token,
  one layer's full activations, and the fp32 logits over the vocabulary (policy and reference), for
  one micro-batch of trajectories;
- a fixed runtime overhead (CUDA context, allocator fragmentation).

Across N GPUs, weights and trainable state divide by N (FSDP / ZeRO-3 sharding) and so does the
rollout buffer (each data-parallel rank generates its share of the trajectories); one micro-batch's
activations and the runtime overhead do not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .errors import UserError
from .files import read_text
from .jsonl import describe_json_error, json_type

GIB = 1024**3
BF16 = 2
FP32 = 4
TRAINABLE_STATE_BYTES = 14  # bf16 grad (2) + fp32 master (4) + Adam m, v (8)
OVERHEAD_BYTES = 3 * GIB
HEADROOM = 0.9  # plan to fill at most 90% of a card


@dataclass(frozen=True)
class Arch:
    """The few architecture numbers the memory math needs."""

    params: float
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int


# Published configs of common starting points (config.json of each model).
KNOWN: dict[str, Arch] = {
    "Qwen/Qwen2.5-0.5B-Instruct": Arch(0.49e9, 24, 896, 14, 2, 64, 4864, 151936),
    "Qwen/Qwen2.5-1.5B-Instruct": Arch(1.54e9, 28, 1536, 12, 2, 128, 8960, 151936),
    "Qwen/Qwen2.5-3B-Instruct": Arch(3.09e9, 36, 2048, 16, 2, 128, 11008, 151936),
    "Qwen/Qwen2.5-7B-Instruct": Arch(7.62e9, 28, 3584, 28, 4, 128, 18944, 152064),
    "Qwen/Qwen2.5-14B-Instruct": Arch(14.7e9, 48, 5120, 40, 8, 128, 13824, 152064),
    "Qwen/Qwen2.5-32B-Instruct": Arch(32.5e9, 64, 5120, 40, 8, 128, 27648, 152064),
    "Qwen/Qwen2.5-72B-Instruct": Arch(72.7e9, 80, 8192, 64, 8, 128, 29568, 152064),
    "Qwen/Qwen3-8B": Arch(8.19e9, 36, 4096, 32, 8, 128, 12288, 151936),
    "meta-llama/Llama-3.1-8B-Instruct": Arch(8.03e9, 32, 4096, 32, 8, 128, 14336, 128256),
    "meta-llama/Llama-3.1-70B-Instruct": Arch(70.6e9, 80, 8192, 64, 8, 128, 28672, 128256),
}

MODULE_SHAPES = {  # (in, out) of each projection, as functions of the architecture
    "q_proj": lambda a: (a.hidden, a.heads * a.head_dim),
    "k_proj": lambda a: (a.hidden, a.kv_heads * a.head_dim),
    "v_proj": lambda a: (a.hidden, a.kv_heads * a.head_dim),
    "o_proj": lambda a: (a.heads * a.head_dim, a.hidden),
    "gate_proj": lambda a: (a.hidden, a.intermediate),
    "up_proj": lambda a: (a.hidden, a.intermediate),
    "down_proj": lambda a: (a.intermediate, a.hidden),
}


def arch_from_config(path: Path) -> Arch:
    """Read a local model's ``config.json`` (a directory or the file itself)."""
    cfg_path = path / "config.json" if path.is_dir() else path
    try:
        cfg = json.loads(read_text(cfg_path, "a model's config.json"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{cfg_path}:{exc.lineno}: {describe_json_error(exc)}; expected a model's config.json") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_path}: expected a JSON object (a model's config.json), got {json_type(cfg)}")
    try:
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        head_dim = cfg.get("head_dim") or hidden // heads
        layers = cfg["num_hidden_layers"]
        inter = cfg["intermediate_size"]
        vocab = cfg["vocab_size"]
        kv = cfg.get("num_key_value_heads", heads)
    except KeyError as exc:
        raise UserError(f"{cfg_path}: field {exc.args[0]} is missing") from None
    per_layer = hidden * (heads + 2 * kv) * head_dim + heads * head_dim * hidden + 3 * hidden * inter
    embed = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    return Arch(per_layer * layers + embed, layers, hidden, heads, kv, head_dim, inter, vocab)


def resolve_arch(model: str) -> Arch:
    if model in KNOWN:
        return KNOWN[model]
    if Path(model).exists():
        return arch_from_config(Path(model))
    names = ", ".join(sorted(KNOWN))
    raise UserError(f"unknown model {model!r}: give a local model directory or one of: {names}")


@dataclass(frozen=True)
class PlanInput:
    """What a run looks like: the knobs that move memory."""

    model: str
    lora_rank: int | None = 32
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    group_size: int = 8
    prompts_per_step: int = 16
    trajectory_tokens: int = 4096
    micro_batch: int = 2
    kl_coef: float = 0.01
    gpu_gib: float = 80.0


@dataclass(frozen=True)
class Plan:
    items: dict[str, float]  # bytes on one GPU, before sharding
    sharded: tuple[str, ...]  # items that divide by the GPU count
    gpus: int
    per_gpu: float
    framework: str
    reasons: list[str]


def lora_params(arch: Arch, rank: int, targets: tuple[str, ...]) -> float:
    unknown = [t for t in targets if t not in MODULE_SHAPES]
    if unknown:
        raise UserError(f"lora target_modules: unknown module {unknown[0]!r} (known: {', '.join(MODULE_SHAPES)})")
    return arch.layers * sum(rank * sum(MODULE_SHAPES[t](arch)) for t in targets)


def memory_items(inp: PlanInput, arch: Arch) -> dict[str, float]:
    """Bytes per item for one model replica (see the module docstring for each formula)."""
    weights = arch.params * BF16
    if inp.lora_rank:
        trainable = lora_params(arch, inp.lora_rank, inp.lora_targets)
        state = trainable * (TRAINABLE_STATE_BYTES + BF16)
        reference = 0.0  # adapter disabled on the same weights
    else:
        state = arch.params * TRAINABLE_STATE_BYTES
        reference = weights if inp.kl_coef > 0 else 0.0
    in_flight = inp.group_size * inp.prompts_per_step
    kv_per_token = 2 * arch.layers * arch.kv_heads * arch.head_dim * BF16
    micro_tokens = inp.micro_batch * inp.trajectory_tokens
    logits_copies = 2 if inp.kl_coef > 0 else 1
    activations = (
        arch.layers * arch.hidden * BF16 * micro_tokens  # per-layer checkpoints
        + micro_tokens * (4 * arch.hidden + 2 * arch.intermediate) * BF16  # one layer recomputed
        + micro_tokens * arch.vocab * FP32 * logits_copies  # log-softmax over the vocabulary
    )
    return {
        "policy weights (bf16)": weights,
        "reference model": reference,
        "trainable state (grad + Adam)": state,
        "rollout KV cache": kv_per_token * inp.trajectory_tokens * in_flight,
        "training activations": activations,
        "runtime overhead": OVERHEAD_BYTES,
    }


def choose_framework(inp: PlanInput, arch: Arch, gpus: int) -> tuple[str, list[str]]:
    """A rule of thumb, stated as reasons a reader can check against their situation."""
    if not inp.lora_rank and arch.params > 30e9:
        return "NeMo RL (or verl with Megatron)", [
            f"full fine-tuning of {arch.params / 1e9:.0f}B parameters on {gpus} GPUs: tensor and pipeline",
            "parallelism (Megatron) beat FSDP sharding at this size.",
        ]
    if gpus == 1 and inp.lora_rank:
        return "TRL (or Unsloth)", [
            "fits one GPU with LoRA: TRL's GRPOTrainer with agentrft's rollouts runs as is;",
            "Unsloth is the single-GPU specialist if memory is tight (4-bit base, fused kernels).",
        ]
    if gpus <= 8:
        return "TRL + accelerate (vLLM for generation)", [
            f"{gpus} GPUs fit one node: `agentrft train CONFIG --launcher accelerate --num-processes {gpus}`;",
            "use vLLM in colocate mode for rollouts, or server mode on a dedicated GPU.",
        ]
    if gpus <= 64:
        return "verl (or OpenRLHF)", [
            f"{gpus} GPUs span several nodes: Ray-based schedulers place actor, rollout and reference;",
            "verl's multi-turn async rollouts keep GPUs busy while tools answer.",
        ]
    return "NeMo RL (or verl with Megatron)", [
        f"{gpus} GPUs: tensor + pipeline parallelism (Megatron) is what keeps them busy.",
    ]


def make_plan(inp: PlanInput) -> Plan:
    arch = resolve_arch(inp.model)
    items = memory_items(inp, arch)
    sharded = (
        "policy weights (bf16)", "reference model", "trainable state (grad + Adam)", "rollout KV cache"
    )
    budget = inp.gpu_gib * GIB * HEADROOM
    for gpus in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
        per_gpu = sum(v / gpus if k in sharded else v for k, v in items.items())
        if per_gpu <= budget:
            break
    else:
        raise UserError(f"{inp.model}: does not fit 512 GPUs of {inp.gpu_gib:g} GiB with these settings")
    framework, reasons = choose_framework(inp, arch, gpus)
    return Plan(items, sharded, gpus, per_gpu, framework, reasons)


def print_plan(inp: PlanInput, plan: Plan, console: Console) -> None:
    mode = f"LoRA r={inp.lora_rank}" if inp.lora_rank else "full fine-tuning"
    console.print(
        f"[bold]{inp.model}[/] · {mode} · group {inp.group_size} × {inp.prompts_per_step} prompts · "
        f"{inp.trajectory_tokens} tokens/trajectory · {inp.gpu_gib:g} GiB GPUs"
    )
    table = Table(show_edge=False)
    table.add_column("item")
    table.add_column("GiB (one replica)", justify="right")
    table.add_column(f"GiB per GPU (×{plan.gpus})", justify="right")
    for name, value in plan.items.items():
        per = value / plan.gpus if name in plan.sharded else value
        table.add_row(name, f"{value / GIB:.1f}", f"{per / GIB:.1f}")
    table.add_row("[bold]total[/]", f"{sum(plan.items.values()) / GIB:.1f}", f"[bold]{plan.per_gpu / GIB:.1f}[/]")
    console.print(table)
    console.print(f"GPUs: [bold]{plan.gpus}[/] × {inp.gpu_gib:g} GiB   framework: [bold]{plan.framework}[/]")
    for reason in plan.reasons:
        console.print(f"  - {reason}")


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(
        model: str = typer.Option("Qwen/Qwen2.5-7B-Instruct", help="A known model name or a local model directory."),
        lora_rank: int = typer.Option(32, help="LoRA rank; 0 for full fine-tuning."),
        group_size: int = typer.Option(8, help="Rollouts per prompt."),
        prompts: int = typer.Option(16, help="Prompts per step (rollouts in flight = group × prompts)."),
        tokens: int = typer.Option(4096, help="Tokens per trajectory (max_trajectory_tokens)."),
        micro_batch: int = typer.Option(2, help="Trajectories per forward/backward pass."),
        kl_coef: float = typer.Option(0.01, help="KL β; 0 drops the reference model."),
        gpu_gib: float = typer.Option(80.0, help="Memory of one GPU in GiB."),
    ) -> None:
        """Step 9: the memory math — how many GPUs, and which framework."""
        inp = PlanInput(model, lora_rank or None, group_size=group_size, prompts_per_step=prompts,
                        trajectory_tokens=tokens, micro_batch=micro_batch, kl_coef=kl_coef, gpu_gib=gpu_gib)
        for name, value in (("group-size", group_size), ("prompts", prompts), ("tokens", tokens),
                            ("micro-batch", micro_batch)):
            if value < 1:
                raise UserError(f"--{name} must be at least 1 (got {value})")
        print_plan(inp, make_plan(inp), Console(highlight=False))
