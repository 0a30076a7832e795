"""A short synthetic pretraining that gives the tiny model in-context look-up.

A pretrained model arrives able to find things in its context: a path from a search hit to copy into
a ``read``, the line of a filing that holds the asked figure. A randomly initialised 1M-parameter model
does not, and the warm start alone does not teach it: trained only on the task (the warm start's
demonstrations and reading drills, or synthetic look-up tables), the loss stays at the plateau of
"right format, random figure" and the model does not copy the asked figure (``bench/RESULTS.md``).
The circuit it lacks is an induction head: one attention head that marks each position with the
token before it, and a later head that, from the current token, attends to the position after that
token's previous occurrence and copies what it finds.

Two stages, both on synthetic data (nothing about the corpus's figures is learnt):

1. **Induction** — random token sequences with repeated segments. Next to the language-model loss on
   the repeated tokens, an auxiliary loss supervises two heads' attention directly: layer 0 head 0 to
   the previous token, layer 1 head 0 to the induction target. Without that supervision the same
   sequences stay on the plateau (both heads must form before either pays off); with it the
   previous-token head forms within the first hundred steps and copying follows.
2. **Look-up** — a tool response listing some of the corpus's highlight lines in random order with
   random figures, then questions naming one metric each, answered as the filing's line
   (``Net income: $107M``). Once the model has written the label, the figure is what followed the same
   label token in the table: one induction step, and the induction head's attention from the label to
   that figure is supervised too (``LOOKUP_HEAD``). Induction batches continue alongside.

The tokenizer makes this a one-token look-up (``Net income: $`` and ``27.5`` are single tokens), and
the model's heads are 64 wide (``tiny.TINY_SHAPE``). The default 600 + 300 steps take the model from
no exact answers on fresh six-line tables to all of them (``bench/RESULTS.md``).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

import torch

from ...hardware import cpu_has_native_bf16
from ...sft import causal_lm_loss, mask_spans
from .drills import random_figure
from .tokenizer import DECIMALS, DIGIT_CHUNKS

INDUCTION_LENGTH = 96
"""Tokens in each induction sequence."""
BATCH = 32
AUX_WEIGHT = 1.0
"""Weight of the attention-supervision loss next to the language-model loss."""
QUESTIONS_PER_TABLE = 3
"""Questions asked about each synthetic look-up table (more answers per sequence, same context)."""
LOOKUP_HEAD = (1, 0)
"""(layer, head) whose attention is supervised to find the answer's figure in the context."""


def _figure(label: str, rng: random.Random) -> str:
    """A random figure in the corpus's format for ``label``: ``13.4%`` for margins, ``$842M`` or ``$1.43B``."""
    like = "0.0%" if "margin" in label.lower() else ("$1.00B" if rng.random() < 0.15 else "$1M")
    return random_figure(like, rng)


def _induction_batch(first_id: int, vocab: int, gen: Any, rng: random.Random, batch: int) -> tuple[Any, Any, Any]:
    """Random ids with planted repeats; LM labels on repeated tokens; the induction head's target positions."""
    ids = torch.randint(first_id, vocab, (batch, INDUCTION_LENGTH), generator=gen)
    length = INDUCTION_LENGTH
    for b in range(batch):
        for _ in range(2):
            n = rng.randint(6, 16)
            src = rng.randint(0, length // 2 - n)
            dst = rng.randint(src + n + 1, length - n)
            ids[b, dst : dst + n] = ids[b, src : src + n]
    labels = torch.full((batch, length), -100)
    target = torch.full((batch, length), -1)
    for b, row in enumerate(ids.tolist()):
        last: dict[int, int] = {}
        for i, token in enumerate(row):
            if token in last and i + 1 < length:
                target[b, i] = last[token] + 1  # attend to what followed the token's previous occurrence
                labels[b, i + 1] = row[last[token] + 1]  # ... and predict it (HF shifts labels)
            last[token] = i
    return ids, labels, target


def _attention_nll(attention: Any, target: Any) -> Any:
    """Mean -log of one head's attention on the target position, where a target exists."""
    rows, queries = (target >= 0).nonzero(as_tuple=True)
    if rows.numel() == 0:
        return attention.sum() * 0
    return -(attention[rows, queries, target[rows, queries]] + 1e-6).log().mean()


def _induction_loss(model: Any, batch: tuple[Any, Any, Any]) -> Any:
    """LM loss on the repeats plus the supervision of the previous-token and induction heads."""
    ids, labels, target = batch
    loss, out = causal_lm_loss(model, {"input_ids": ids, "labels": labels}, output_attentions=True)
    previous = (torch.arange(ids.shape[1]) - 1).expand_as(ids)
    aux = _attention_nll(out.attentions[0][:, 0], previous) + _attention_nll(out.attentions[1][:, 0], target)
    return loss + AUX_WEIGHT * aux


def number_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokens a figure's digits are made of (digit chunks and decimals)."""
    ids = {tokenizer.convert_tokens_to_ids(t) for t in DIGIT_CHUNKS + DECIMALS}
    return ids - {tokenizer.unk_token_id, None}


def name_token_ids(tokenizer: Any, names: list[str]) -> dict[int, int]:
    """Each name's first token as it starts a JSON string (``Meridian``) → as it follows a space (`` Meridian``)."""
    out = {}
    for name in names:
        bare, spaced = tokenizer.encode(name), tokenizer.encode(" " + name)
        if bare and spaced:
            out[bare[0]] = spaced[0]
    return out


def lookup_pairs(ids: list[int], mask: list[int], numbers: set[int], same: dict[int, int] | None = None) -> list[int]:
    """Flat ``[query, key, ...]`` of each answer span: the position that predicts the answer's first number
    token, and that token's last occurrence before the span (where a look-up copies it from).

    ``same`` maps a token to the one it is copied from when the two differ: a search query's
    ``Meridian`` (after a quote) is the question's `` Meridian`` (after a space)."""
    same = same or {}
    pairs: list[int] = []
    for start, end in mask_spans(mask):
        first = next((k for k in range(start, end) if ids[k] in numbers), None)
        if first is None or first == 0:
            continue
        wanted = {ids[first], same.get(ids[first], ids[first])}
        source = next((k for k in range(start - 1, -1, -1) if ids[k] in wanted), None)
        if source is not None:
            pairs += [first - 1, source]
    return pairs


def lookup_example(tokenizer: Any, labels: list[str], rng: random.Random) -> tuple[list[int], list[int]]:
    """A synthetic tool response with k highlight lines and questions about them; ids and loss mask."""
    shown = rng.sample(labels, rng.randint(1, len(labels)))
    values = {label: _figure(label, rng) for label in shown}
    body = "".join(f"{label}: {values[label]}\n" for label in shown)
    ids = tokenizer.encode(f"<|im_start|>user\n<tool_response>\nFiling\n\n{body}\n</tool_response><|im_end|>\n")
    mask = [0] * len(ids)
    for _ in range(QUESTIONS_PER_TABLE):
        asked = rng.choice(shown)
        question = tokenizer.encode(
            f"<|im_start|>user\nWhat was the {asked.lower()} in Q{rng.randint(1, 4)}?<|im_end|>\n<|im_start|>assistant\n"
        )
        answer = tokenizer.encode(f"{asked}: {values[asked]}") + [tokenizer.eos_token_id]
        newline = tokenizer.encode("\n")
        ids += question + answer + newline
        mask += [0] * len(question) + [1] * len(answer) + [0] * len(newline)
    return ids, mask


def pad_pairs(rows: list[list[int]]) -> Any:
    """``(batch, n, 2)`` tensor of look-up pairs, padded with -1."""
    n = max((len(r) // 2 for r in rows), default=0)
    return torch.tensor([r + [-1] * (2 * n - len(r)) for r in rows]).view(len(rows), n, 2)


def lookup_attention_nll(attention: Any, pairs: Any) -> Any:
    """Mean -log of the look-up head's attention (``(batch, L, L)``) from each query to its key."""
    rows, which = (pairs[..., 0] >= 0).nonzero(as_tuple=True)
    if rows.numel() == 0:
        return attention.sum() * 0
    queries, keys = pairs[rows, which, 0], pairs[rows, which, 1]
    return -(attention[rows, queries, keys] + 1e-6).log().mean()


def _lookup_batch(tokenizer: Any, labels: list[str], rng: random.Random, batch: int,
                  numbers: set[int]) -> tuple[dict[str, Any], Any]:
    examples = [lookup_example(tokenizer, labels, rng) for _ in range(batch)]
    width = max(len(ids) for ids, _ in examples)
    pad = tokenizer.pad_token_id
    inputs = {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in examples]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in examples]),
        "labels": torch.tensor(
            [[t if m else -100 for t, m in zip(ids, mask)] + [-100] * (width - len(ids)) for ids, mask in examples]
        ),
    }
    return inputs, pad_pairs([lookup_pairs(ids, mask, numbers) for ids, mask in examples])


def pretrain_lookup(
    model: Any,
    tokenizer: Any,
    labels: list[str],
    induction_steps: int = 600,
    lookup_steps: int = 300,
    seed: int = 0,
    learning_rate: float = 1e-3,
    log: Callable[[str], None] | None = None,
    bf16: bool | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` in place: induction, then look-up; returns the losses every 100 steps of each stage.

    ``bf16``: autocast the matrix products to bfloat16; None: where the CPU does bf16 natively."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    first = len(tokenizer.all_special_ids)  # ordinary tokens follow the special ones
    vocab = len(tokenizer)
    previous_impl = model.config._attn_implementation
    model.set_attn_implementation("eager")  # the supervision needs the attention weights (and is fastest in bf16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    model.train()
    history: dict[str, list[float]] = {"induction": [], "lookup": []}

    def step(loss: Any, stage: str, i: int, total: int) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i % 100 == 0 or i == total - 1:
            history[stage].append(round(loss.item(), 4))
            if log:
                log(f"  {stage} step {i:>4}/{total}  loss {loss.item():.3f}")

    # matrix products in bf16 where the CPU has it natively, as in the warm start (weights stay fp32)
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16,
                                 enabled=bf16 if bf16 is not None else cpu_has_native_bf16())
    try:
        for i in range(induction_steps):
            with autocast():
                loss = _induction_loss(model, _induction_batch(first, vocab, gen, rng, BATCH))
            step(loss, "induction", i, induction_steps)
        numbers = number_token_ids(tokenizer)
        layer, head = LOOKUP_HEAD
        for i in range(lookup_steps):
            inputs, pairs = _lookup_batch(tokenizer, labels, rng, BATCH, numbers)
            with autocast():
                loss, out = causal_lm_loss(model, inputs, output_attentions=True)
                aux = lookup_attention_nll(out.attentions[layer][:, head], pairs)
                keep = _induction_loss(model, _induction_batch(first, vocab, gen, rng, BATCH // 4))
            step(loss + AUX_WEIGHT * aux + keep, "lookup", i, lookup_steps)
    finally:
        model.set_attn_implementation(previous_impl)
        model.eval()
    return history


__all__ = ["LOOKUP_HEAD", "lookup_attention_nll", "lookup_example", "lookup_pairs", "name_token_ids",
           "number_token_ids", "pad_pairs", "pretrain_lookup"]
