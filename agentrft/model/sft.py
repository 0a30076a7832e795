"""Warm start ("fix the prior first"): supervised training on scripted demonstrations and drills.

TRL's ``SFTTrainer`` does the training. We hand it a pre-tokenized dataset rather than raw
conversations because two kinds of example share it: demonstrations (loss on every assistant turn:
tool calls and answer) and reading drills (loss on the final answer only), and because the drills'
figures are drawn fresh for every epoch. Both are tokenized with the training variant of the Qwen2.5
template TRL ships (``{% generation %}`` markers → ``assistant_masks``, exactly what
``assistant_only_loss=True`` would compute), then trimmed to the tokens the model itself emits in a
rollout: the template's newline after ``<|im_start|>assistant`` and after ``<|im_end|>`` belong to
the prompt side in the agent loop, so they carry no loss here either. SFTTrainer turns
``assistant_masks`` into labels (-100 elsewhere).

Two additions keep the look-up the pretraining gave (``pretrain.py``) while the model learns the
task's format: synthetic look-up tables in the mix, and a loss on the look-up head's attention from
each answer to where its figure is copied from (``lookup_pairs``). The 320 demonstrations can be
memorised, and a memorised answer needs no look-up; the drills and tables cannot.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..schema import Row
from .scripted import DEFAULT_MIXTURE, Demonstration, demonstrations_to_jsonl


LOG_EVERY = 80
"""Steps between two progress lines of the warm start."""


class WarmStartSettings(BaseModel):
    """Settings of one warm start; every field is part of the cache key of the result."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=9, ge=1)
    """Passes over the demonstrations; each pass gets its own freshly drawn drills. Measured on the
    demo's data (prior check, 40 rows × 5, answer right): 9 epochs at 1.5e-3 gave 26 never / 13
    sometimes / 1 always and, with seed 1, 25 / 13 / 2; 8 epochs 26 / 14 / 0. With the longer drills
    of before (the search kept in them), 9 epochs gave 24 / 14 / 2 — as 12 epochs at 1e-3 did
    (21 / 15 / 4) in three quarters of the steps; 6 epochs gave 36 / 4 / 0, 10 at 1e-3 31 / 9 / 0."""
    learning_rate: float = Field(default=1.5e-3, gt=0)
    """Peak rate of the cosine schedule; 2e-3 diverged (the loss stayed at ~4-5)."""
    batch_size: int = Field(default=8, ge=1)
    drills_per_demo: float = Field(default=1.0, ge=0)
    """Reading drills per demonstration per epoch."""
    query_drills_per_demo: float = Field(default=1.0, ge=0)
    """Query drills (``drills.make_query_drills``: another company in the question and the search) per
    demonstration per epoch. Two per demonstration did worse (15 of 200 answers right, not 41: the
    model then seldom read after its search)."""
    lookup_supervision: float = Field(default=1.0, ge=0)
    """Weight of the look-up head's attention loss (``pretrain.LOOKUP_HEAD`` to where each answer's figure
    is copied from); 0 trains on the language-model loss alone. A weight of 2 did worse (33 of 200
    answers right, not 41)."""
    lookup_tables_per_demo: float = Field(default=1.0, ge=0)
    """Synthetic look-up tables (``pretrain.lookup_example``) per demonstration per epoch: they keep the
    pretrained look-up alive while the model learns the task's format."""
    mixture: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MIXTURE))
    """Shares of the good / hasty / wandering strategies among the demonstrations."""
    max_steps: int = -1
    """Stop after this many optimizer steps (tests); -1 trains for ``epochs``."""
    seed: int = 0
    threads: int = 2
    """torch CPU threads."""
    bf16: bool | None = None
    """Matrix products in bfloat16 (autocast; weights stay fp32). None: where the CPU does bf16 natively
    (measured on an AVX512-BF16 core: 1.5x faster steps)."""



class WarmStartResult(BaseModel):
    """What ``warm_start`` did, written to ``warm_start.json`` next to the model."""

    out_dir: str
    demonstrations: int
    strategy_counts: dict[str, int]
    demonstrations_correct: dict[str, int]
    drills: int
    examples: int
    steps: int
    train_seconds: float
    final_loss: float | None
    settings: WarmStartSettings
    strategies_before: dict[str, float] | None = None
    """Strategy shares in sampled rollouts of the model before the warm start (``agentrft sft --measure``)."""
    strategies_after: dict[str, float] | None = None
    """The same after the warm start, on the same rows and seed."""
    measured_rollouts: int = 0
    """Rollouts behind each of the two."""


def _trim(ids: list[int], mask: list[int], newline: int, eos: int) -> list[int]:
    """Keep, in each masked span, only what a rollout generates: after the header's newline, up to eos."""
    from .pretrain import mask_spans

    out = [0] * len(mask)
    for i, j in mask_spans(mask):
        start = i + 1 if ids[i] == newline else i
        end = next((k + 1 for k in range(start, j) if ids[k] == eos), j)
        out[start:end] = [1] * (end - start)
    return out


def _last_span(mask: list[int]) -> list[int]:
    """Only the final contiguous span of ones (the final answer)."""
    out = [0] * len(mask)
    end = max((i for i, m in enumerate(mask) if m), default=-1)
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    if end >= 0:
        out[start : end + 1] = [1] * (end + 1 - start)
    return out


def training_template(tokenizer: Any) -> str:
    """The training variant of the tokenizer's chat template (``{% generation %}`` markers), as TRL patches it.

    TRL's ``get_training_chat_template`` renders test conversations to decide whether a template needs
    patching; asked once per example, that was three quarters of the time it took to encode the ~8,600
    drills of a warm start, so ``build_examples`` asks once and passes the answer on."""
    from trl.chat_template_utils import get_training_chat_template

    return get_training_chat_template(tokenizer) or tokenizer.chat_template


def encode_example(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]], answer_only: bool = False,
    template: str | None = None,
) -> dict[str, list[int]]:
    """``input_ids`` and ``assistant_masks`` of one conversation (answer only for a drill); ``template``:
    ``training_template(tokenizer)``, worked out here when not given."""
    template = template or training_template(tokenizer)
    enc = tokenizer.apply_chat_template(
        messages, tools=tools, chat_template=template, tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids = list(enc["input_ids"])
    newline = tokenizer.convert_tokens_to_ids("\u010a")  # byte-level "\n"
    mask = _trim(ids, list(enc["assistant_masks"]), newline, tokenizer.eos_token_id)
    if answer_only:
        mask = _last_span(mask)
    return {"input_ids": ids, "assistant_masks": mask}


def build_examples(
    tokenizer: Any, demos: list[Demonstration], settings: WarmStartSettings
) -> tuple[list[dict[str, list[int]]], int]:
    """Every epoch's demonstrations plus that epoch's fresh drills, tokenized; and the drill count."""
    from ..data.facts import COMPANIES, METRIC_LABELS
    from .drills import drill_sources, make_drills, make_query_drills, query_sources
    from .pretrain import lookup_example, lookup_pairs, name_token_ids, number_token_ids

    template = training_template(tokenizer)
    encoded = [encode_example(tokenizer, d.messages, d.tools, template=template) for d in demos]
    sources = drill_sources(demos, METRIC_LABELS)
    labels = list(METRIC_LABELS.values())
    companies = [c.name for c in COMPANIES]
    queries = query_sources(demos, companies, [label.lower() for label in labels])
    rng = random.Random(settings.seed)
    per_epoch = int(round(settings.drills_per_demo * len(demos)))
    query_drills = int(round(settings.query_drills_per_demo * len(demos)))
    tables = int(round(settings.lookup_tables_per_demo * len(demos)))
    examples, n_drills = [], 0
    for _ in range(settings.epochs):
        examples += encoded
        for messages, tools in make_drills(sources, per_epoch, rng) + make_query_drills(queries, query_drills, rng):
            examples.append(encode_example(tokenizer, messages, tools, answer_only=True, template=template))
            n_drills += 1
        for _ in range(tables):
            ids, mask = lookup_example(tokenizer, labels, rng)
            examples.append({"input_ids": ids, "assistant_masks": mask})
    if settings.lookup_supervision:
        # what an answer or a search copies first: a figure's digits or a company's name
        names = name_token_ids(tokenizer, companies)
        copied = number_token_ids(tokenizer) | set(names) | set(names.values())
        examples = [{**e, "lookup_pairs": lookup_pairs(e["input_ids"], e["assistant_masks"], copied, names)}
                    for e in examples]
    return examples, n_drills


def collect_demonstrations(
    rows: list[Row], tools_url: str, token: str | None, settings: WarmStartSettings
) -> list[Demonstration]:
    """Run the scripted policy on ``rows`` against the tool server at ``tools_url``.

    Asks the server for its tools first, so a server that is down or refuses the token raises
    ``ToolServerUnavailable`` before any demonstration is made (a refused call would otherwise come
    back as an ``Error:`` output and end up in the demonstrations)."""
    from ..agent.loop import run_sync
    from ..tools.client import ToolClient
    from .scripted import http_tool_caller, make_demonstrations

    async def main() -> list[Demonstration]:
        async with ToolClient(tools_url, token=token) as client:
            await client.specs()
            return await make_demonstrations(rows, http_tool_caller(client), settings.mixture, settings.seed)

    return run_sync(main())


def _progress_line(max_seconds: float | None = None) -> Any:
    """Prints a line per log step; with ``max_seconds``, stops training once that much time has passed."""
    from transformers import TrainerCallback

    class ProgressLine(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.perf_counter()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs and state.is_world_process_zero:
                print(f"  step {state.global_step:>5}/{state.max_steps}  loss {float(logs['loss']):.3f}  "
                      f"{time.perf_counter() - self.started:5.0f}s", flush=True)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if max_seconds is not None and time.perf_counter() - self.started >= max_seconds:
                control.should_training_stop = True

    return ProgressLine()


def _warm_start_trainer(weight: float) -> Any:
    """SFTTrainer with a plain cross-entropy (``pretrain.causal_lm_loss``: the LM head only where a label
    is), plus the look-up head's attention loss on examples that carry ``lookup_pairs`` (``weight`` 0: none).

    Why not SFTTrainer's own loss: it computes the log-probs through TRL's chunked "fused LM head"
    (tiles of the vocabulary, fp32 copies, the logits recomputed in the backward pass), built to spare
    a large model's memory. On the 4.5k-vocabulary tiny model it was most of a step (profiled: 12 of
    27 s for 60 steps in its forward and backward tiles). The loss is the same: the mean
    cross-entropy over the assistant tokens (labels -100 elsewhere), summed over the batch and
    divided by the number of such tokens."""
    from trl import SFTTrainer

    from .pretrain import LOOKUP_HEAD, causal_lm_loss, lookup_attention_nll, pad_pairs

    class WarmStartTrainer(SFTTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            inner = self.data_collator

            def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
                pairs = [list(e.pop("lookup_pairs", [])) for e in examples]
                batch = inner(examples)
                if weight:
                    batch["lookup_pairs"] = pad_pairs(pairs)
                return batch

            self.data_collator = collate

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            pairs = inputs.pop("lookup_pairs", None)
            supervise = pairs is not None and model.training
            # as in pretraining: the attention weights come back with the outputs (eager attention)
            loss, outputs = causal_lm_loss(model, inputs, num_items_in_batch, output_attentions=supervise)
            if supervise:
                layer, head = LOOKUP_HEAD
                loss = loss + weight * lookup_attention_nll(outputs.attentions[layer][:, head], pairs.to(loss.device))
            return (loss, outputs) if return_outputs else loss

    return WarmStartTrainer


def train_on_examples(
    model_dir: Path, examples: list[dict[str, list[int]]], out_dir: Path, settings: WarmStartSettings,
    max_seconds: float | None = None,
) -> tuple[Any, float | None]:
    """SFTTrainer over the pre-tokenized examples; saves the model and tokenizer to ``out_dir``.

    ``max_seconds`` stops training after that much wall time, wherever the schedule is (a baseline
    given the same time as another run)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import PrinterCallback
    from trl import SFTConfig

    from ..hardware import cpu_has_native_bf16

    torch.set_num_threads(settings.threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = SFTConfig(
        output_dir=str(out_dir / "trainer"),
        learning_rate=settings.learning_rate,
        num_train_epochs=1,  # the examples already hold every epoch (fresh drills in each)
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        weight_decay=0.0,
        logging_steps=LOG_EVERY,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=settings.seed,
        max_length=None,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",  # less padding: ~30% faster on CPU
        disable_tqdm=True,
        activation_checkpointing=False,  # TRL turns it on by default; for 1M parameters it only costs time
        remove_unused_columns=False,  # keep ``lookup_pairs`` for the look-up loss
        bf16=settings.bf16 if settings.bf16 is not None else cpu_has_native_bf16(),
    )
    supervised = settings.lookup_supervision > 0 and any("lookup_pairs" in e for e in examples)
    if supervised:
        model.set_attn_implementation("eager")  # the look-up loss needs the head's attention weights
    trainer = _warm_start_trainer(settings.lookup_supervision if supervised else 0.0)(
        model=model, args=config, train_dataset=Dataset.from_list(examples), processing_class=tokenizer
    )
    trainer.remove_callback(PrinterCallback)  # one short line per log step instead of a dict
    trainer.add_callback(_progress_line(max_seconds))
    output = trainer.train()
    if supervised:
        model.set_attn_implementation("sdpa")
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(out_dir)
    return trainer, getattr(output, "training_loss", None)


def warm_start(
    model_dir: Path,
    rows: list[Row],
    tools_url: str,
    out_dir: Path,
    token: str | None = None,
    settings: WarmStartSettings | None = None,
    max_seconds: float | None = None,
) -> WarmStartResult:
    """Demonstrate on ``rows`` through the tool server, then SFT the model in ``model_dir`` into ``out_dir``
    (for at most ``max_seconds`` of training when given)."""
    from collections import Counter

    from transformers import AutoTokenizer

    settings = settings or WarmStartSettings()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    demos = collect_demonstrations(rows, tools_url, token, settings)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples, n_drills = build_examples(tokenizer, demos, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demonstrations.jsonl").write_text(demonstrations_to_jsonl(demos), encoding="utf-8")
    start = time.perf_counter()
    trainer, loss = train_on_examples(model_dir, examples, out_dir, settings, max_seconds)
    result = WarmStartResult(
        out_dir=str(out_dir),
        demonstrations=len(demos),
        strategy_counts=dict(Counter(d.strategy for d in demos)),
        demonstrations_correct=dict(Counter(d.strategy for d in demos if d.correct)),
        drills=n_drills,
        examples=len(examples),
        steps=trainer.state.global_step,
        train_seconds=round(time.perf_counter() - start, 1),
        final_loss=loss,
        settings=settings,
    )
    (out_dir / "warm_start.json").write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return result


__all__ = [
    "WarmStartResult",
    "WarmStartSettings",
    "build_examples",
    "collect_demonstrations",
    "encode_example",
    "training_template",
    "train_on_examples",
    "warm_start",
]
