"""Decoding one turn of a batch of rollouts with a transformers causal LM, each rollout's KV cache kept
across its turns.

A turn runs only the tokens a rollout gained since its last turn (the tool results, the chat-template
glue, the last token it generated) through the model; the keys and values of everything before come
from the rollout's ``KVState``. Re-running the whole conversation every turn, as calling ``generate``
on the full text does, costs a forward over every earlier token again.

Sampling follows ``RolloutSettings`` exactly: temperature, top_p, top_k (nothing from the model's
generation config, such as a repetition penalty, is applied), greedy at temperature 0. The recorded
log-probs are those of the distribution actually sampled from (after temperature, top-k and top-p),
which is what TRL's importance-sampling correction compares against.

The cache layers subclass transformers' ``DynamicLayer`` (its ``update``, ``keys``/``values`` and
``lazy_initialization``): a decoding step writes into a buffer sized for the whole turn instead of
``torch.cat``-ing the cache, and rows can be packed and dropped in place. A model whose cache has other
layers (sliding windows) decodes through the model's own cache, and nothing is kept for its next turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .episode import Episode
from .lean_step import LeanStep
from .settings import RolloutSettings

Finish = Callable[[int, list[int], list[float]], None]
"""``finish(row, token_ids, logprobs)``: a row of the batch has ended its turn."""


@dataclass
class KVState:
    """A rollout's keys and values from earlier turns: ``layers[l] = (keys, values)``, each shaped
    ``[kv_heads, length, head_dim]``, covering ``token_ids[:length]``."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    length: int


def choose(logits: torch.Tensor, settings: RolloutSettings,
           generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token per row and its log-prob under the distribution sampled from (greedy at temperature 0)."""
    logits = logits.float()
    if settings.temperature == 0:
        tokens = logits.argmax(dim=-1)
        return tokens, torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1)
    scores = logits / settings.temperature
    if settings.top_k and settings.top_k > 0 and settings.top_k < scores.shape[-1]:
        kth = torch.topk(scores, settings.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if settings.top_p < 1.0:
        ordered, order = torch.sort(scores, dim=-1, descending=True)
        before = torch.softmax(ordered, dim=-1).cumsum(dim=-1) - torch.softmax(ordered, dim=-1)
        drop = before >= settings.top_p  # keep the smallest prefix whose mass reaches top_p
        scores = scores.scatter(1, order, ordered.masked_fill(drop, float("-inf")))
    logp = torch.log_softmax(scores, dim=-1)
    tokens = _sample_rows(logp.exp(), generator)
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)


def _sample_rows(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row drawn from ``probs`` by inverting its cumulative sum (a cumsum and a binary
    search: cheaper than ``torch.multinomial``, see bench/RESULTS.md). A token of probability 0 is never
    drawn: its cumulative sum equals its predecessor's."""
    cdf = probs.cumsum(dim=-1)
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=cdf.dtype)
    u = u.clamp_(min=1e-12) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp_(max=probs.shape[-1] - 1)


class PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer whose keys and values live in a buffer sized for the whole turn.

    transformers' ``DynamicLayer`` appends each decoding step with ``torch.cat``, which copies the whole
    cache every step; here a step writes one column of the buffer and the layer hands out a view of the
    filled part.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity, self.length = capacity, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.length == 0 or end > self._k.shape[-2]:
            size = max(end, self.capacity)
            kept_k, kept_v = self.keys, self.values  # what is filled so far
            self._k = key_states.new_empty((*key_states.shape[:2], size, key_states.shape[-1]))
            self._v = value_states.new_empty((*value_states.shape[:2], size, value_states.shape[-1]))
            if self.length:
                self._k[:, :, : self.length] = kept_k
                self._v[:, :, : self.length] = kept_v
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Hold only ``rows`` of the batch, in a fresh buffer of the same capacity (one copy)."""
        self._refill(len(rows), self.length,
                     lambda old, out: torch.index_select(old, 0, rows, out=out))

    def keep_columns(self, columns: torch.Tensor) -> None:
        """Hold, of row ``r``, only the columns ``columns[r]``, in a fresh buffer of the same capacity."""
        self._refill(columns.shape[0], columns.shape[1], lambda old, out: torch.gather(
            old, 2, columns[:, None, :, None].expand(-1, old.shape[1], -1, old.shape[3]), out=out))

    def _refill(self, rows: int, width: int, fill: Callable[[torch.Tensor, torch.Tensor], Any]) -> None:
        for name, old in (("_k", self.keys), ("_v", self.values)):
            buffer = old.new_empty((rows, old.shape[1], max(width, self.capacity), old.shape[3]))
            fill(old, buffer[:, :, :width])  # straight into the new buffer: no intermediate copy
            setattr(self, name, buffer)
        self.length = width
        self.keys, self.values = self._k[:, :, :width], self._v[:, :, :width]


def new_cache(model: Any, capacity: int) -> DynamicCache:
    """A ``DynamicCache`` for ``model``; its full-attention layers preallocated for ``capacity`` tokens."""
    cache = DynamicCache(config=model.config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


@dataclass
class _FirstPass:
    """The batch laid out for a turn's first pass: row ``i`` is ``[pad | cached_i | pad | new_i]``; the
    attention mask hides the pads and ``positions`` count real tokens only."""

    cached: list[int]
    new: list[int]
    width_cached: int
    width_new: int
    input_ids: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    """``[rows, width_cached + width_new + steps]``: room for every decoding step of the turn."""


def _first_pass(batch: list[Episode], states: list[KVState | None], pad_id: int, steps: int) -> _FirstPass:
    cached = [s.length if s is not None else 0 for s in states]
    news = [list(e.token_ids or [])[c:] for e, c in zip(batch, cached, strict=True)]
    width_cached, width_new = max(cached), max(len(n) for n in news)
    rows = len(batch)
    mask = torch.zeros((rows, width_cached + width_new + steps), dtype=torch.long)
    input_ids = torch.full((rows, width_new), pad_id, dtype=torch.long)
    positions = torch.zeros((rows, width_new), dtype=torch.long)
    for i, (c, new) in enumerate(zip(cached, news, strict=True)):
        mask[i, width_cached - c : width_cached] = 1
        mask[i, width_cached + width_new - len(new) : width_cached + width_new] = 1
        input_ids[i, width_new - len(new) :] = torch.tensor(new, dtype=torch.long)
        positions[i, width_new - len(new) :] = torch.arange(c, c + len(new))
    return _FirstPass(cached, [len(n) for n in news], width_cached, width_new, input_ids, positions, mask)


def _restored_cache(model: Any, states: list[KVState | None], width_cached: int, capacity: int,
                    device: torch.device) -> DynamicCache:
    """A cache for the batch holding each row's kept keys and values, right-aligned at ``width_cached``."""
    cache = new_cache(model, capacity)
    if not width_cached:
        return cache
    reference = next(s for s in states if s is not None).layers
    for layer, (keys, values) in enumerate(reference):
        shape = (len(states), keys.shape[0], width_cached, keys.shape[-1])
        k_all, v_all = keys.new_zeros(shape), values.new_zeros(shape)
        for i, state in enumerate(states):
            if state is not None:
                k_all[i, :, width_cached - state.length :] = state.layers[layer][0]
                v_all[i, :, width_cached - state.length :] = state.layers[layer][1]
        cache.update(k_all.to(device), v_all.to(device), layer)
    return cache


def _pack(cache: DynamicCache, first: _FirstPass, steps: int) -> tuple[torch.Tensor, int]:
    """Move each row's keys and values from ``[pad | cached | pad | new]`` to ``[pad | cached new]``.

    Returns the attention mask for the packed layout with room for ``steps`` more columns, and the
    number of columns filled."""
    lengths = [c + n for c, n in zip(first.cached, first.new, strict=True)]
    width = max(lengths)
    device = cache.layers[0].keys.device
    columns = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros((len(lengths), width + steps), dtype=torch.long)
    end = first.width_cached + first.width_new
    for i, (c, n) in enumerate(zip(first.cached, first.new, strict=True)):
        columns[i, width - c - n : width - n] = torch.arange(first.width_cached - c, first.width_cached)
        columns[i, width - n :] = torch.arange(end - n, end)
        mask[i, width - c - n : width] = 1
    columns = columns.to(device)
    for layer in cache.layers:
        layer.keep_columns(columns)
    return mask.to(device), width


def decode_turn(
    model: Any, batch: list[Episode], limits: list[int], settings: RolloutSettings, seed: int | None,
    finish: Finish, pad_id: int, stop_ids: list[int], reuse_cache: bool = True, lean_decoding: bool = True,
) -> None:
    """Generate one turn for each episode of ``batch`` (at most ``limits[i]`` tokens, through a stop token);
    ``finish(i, token_ids, logprobs)`` is called once per episode, as soon as its turn is over (its
    ``policy_state`` already kept when ``reuse_cache``).

    Decoding reads every row's keys and values at every step, which is what a step is bound by on a CPU,
    so two things keep the batch's cache small: after the first pass each row's keys and values are
    packed to the right (``[pad | cached_i new_i]``, as wide as the longest row instead of the longest
    cached part plus the longest new part), and rows that have finished their turn leave the batch once
    they are a quarter of it. After the first pass, a step goes through ``LeanStep`` where it covers the
    model (``lean_decoding``), else through the model's forward.
    """
    device = next(model.parameters()).device
    rows, steps = len(batch), max(limits)
    states = [e.policy_state if isinstance(e.policy_state, KVState) else None for e in batch]
    first = _first_pass(batch, states, pad_id, steps)
    cache = _restored_cache(model, states, first.width_cached, first.width_cached + first.width_new + steps, device)
    generator = None
    if seed is not None and settings.temperature != 0:
        generator = torch.Generator(device=device).manual_seed(seed)
    mask, positions = first.mask.to(device), first.positions.to(device)
    next_pos = positions[:, -1] + 1
    packable = bool(cache.layers) and all(isinstance(layer, PreallocatedLayer) for layer in cache.layers)
    lean = LeanStep.build(model) if packable and lean_decoding else None  # after this turn's weights
    live = list(range(rows))  # the row of ``batch`` at each position of the decoding batch
    begins = [0] * rows  # where each row's own columns begin, once packed
    generated: list[list[int]] = [[] for _ in range(rows)]
    logprobs: list[list[float]] = [[] for _ in range(rows)]
    done = [False] * rows
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            feed, seen = first.input_ids.to(device), first.width_cached + first.width_new
            for step in range(steps):
                if step and lean is not None:
                    logits = lean.step(feed[:, 0], positions[:, 0], cache, mask[:, :seen])
                else:
                    logits = model(input_ids=feed, attention_mask=mask[:, :seen], position_ids=positions,
                                   cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
                if step == 0 and packable:
                    mask, seen = _pack(cache, first, steps)
                    begins = [seen - c - n for c, n in zip(first.cached, first.new, strict=True)]
                tokens, lps = choose(logits, settings, generator)
                for b, (tok, lp) in enumerate(zip(tokens.tolist(), lps.tolist(), strict=True)):
                    i = live[b]
                    if done[i]:
                        continue
                    generated[i].append(tok)
                    logprobs[i].append(float(lp))
                    done[i] = tok in stop_ids or len(generated[i]) >= limits[i]
                    if done[i] and packable:
                        if reuse_cache:  # all it fed: its columns so far
                            batch[i].policy_state = _kept(cache, b, begins[i], seen)
                        finish(i, generated[i], logprobs[i])
                if all(done) or step == steps - 1:
                    break
                if packable and 4 * sum(done[i] for i in live) >= len(live):
                    stay = torch.tensor([b for b, i in enumerate(live) if not done[i]], device=device)
                    for layer in cache.layers:
                        layer.keep_rows(stay)
                    mask, tokens, next_pos = mask[stay], tokens[stay], next_pos[stay]
                    live = [live[b] for b in stay.tolist()]
                feed, positions = tokens[:, None], (next_pos + step)[:, None]
                mask[:, seen] = 1
                seen += 1
    finally:
        model.train(was_training)
    if not packable:  # nothing kept: the next turn runs the whole conversation again
        for i in range(rows):
            finish(i, generated[i], logprobs[i])


def _kept(cache: DynamicCache, row: int, begin: int, end: int) -> KVState:
    """Row ``row``'s keys and values in columns ``begin:end`` of the decoding batch, copied out of it."""
    return KVState([(layer.keys[row, :, begin:end].clone(), layer.values[row, :, begin:end].clone())
                    for layer in cache.layers], end - begin)


__all__ = ["Finish", "KVState", "PreallocatedLayer", "choose", "decode_turn", "new_cache"]
