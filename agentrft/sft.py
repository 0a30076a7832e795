"""Warm start on demonstration trajectories ("fix the prior first"): supervised fine-tuning before RL.

A demonstration is a conversation in OpenAI messages (tool calls and tool results included) with the
tools it was made with: a scripted policy's, a stronger model's, a production log's. ``encode_example``
tokenizes one with the training variant of the model's chat template (``{% generation %}`` markers →
``assistant_masks``, exactly what TRL's ``assistant_only_loss=True`` would compute), then trims the mask
to the tokens the model itself emits in a rollout: the template's newline after ``<|im_start|>assistant``
and after ``<|im_end|>`` belong to the prompt side in the agent loop, so they carry no loss here either.
``train_on_examples`` runs TRL's ``SFTTrainer`` over such pre-tokenized examples (SFTTrainer turns
``assistant_masks`` into labels, -100 elsewhere) and saves the model and tokenizer.

Examples come pre-tokenized rather than as raw conversations so that a caller can mix kinds of example
(the running example adds answer-only drills and synthetic look-up tables, ``agentrft.filings.model``)
and give a ``trainer_class`` that adds a loss of its own.

Deviation from SFTTrainer: the loss is ``causal_lm_loss``, a plain cross-entropy with the LM head run only
on positions that predict a label, instead of TRL's chunked "fused LM head" (tiles of the vocabulary,
fp32 copies, the logits recomputed in the backward pass), which is built to spare a large model's memory
and on a small one is most of a step (``bench/RESULTS.md``). The value is the same: the mean cross-entropy
over the assistant tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import get_training_chat_template

from .agent.lean_step import FAMILY
from .hardware import cpu_has_native_bf16

LOG_EVERY = 80
"""Steps between two progress lines."""


def mask_spans(mask: list[int]) -> list[tuple[int, int]]:
    """``(start, end)`` of each contiguous run of ones in ``mask`` (end exclusive)."""
    spans, i = [], 0
    while i < len(mask):
        if not mask[i]:
            i += 1
            continue
        start = i
        while i < len(mask) and mask[i]:
            i += 1
        spans.append((start, i))
    return spans


def _trim(ids: list[int], mask: list[int], newline: int, eos: int) -> list[int]:
    """Keep, in each masked span, only what a rollout generates: after the header's newline, up to eos."""
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
    patching, which costs more than encoding an example: work it out once and pass it to ``encode_example``."""
    return get_training_chat_template(tokenizer) or tokenizer.chat_template


def encode_example(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]], answer_only: bool = False,
    template: str | None = None,
) -> dict[str, list[int]]:
    """``input_ids`` and ``assistant_masks`` of one conversation (the loss on its final answer only with
    ``answer_only``); ``template``: ``training_template(tokenizer)``, worked out here when not given."""
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


def causal_lm_loss(model: Any, inputs: dict[str, Any], num_items: Any = None,
                   output_attentions: bool = False) -> tuple[Any, Any]:
    """The causal-LM cross-entropy of ``model(**inputs)`` (``inputs`` hold ``labels``) and the model's outputs.

    The same value as the model's own loss (mean over the labels that are not -100, or their sum over
    ``num_items`` as the Trainer passes it), but the LM head runs only on the positions that predict a
    label: with a small model and a few labelled positions per sequence the head over the vocabulary is
    much of a step's arithmetic. Model types outside ``lean_step.FAMILY`` (whose logits are exactly
    ``lm_head(hidden state)``) go through the model's own loss."""
    if getattr(model.config, "model_type", None) not in FAMILY:
        kwargs = {"num_items_in_batch": num_items} if num_items is not None else {}
        out = model(**inputs, output_attentions=output_attentions, use_cache=False, **kwargs)
        return out.loss, out
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    out = model.get_decoder()(**inputs, output_attentions=output_attentions, use_cache=False)
    targets = F.pad(labels, (0, 1), value=-100)[:, 1:]
    where = targets != -100
    logits = model.get_output_embeddings()(out.last_hidden_state[where]).float()
    loss = F.cross_entropy(logits, targets[where], reduction="sum")
    count = num_items if num_items is not None else where.sum().clamp(min=1)
    return loss / count, out


class DemonstrationTrainer(SFTTrainer):
    """SFTTrainer with ``causal_lm_loss`` (see the module docstring); subclass it to add a loss."""

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss, outputs = causal_lm_loss(model, inputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss


class ProgressLine(TrainerCallback):
    """Prints a line per log step; with ``max_seconds``, stops training once that much time has passed."""

    def __init__(self, max_seconds: float | None = None) -> None:
        self.max_seconds = max_seconds
        self.started = time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs and state.is_world_process_zero:
            print(f"  step {state.global_step:>5}/{state.max_steps}  loss {float(logs['loss']):.3f}  "
                  f"{time.perf_counter() - self.started:5.0f}s", flush=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.max_seconds is not None and time.perf_counter() - self.started >= self.max_seconds:
            control.should_training_stop = True


def train_on_examples(
    model_dir: Path, examples: list[dict[str, Any]], out_dir: Path, *, learning_rate: float, batch_size: int,
    seed: int = 0, max_steps: int = -1, threads: int | None = None, bf16: bool | None = None,
    max_seconds: float | None = None, trainer_class: Callable[..., SFTTrainer] = DemonstrationTrainer,
) -> tuple[Any, float | None]:
    """One pass of ``trainer_class`` over the pre-tokenized ``examples`` (in the order given, grouped by length
    into batches; a caller that wants several epochs puts them in ``examples``); saves the model and tokenizer
    to ``out_dir`` and returns the trainer and its final training loss.

    A cosine schedule peaking at ``learning_rate`` after 3% warm-up, on the GPU when there is one. ``threads``:
    torch's CPU threads (None leaves torch's default). ``bf16``: matrix products in bfloat16 autocast (weights
    stay fp32); None where the GPU, or without one the CPU, does bf16 natively. ``max_seconds`` stops training after that much wall time,
    wherever the schedule is (a baseline given the same time as another run). ``trainer_class`` is called as
    SFTTrainer is; keys of an example beyond ``input_ids`` and ``assistant_masks`` reach its collator."""
    if threads is not None:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = SFTConfig(
        output_dir=str(out_dir / "trainer"),
        learning_rate=learning_rate,
        num_train_epochs=1,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        weight_decay=0.0,
        logging_steps=LOG_EVERY,
        save_strategy="no",
        report_to="none",
        use_cpu=not cuda,
        seed=seed,
        max_length=None,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",  # less padding: faster on a CPU
        disable_tqdm=True,
        activation_checkpointing=False,  # TRL turns it on by default; for a small model it only costs time
        remove_unused_columns=False,  # keep the keys a trainer_class reads
        bf16=bf16 if bf16 is not None else (torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16()),
    )
    trainer = trainer_class(model=model, args=config, train_dataset=Dataset.from_list(examples),
                            processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # one short line per log step instead of a dict
    trainer.add_callback(ProgressLine(max_seconds))
    output = trainer.train()
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(out_dir)
    return trainer, getattr(output, "training_loss", None)


__all__ = [
    "DemonstrationTrainer",
    "ProgressLine",
    "causal_lm_loss",
    "encode_example",
    "mask_spans",
    "train_on_examples",
    "training_template",
]
