"""The running example's warm start: supervised training on scripted demonstrations and drills.

The training itself is the core's warm start on demonstration trajectories (``agentrft.sft``); this
module makes the examples it trains on. Two kinds of conversation share them: the scripted
demonstrations (loss on every assistant turn: tool calls and answer) and the drills (``drills.py``,
loss on the final answer or the search call only), whose figures are drawn fresh for every epoch.

Two additions keep the look-up the pretraining gave (``pretrain.py``) while the model learns the
task's format: synthetic look-up tables in the mix, and a loss on the look-up head's attention from
each answer to where its figure is copied from (``lookup_pairs``). The demonstrations can be
memorised, and a memorised answer needs no look-up; the drills and tables cannot.
"""

from __future__ import annotations

import functools
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from transformers import AutoTokenizer

from ...agent.loop import run_sync
from ...schema import Row
from ...sft import DemonstrationTrainer, causal_lm_loss, encode_example, train_on_examples, training_template
from ...tools.client import ToolClient
from ..facts import COMPANIES, METRIC_LABELS
from .drills import drill_sources, make_drills, make_query_drills, query_sources
from .pretrain import (
    LOOKUP_HEAD,
    lookup_attention_nll,
    lookup_example,
    lookup_pairs,
    name_token_ids,
    number_token_ids,
    pad_pairs,
)
from .scripted import DEFAULT_MIXTURE, Demonstration, demonstrations_to_jsonl, http_tool_caller, make_demonstrations


class WarmStartSettings(BaseModel):
    """Settings of one warm start; every field is part of the cache key of the result."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=9, ge=1)
    """Passes over the demonstrations; each pass gets its own freshly drawn drills. 9: fewer left more
    rows never answered right in the prior check (``bench/RESULTS.md``)."""
    learning_rate: float = Field(default=1.5e-3, gt=0)
    """Peak rate of the cosine schedule; a higher one diverged (``bench/RESULTS.md``)."""
    batch_size: int = Field(default=8, ge=1)
    drills_per_demo: float = Field(default=1.0, ge=0)
    """Reading drills per demonstration per epoch."""
    query_drills_per_demo: float = Field(default=1.0, ge=0)
    """Query drills (``drills.make_query_drills``: another company in the question and the search) per
    demonstration per epoch. More of them and the model seldom reads after its search (``bench/RESULTS.md``)."""
    lookup_supervision: float = Field(default=1.0, ge=0)
    """Weight of the look-up head's attention loss (``pretrain.LOOKUP_HEAD`` to where each answer's figure
    is copied from); 0 trains on the language-model loss alone. A heavier weight answered fewer questions
    right (``bench/RESULTS.md``)."""
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
    (steps are faster there; ``bench/RESULTS.md``)."""



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
    """Strategy shares in sampled rollouts of the model before the warm start (``agentrft model warm-start --measure``)."""
    strategies_after: dict[str, float] | None = None
    """The same after the warm start, on the same rows and seed."""
    measured_rollouts: int = 0
    """Rollouts behind each of the two."""


def build_examples(
    tokenizer: Any, demos: list[Demonstration], settings: WarmStartSettings
) -> tuple[list[dict[str, list[int]]], int]:
    """Every epoch's demonstrations plus that epoch's fresh drills, tokenized; and the drill count."""
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
    async def main() -> list[Demonstration]:
        async with ToolClient(tools_url, token=token) as client:
            await client.specs()
            return await make_demonstrations(rows, http_tool_caller(client), settings.mixture, settings.seed)

    return run_sync(main())


class LookupTrainer(DemonstrationTrainer):
    """The core's trainer plus the look-up head's attention loss (``pretrain.LOOKUP_HEAD`` to where each
    answer's figure is copied from) on examples that carry ``lookup_pairs``, weighted by ``weight``.

    The loss needs the head's attention weights, so the model runs with eager attention while it trains
    (set before the trainer is built) and is saved with sdpa again."""

    def __init__(self, *args: Any, weight: float = 1.0, **kwargs: Any) -> None:
        kwargs["model"].set_attn_implementation("eager")
        super().__init__(*args, **kwargs)
        self.weight = weight
        inner = self.data_collator

        def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
            pairs = [list(e.pop("lookup_pairs", [])) for e in examples]
            batch = inner(examples)
            batch["lookup_pairs"] = pad_pairs(pairs)
            return batch

        self.data_collator = collate

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        pairs = inputs.pop("lookup_pairs", None)
        supervise = pairs is not None and model.training
        loss, outputs = causal_lm_loss(model, inputs, num_items_in_batch, output_attentions=supervise)
        if supervise:
            layer, head = LOOKUP_HEAD
            loss = loss + self.weight * lookup_attention_nll(outputs.attentions[layer][:, head], pairs.to(loss.device))
        return (loss, outputs) if return_outputs else loss

    def train(self, *args: Any, **kwargs: Any) -> Any:
        output = super().train(*args, **kwargs)
        self.model.set_attn_implementation("sdpa")
        return output


def train_on_examples_with_lookup(
    model_dir: Path, examples: list[dict[str, Any]], out_dir: Path, settings: WarmStartSettings,
    max_seconds: float | None = None,
) -> tuple[Any, float | None]:
    """``agentrft.sft.train_on_examples`` with the settings' rate, batch, seed and threads, and the look-up
    loss when ``settings.lookup_supervision`` is on and the examples carry ``lookup_pairs``."""
    supervised = settings.lookup_supervision > 0 and any("lookup_pairs" in e for e in examples)
    trainer_class: Callable[..., DemonstrationTrainer] = DemonstrationTrainer
    if supervised:
        trainer_class = functools.partial(LookupTrainer, weight=settings.lookup_supervision)
    return train_on_examples(
        model_dir, examples, out_dir, learning_rate=settings.learning_rate, batch_size=settings.batch_size,
        seed=settings.seed, max_steps=settings.max_steps, threads=settings.threads, bf16=settings.bf16,
        max_seconds=max_seconds, trainer_class=trainer_class,
    )


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
    settings = settings or WarmStartSettings()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    demos = collect_demonstrations(rows, tools_url, token, settings)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples, n_drills = build_examples(tokenizer, demos, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demonstrations.jsonl").write_text(demonstrations_to_jsonl(demos), encoding="utf-8")
    start = time.perf_counter()
    trainer, loss = train_on_examples_with_lookup(model_dir, examples, out_dir, settings, max_seconds)
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
    "LookupTrainer",
    "build_examples",
    "collect_demonstrations",
    "train_on_examples_with_lookup",
    "warm_start",
]
