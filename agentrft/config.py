"""Step 5: the training config — one flat YAML file, typed, with a description under every field.

The tutorial's ``step5_config.yaml`` loads as written; everything training needs beyond it (the
tool server, the grader, sampling, validation, abort thresholds) has a default, so the tutorial's
file is a complete config. Relative paths are resolved against the YAML file's folder, once, right
after loading, so a config means the same thing whatever directory the command runs from.

``check_config`` returns warnings that teach (a group below 4, β outside 0.001–0.05, a learning
rate SFT would use, many epochs on a small dataset, val rows that also appear in train); they never
stop a run, because each has a legitimate exception.

How ``batch_size`` maps to TRL: it counts *prompts* per optimizer step, each rolled out
``group_size`` times, so one step sees ``batch_size × group_size`` trajectories (the tutorial's
16 × 8 = 128). ``micro_batch_size`` trajectories go through the model at once; gradient
accumulation makes up the rest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .agent.settings import RolloutSettings
from .errors import UserError, where
from .files import read_text
from .jsonl import describe_validation_error, iter_json_lines
from .tools.client import read_token

# RFT moves a policy that already works; SFT-sized steps wreck it. The tutorial's 1e-5 is 10–100×
# below typical SFT rates (1e-4 … 1e-3 for LoRA); above this we warn.
RFT_MAX_LEARNING_RATE = 5e-5
KL_RANGE = (0.001, 0.05)
MIN_GROUP_SIZE = 4
# "Agent RFT overfits fast on small datasets": more than this many epochs over fewer rows warns.
SMALL_DATASET_ROWS = 1000
MAX_EPOCHS_SMALL_DATASET = 3


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraBlock(_Block):
    """LoRA adapters (through peft); only these weights train, the base model stays frozen."""

    rank: int = Field(default=32, ge=1, description="Adapter rank r.")
    alpha: float = Field(default=64, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Names of the linear layers that get adapters.",
    )
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the adapter input.")


class TrainConfig(_Block):
    """Everything ``agentrft train`` needs, flat. Unknown keys are errors, so a typo cannot be ignored."""

    # --- the tutorial's fields -------------------------------------------------------------
    algorithm: Literal["grpo"] = Field(
        default="grpo", description="Policy-gradient algorithm; group-relative policy optimisation."
    )
    group_size: int = Field(
        default=8, ge=2, description="Rollouts per prompt. Advantages are relative to the group mean."
    )
    kl_coef: float = Field(
        default=0.01, ge=0, description="β: weight of the KL penalty against the frozen reference model."
    )
    kl_cap: float | None = Field(
        default=None, gt=0,
        description="Ceiling on each generated token's KL estimate (TRL's k3, exp(r) - r - 1 of the log-ratio r of "
        "reference to policy); null leaves it unbounded. One sampled token the policy has made rare but the "
        "reference still likes can otherwise dominate a step's KL and its gradient.",
    )
    learning_rate: float = Field(default=1.0e-5, gt=0, description="Peak AdamW learning rate.")
    epochs: float = Field(default=2, gt=0, description="Passes over the training prompts.")
    batch_size: int = Field(
        default=16, ge=1, description="Prompts per optimizer step (each rolled out group_size times)."
    )
    max_trajectory_tokens: int = Field(
        default=4096, ge=16, description="Token budget of one whole trajectory: prompt, turns and tool output."
    )
    max_tool_calls: int = Field(default=12, ge=0, description="Tool calls allowed per rollout.")
    warmup_steps: int = Field(default=5, ge=0, description="Linear learning-rate warm-up, in optimizer steps.")
    seed: int = Field(default=42, description="Seed for sampling, data order and adapter init.")
    train_path: Path = Field(
        default=Path("data/research_train.jsonl"), description="Training rows (JSONL of Row)."
    )
    val_path: Path | None = Field(
        default=Path("data/research_val.jsonl"), description="Validation rows; null skips val_reward."
    )
    base_model: str = Field(
        default="Qwen/Qwen2.5-7B-Instruct", description="Hub id or local folder of the model to tune."
    )
    lora: LoraBlock | None = Field(
        default_factory=LoraBlock, description="LoRA block; null trains every weight (small models only)."
    )

    # --- tools and grader -----------------------------------------------------------------------
    tools_url: str = Field(
        default="http://127.0.0.1:8000", description="Base URL of the tool server rollouts call."
    )
    tools_token_env: str | None = Field(
        default="TOOL_BEARER", description="Environment variable holding the tool server's bearer token."
    )
    tools_token_file: Path | None = Field(
        default=None, description="File holding the bearer token; read when the variable is unset."
    )
    grader: Path | None = Field(
        default=None, description="Grader spec (JSON/YAML); null uses the numeric grader."
    )

    # --- rollouts -------------------------------------------------------------------------------
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of training rollouts.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling of training rollouts.")
    top_k: int = Field(default=0, ge=0, description="Top-k sampling of training rollouts; 0 turns it off.")
    max_new_tokens: int = Field(default=256, ge=1, description="Tokens the model may generate per turn.")
    system_prompt: str | None = Field(
        default=None, description="System prompt of every rollout; null sends none (the chat template's default)."
    )

    # --- optimisation details -------------------------------------------------------------------
    scale_rewards: Literal["group", "batch", "none"] = Field(
        default="group",
        description="Divide advantages by the group's reward std (GRPO), the batch's, or not at all (Dr. GRPO): "
        "with 'group' a group whose rewards differ by 0.03 pulls as hard as one that differs by 1.",
    )
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field(
        default="dapo",
        description="How TRL averages the per-token loss: per sequence then per batch (grpo), over every "
        "token of the batch (dapo, bnpo), or over a fixed length (dr_grpo).",
    )
    entropy_quantile: float = Field(
        default=1.0, gt=0, le=1,
        description="Train only on the generated tokens whose entropy is in this top fraction of the step's tokens "
        "(TRL's top_entropy_quantile): the forks where the policy chooses (a period, a path) rather than the tokens "
        "it copies; 1 trains on every generated token.",
    )
    updates_per_batch: int = Field(
        default=1, ge=1,
        description="Optimizer steps on each generation batch (TRL's num_iterations, μ); above 1 the later ones "
        "are off-policy and clipped.",
    )
    lr_scheduler: Literal["linear", "constant", "cosine"] = Field(
        default="linear", description="Learning-rate schedule after warm-up: linear or cosine decay to 0, or constant."
    )
    micro_batch_size: int | None = Field(
        default=None, ge=1, description="Trajectories per forward/backward pass; null = group_size."
    )
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    bf16: bool | None = Field(
        default=None,
        description="Train in bfloat16; null = on with a GPU, off on a CPU. On a CPU true autocasts only the loss's "
        "backbone (weights, rollouts and the LM head stay float32), where the CPU multiplies bf16 natively; it is "
        "faster, but the trainer can then score a sampled token far from how the float32 rollout did.",
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="CPU threads torch may use in training; null leaves torch's default."
    )
    use_vllm: bool = Field(
        default=False,
        description="Roll out through vLLM servers, token-in / token-out, with the new weights pushed after every "
        "optimizer step; agentrft starts one (from .venv-vllm, see `make vllm`) unless vllm_urls lists running ones.",
    )
    vllm_urls: list[str] = Field(
        default_factory=list,
        description="Running vLLM servers of base_model to roll out on (spread by row); each needs --enable-lora "
        "for LoRA or dev mode (VLLM_SERVER_DEV_MODE=1) for full weights, and to see output_dir.",
    )
    vllm_gpu_memory_utilization: float = Field(
        default=0.3, gt=0, lt=1, description="Share of the training GPU the vLLM server agentrft starts may take."
    )

    # --- monitoring, checkpoints ------------------------------------------------------------
    output_dir: Path = Field(default=Path("runs/research-rft-v1"), description="Run folder (metrics, traces, checkpoints).")
    logging_steps: int = Field(default=1, ge=1, description="Optimizer steps between metric rows.")
    val_every: int = Field(default=5, ge=1, description="Optimizer steps between val_reward evaluations.")
    val_subset: int = Field(default=32, ge=1, description="Val rows in the fixed subset evaluated greedily.")
    save_every: int = Field(default=10, ge=1, description="Optimizer steps between 'last' checkpoints.")
    trace_samples: int = Field(default=4, ge=0, description="Training trajectories written to traces/ per step.")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many steps (overrides epochs).")

    # --- abort rules ----------------------------------------------------------------------------
    abort_kl_max: float | None = Field(
        default=1.0, gt=0, description="Abort when kl_to_ref exceeds this ceiling; null disables."
    )
    abort_kl_jump: float | None = Field(
        default=10.0, gt=1, description="Abort when KL exceeds this many times its running mean; null disables."
    )
    abort_kl_jump_min: float = Field(
        default=0.05, ge=0, description="KL below this never counts as a jump (early KL is ~0 and noisy)."
    )
    abort_val_floor: float | None = Field(
        default=None, ge=0, le=1, description="Abort when val_reward falls below this after warm-up; null disables."
    )
    abort_nonfinite_loss: bool = Field(default=True, description="Abort on a NaN or infinite loss.")

    _source: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _derived_sizes_fit(self) -> TrainConfig:
        micro = self.micro_batch_size or self.group_size
        total = self.batch_size * self.group_size
        if total % micro:
            raise ValueError(
                f"micro_batch_size {micro} must divide batch_size × group_size = {total}"
            )
        return self

    # Derived values, computed in one place.
    @property
    def trajectories_per_step(self) -> int:
        return self.batch_size * self.group_size

    @property
    def effective_micro_batch(self) -> int:
        return self.micro_batch_size or self.group_size

    @property
    def source(self) -> Path | None:
        """The YAML file this config came from, if any."""
        return self._source

    def rollout_settings(self, greedy: bool = False, seed: int | None = None) -> RolloutSettings:
        """The agent loop's settings for this config's rollouts; ``greedy`` for validation (no sampling noise,
        so curves compare)."""
        return RolloutSettings(
            max_tool_calls=self.max_tool_calls,
            max_trajectory_tokens=self.max_trajectory_tokens,
            max_new_tokens=self.max_new_tokens,
            temperature=0.0 if greedy else self.temperature,
            top_p=1.0 if greedy else self.top_p,
            top_k=0 if greedy else self.top_k,
            seed=seed,
            system_prompt=self.system_prompt,
        )

    def tools_token(self) -> str | None:
        """The tool server's bearer token: the environment variable first, then the token file."""
        return read_token(env=self.tools_token_env) or read_token(self.tools_token_file, env=None)


_PATH_FIELDS = ("train_path", "val_path", "tools_token_file", "grader", "output_dir")


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config; errors name the file and the field. Relative paths follow the file."""
    path = Path(path)
    text = read_text(path, "a YAML config")
    if not text.strip():
        raise UserError(f"{path}: empty; expected a YAML config (see examples/step5_config.yaml)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise UserError(f"{path}{line}: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
    return config_from_dict(data, base_dir=path.parent, source=path, key_lines=_key_lines(text))


def config_from_dict(
    data: dict[str, Any],
    base_dir: Path | None = None,
    source: Path | None = None,
    key_lines: dict[str, int] | None = None,
) -> TrainConfig:
    """Validate a config mapping; relative paths are resolved against ``base_dir`` when given."""
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for msg in describe_validation_error(exc):
            field = msg.split(":", 1)[0]
            line = (key_lines or {}).get(field) or (key_lines or {}).get(field.split(".")[0])
            problems.append(f"{where(source or 'config', line)}: {msg}")
        raise UserError("\n".join(problems)) from None
    if base_dir is not None:
        updates = {}
        for name in _PATH_FIELDS:
            value = getattr(cfg, name)
            if value is not None and not value.is_absolute():
                updates[name] = (base_dir / value).resolve()
        # A base_model that names a folder beside the config is a local model, not a hub id.
        local_model = base_dir / cfg.base_model
        if not Path(cfg.base_model).is_absolute() and local_model.exists():
            updates["base_model"] = str(local_model.resolve())
        cfg = cfg.model_copy(update=updates)
    if source is not None:
        cfg._source = source
    return cfg


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key → 1-based line in the YAML text, so errors can point at the line to fix."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = f"{prefix}{key.value}"
                lines[name] = key.start_mark.line + 1
                walk(value, name + ".")

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def check_config(cfg: TrainConfig, check_files: bool = True) -> list[str]:
    """Warnings about settings that usually hurt an RFT run. Missing files are errors (UserError)."""
    warnings: list[str] = []
    if cfg.group_size < MIN_GROUP_SIZE:
        warnings.append(
            f"group_size: {cfg.group_size} is below {MIN_GROUP_SIZE}; the group-mean baseline is too noisy "
            "for the gradient to point anywhere useful (8–16 is the usual range)"
        )
    low, high = KL_RANGE
    if not low <= cfg.kl_coef <= high:
        side = "too low: the policy can drift and forget formats" if cfg.kl_coef < low else (
            "too high: the policy cannot move far enough from the reference to learn"
        )
        warnings.append(f"kl_coef: {cfg.kl_coef:g} is outside {low:g}–{high:g}, {side}")
    if cfg.learning_rate > RFT_MAX_LEARNING_RATE:
        warnings.append(
            f"learning_rate: {cfg.learning_rate:g} is an SFT-sized rate; RFT wants 10–100× lower "
            f"(at most ~{RFT_MAX_LEARNING_RATE:g}, the tutorial uses 1e-5)"
        )
    if cfg.vllm_urls and not cfg.use_vllm:
        warnings.append("vllm_urls: set, but use_vllm is false, so rollouts come from the training model")
    if not check_files:
        return warnings

    train_ids = _row_ids(cfg.train_path, where(cfg.source or "config", field="train_path"))
    if cfg.epochs > MAX_EPOCHS_SMALL_DATASET and len(train_ids) < SMALL_DATASET_ROWS:
        warnings.append(
            f"epochs: {cfg.epochs:g} passes over {len(train_ids)} rows; agent RFT overfits fast on small "
            f"datasets, keep to {MAX_EPOCHS_SMALL_DATASET} or fewer"
        )
    if len(train_ids) < cfg.batch_size:
        warnings.append(
            f"batch_size: {cfg.batch_size} prompts per step but train_path has only {len(train_ids)} rows"
        )
    if cfg.val_path is not None:
        val_ids = _row_ids(cfg.val_path, where(cfg.source or "config", field="val_path"))
        shared_ids = train_ids.keys() & val_ids.keys()
        shared_prompts = set(train_ids.values()) & set(val_ids.values())
        if shared_ids or shared_prompts:
            example = sorted(shared_ids)[:3] or ["(same prompt text)"]
            warnings.append(
                f"val_path: val is not disjoint from train ({len(shared_ids)} shared ids, "
                f"{len(shared_prompts)} shared prompts, e.g. {', '.join(example)}); val_reward will be optimistic"
            )
    if cfg.grader is not None and not cfg.grader.is_file():
        raise UserError(f"{where(cfg.source or 'config', field='grader')}: no such file {cfg.grader}")
    return warnings


def _row_ids(path: Path, location: str) -> dict[str, str]:
    """Row id → hash of its prompt, read leniently: `agentrft data validate` owns the full check."""
    if not path.is_file():
        raise UserError(f"{location}: no such file {path}")
    ids: dict[str, str] = {}
    for _number, value, _error in iter_json_lines(path):
        if isinstance(value, dict) and "id" in value:
            prompt = str(value.get("prompt", "")).strip().lower()
            ids[str(value["id"])] = hashlib.sha1(prompt.encode()).hexdigest()
    return ids


__all__ = ["LoraBlock", "TrainConfig", "check_config", "config_from_dict", "load_config"]
