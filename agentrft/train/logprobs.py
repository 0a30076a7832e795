"""Per-token log-probs for TRL's GRPO loss on CPU: only real tokens through the model, only the policy's through the head.

TRL computes every log-prob its loss needs by calling the model with ``fused_lm_head=True``
(``trl.trainer.utils.add_fused_lm_head``): the backbone over the padded batch, then the LM head
folded tile by tile into online log-sum-exp statistics. On a GPU its Triton kernel scores only the
positions that carry a label. Without Triton (on a CPU) it scores every position of the padded
batch, prompt and padding included, in a dozen elementwise torch passes over each
``tokens × vocabulary`` tile, and runs them all again in the backward pass.

A GRPO batch of agent trajectories is mostly padding and tool output in that layout: TRL pads every
prompt to the longest prompt and every completion (turns and tool results) to the longest completion
of the whole generation batch, one wandering rollout is several times longer than the median one, and
most completion tokens are tool results, which the loss masks out. ``install_compact_logprobs``
replaces the fused forward with one that keeps TRL's contract (a ``FusedCausalLMOutput`` shaped like
the labels, zero where the label is -100) and does less work to get there:

- rows are sorted by their real length and run through the backbone in buckets, each cut to its own
  longest row, so padding costs almost nothing (each row's tokens are one contiguous span: TRL pads
  prompts on the left and completions on the right);
- the LM head and the softmax run only on positions whose label the policy generated, in chunks of
  positions whose logits are recomputed in the backward pass rather than kept (``_ChunkedHead``), so
  the head's memory does not grow with the step. Which tokens those are comes from
  ``GeneratedTokens``, filled by the rollout function with the same ``env_mask`` it hands TRL.
  Everywhere TRL reads these log-probs (the policy ratio, the KL term, the entropy metric, the
  importance weights) it multiplies them by that mask first, so the zeros left on tool tokens never
  reach the loss; ``check_trl_contract`` checks that TRL still masks that way. A row the registry does not know is scored at every label.

Positions inside a row start at 0 in a bucket where TRL's layout started them after the left
padding; rotary attention depends only on relative positions, so the log-probs are the same to float
rounding (checked against TRL's own head in ``tests/test_train_logprobs.py``). TRL still owns the
loss, the advantages, the KL term and the masks. Models this does not cover (logit soft-capping or
scaling, multimodal inputs, pre-shifted labels, rows that are not one contiguous span) keep TRL's head.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

BUCKET_ROWS = 8
"""Rows per backbone pass after sorting by length: small buckets waste little padding, and a small
model's matrix products stay efficient down to a few rows."""

HEAD_CHUNK = 1024
"""Positions per LM-head chunk at most (18 MB of float32 logits for the tiny model's 4,488 tokens)."""
HEAD_CHUNK_FLOATS = 1 << 23
"""Logits per chunk at most (32 MB of float32): a 150k-token vocabulary gets chunks of 55 positions."""

_SCALINGS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def _chunk_positions(vocabulary: int) -> int:
    """Positions per head chunk for a vocabulary of this size: ``HEAD_CHUNK``, fewer past ``HEAD_CHUNK_FLOATS``."""
    return max(1, min(HEAD_CHUNK, HEAD_CHUNK_FLOATS // vocabulary))


class _ChunkedHead(torch.autograd.Function):
    """Log-probs of the targets (and the entropies, without gradient) from the LM head, a chunk of positions at a time.

    Only the targets' log-probs and each position's log-sum-exp are kept for the backward pass, which
    recomputes each chunk's logits. A whole step's ``positions × vocabulary`` logits, log-softmax and
    gradient grow with the step's batch, and on a CPU memory that grows the process is paid for in page
    faults (``bench/RESULTS.md``). Chunked (``HEAD_CHUNK`` positions, fewer for a large vocabulary), the head's memory is the same few
    chunks every step, and it costs one more matrix product.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        count = hidden.shape[0]
        ctx.chunk = chunk = _chunk_positions(weight.shape[0])
        chosen = hidden.new_empty(count)
        normaliser = hidden.new_empty(count)
        spread = hidden.new_empty(count) if with_entropy else None
        for first in range(0, count, chunk):
            part = slice(first, first + chunk)
            logits = torch.nn.functional.linear(hidden[part], weight, bias)
            lse = torch.logsumexp(logits, dim=-1)
            normaliser[part] = lse
            chosen[part] = logits.gather(1, targets[part, None]).squeeze(1) - lse
            if spread is not None:
                logp = logits.sub_(lse[:, None])
                spread[part] = -(logp.exp() * logp).sum(dim=-1)
        ctx.save_for_backward(hidden, weight, bias, targets, normaliser)
        if spread is not None:
            ctx.mark_non_differentiable(spread)
        return chosen, spread

    @staticmethod
    def backward(ctx: Any, grad_chosen: torch.Tensor, _grad_spread: Any) -> tuple[Any, ...]:
        hidden, weight, bias, targets, normaliser = ctx.saved_tensors
        wants_hidden, wants_weight, wants_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if wants_hidden else None
        grad_weight = torch.zeros_like(weight) if wants_weight else None
        grad_bias = torch.zeros_like(bias) if wants_bias else None
        for first in range(0, hidden.shape[0], ctx.chunk):
            part = slice(first, first + ctx.chunk)
            g = grad_chosen[part, None]
            # d log p(target) / d logits = onehot(target) - softmax
            grad_logits = torch.nn.functional.linear(hidden[part], weight, bias).sub_(normaliser[part, None])
            grad_logits.exp_().mul_(-g).scatter_add_(1, targets[part, None], g)
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[part])
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t(), hidden[part])
            if grad_bias is not None:
                grad_bias.add_(grad_logits.sum(dim=0))
        return grad_hidden, grad_weight, grad_bias, None, None


class GeneratedTokens:
    """Which tokens of each trajectory of the batch being trained the policy generated.

    Keyed by the trajectory's whole token sequence (prompt and completion), which is what the
    compact forward sees of a row once its padding is cut. Two trajectories with the same tokens
    share one entry, the union of their masks (scoring an extra position is harmless).
    """

    def __init__(self) -> None:
        self._masks: dict[tuple[int, ...], torch.Tensor] = {}

    def record(self, sequences: Sequence[Sequence[int]], masks: Sequence[Sequence[int]]) -> None:
        """Replace what is known with this generation batch: token ids and 0/1 masks of equal length."""
        self._masks = {}
        for ids, mask in zip(sequences, masks, strict=True):
            if len(ids) != len(mask):
                raise ValueError("a generated-token mask must be as long as its token ids")
            key = tuple(ids)
            generated = torch.tensor(list(mask), dtype=torch.bool)
            known = self._masks.get(key)
            self._masks[key] = generated if known is None else known | generated

    def lookup(self, ids: torch.Tensor) -> torch.Tensor | None:
        """The mask of the trajectory with exactly these token ids, or None."""
        return self._masks.get(tuple(ids.tolist()))


@dataclass(frozen=True)
class _Options:
    temperature: float
    with_entropy: bool
    entropy_grad: bool
    autocast: bool
    generated: GeneratedTokens | None


def covers(model: Any) -> bool:
    """Whether the compact forward computes what TRL's head would for this model (text, unscaled logits)."""
    config = model.config.get_text_config()
    scaled = any(getattr(config, name, None) not in (None, 1.0) for name in _SCALINGS)
    return not scaled and config is model.config


def install_compact_logprobs(
    model: Any,
    temperature: float,
    with_entropy: bool = True,
    entropy_grad: bool = False,
    autocast: bool = False,
    generated: GeneratedTokens | None = None,
) -> None:
    """Make ``model(input_ids=..., attention_mask=..., labels=..., fused_lm_head=True)`` compact.

    ``model`` is the module TRL gave a fused head (the base model under a peft wrapper); TRL's fused
    forward stays in place for every call this module does not cover. ``with_entropy`` is what TRL
    asks of the policy's head (the reference's gives log-probs only); ``entropy_grad`` keeps the
    entropy differentiable, which only an entropy bonus in the loss needs. ``autocast`` runs the
    backbone's matrix products in bfloat16 (the head and the softmax stay float32); the rollouts,
    which call the model's own forward, are untouched by it. ``generated`` limits the head to the
    policy's own tokens (see the module docstring).
    """
    fused_forward = model.forward  # TRL's, bound to the model
    options = _Options(temperature, with_entropy, entropy_grad, autocast, generated)

    def compact_forward(
        self: Any,
        *args: Any,
        fused_lm_head: bool = False,
        labels: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        input_ids, attention_mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        plain = set(kwargs) <= {"input_ids", "attention_mask", "use_cache"}
        spans = None
        if fused_lm_head and plain and not args and shift_labels is None and labels is not None and input_ids is not None:
            spans = _spans(attention_mask if attention_mask is not None else torch.ones_like(input_ids))
        if spans is None:
            return fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                                 num_items_in_batch=num_items_in_batch, **kwargs)
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=options.autocast):
            return _compact(self, input_ids, labels, spans, options, num_items_in_batch)

    model.forward = types.MethodType(compact_forward, model)


def _spans(attention_mask: torch.Tensor) -> tuple[list[int], list[int]] | None:
    """Start and length of each row's real tokens, or None when some row's tokens are not contiguous."""
    lengths = attention_mask.sum(dim=1)
    starts = attention_mask.float().argmax(dim=1)
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    inside = (columns >= starts[:, None]) & (columns < (starts + lengths)[:, None])
    if not torch.equal(inside, attention_mask.bool()):
        return None
    return starts.tolist(), lengths.tolist()


def _compact(
    model: Any,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    spans: tuple[list[int], list[int]],
    options: _Options,
    num_items_in_batch: Any,
) -> Any:
    from trl.trainer.utils import FusedCausalLMOutput

    rows, width = input_ids.shape
    starts, lengths = spans
    device = input_ids.device
    order = sorted(range(rows), key=lambda r: lengths[r])
    flat_index: list[torch.Tensor] = []
    hidden_parts: list[torch.Tensor] = []
    target_parts: list[torch.Tensor] = []
    for first in range(0, rows, BUCKET_ROWS):
        bucket = order[first : first + BUCKET_ROWS]
        longest = max(lengths[r] for r in bucket)
        if longest < 2:
            continue
        ids = input_ids.new_zeros((len(bucket), longest))
        mask = input_ids.new_zeros((len(bucket), longest))
        targets = labels.new_full((len(bucket), longest), -100)
        for i, r in enumerate(bucket):
            s, n = starts[r], lengths[r]
            ids[i, :n] = input_ids[r, s : s + n]
            mask[i, :n] = 1
            targets[i, :n] = labels[r, s : s + n]
            generated = options.generated.lookup(ids[i, :n]) if options.generated is not None else None
            if generated is not None:
                targets[i, :n].masked_fill_(~generated.to(device), -100)
        # position j predicts token j + 1, as in TRL's head (whose output column is the label's column - 1)
        keep = targets[:, 1:] != -100
        if not keep.any():
            continue
        hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        hidden_parts.append(hidden[:, :-1][keep])
        target_parts.append(targets[:, 1:][keep])
        row_of = torch.tensor(bucket, device=device)[:, None].expand(-1, longest - 1)
        column_of = torch.tensor([starts[r] for r in bucket], device=device)[:, None] + torch.arange(longest - 1, device=device)
        flat_index.append((row_of * (width - 1) + column_of)[keep])

    log_probs = torch.zeros((rows, width - 1), dtype=torch.float32, device=device)
    entropy = torch.zeros_like(log_probs) if options.with_entropy else None
    label_mask = torch.zeros((rows, width - 1), dtype=torch.bool, device=device)
    if hidden_parts:
        index = torch.cat(flat_index)
        head = model.get_output_embeddings()
        # dividing the hidden states by the temperature scales the logits without another pass over them
        hidden = torch.cat(hidden_parts).float() / options.temperature
        bias = None if head.bias is None else head.bias.float() / options.temperature
        targets = torch.cat(target_parts)
        with torch.autocast(device.type, enabled=False):  # the head in float32, as TRL's
            if options.with_entropy and options.entropy_grad and torch.is_grad_enabled():
                logp = torch.log_softmax(torch.nn.functional.linear(hidden, head.weight.float(), bias), dim=-1)
                chosen = logp.gather(1, targets[:, None]).squeeze(1)
                spread = -(logp.exp() * logp).sum(dim=-1)
            else:
                chosen, spread = _ChunkedHead.apply(hidden, head.weight.float(), bias, targets, options.with_entropy)
        log_probs = log_probs.view(-1).index_put((index,), chosen).view(rows, width - 1)
        if entropy is not None:
            entropy = entropy.view(-1).index_put((index,), spread).view(rows, width - 1)
        label_mask.view(-1)[index] = True
    else:  # nothing to score: a zero that is still connected to the model, so backward() works
        log_probs = log_probs + 0.0 * model.get_output_embeddings().weight.sum()
    count = label_mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return FusedCausalLMOutput(loss=-log_probs.sum() / count, log_probs=log_probs, entropy=entropy, label_mask=label_mask)


__all__ = ["BUCKET_ROWS", "GeneratedTokens", "covers", "install_compact_logprobs"]
