"""A transformers causal LM as the policy: batched decoding per turn, with each rollout's KV cache kept across turns.

Two things make local rollouts fast, on CPU as on GPU. Every unfinished rollout generates in one
batch per turn (rather than one rollout at a time). And a rollout's keys and values are kept between
its turns, so a turn runs only the tokens that arrived since the last one (the tool results) through
the model instead of the whole conversation again, which is what re-calling ``generate`` on the full
text does; measured in ``bench/rollout.py``. Sampling follows ``RolloutSettings`` exactly: temperature,
top_p, top_k (nothing from the model's generation config, such as a repetition penalty, is applied),
greedy at temperature 0.

The recorded log-probs are those of the distribution actually sampled from (after temperature, top-k
and top-p), which is what TRL's importance-sampling correction compares against.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from . import render
from .episode import Episode, Reply
from .lean_step import LeanStep
from .parse import ensure_response_parser
from .settings import RolloutSettings


@dataclass
class _KVState:
    """A rollout's keys and values from earlier turns: ``layers[l] = (keys, values)``, each shaped
    ``[kv_heads, length, head_dim]``, covering ``token_ids[:length]``."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    length: int


def _choose(logits: torch.Tensor, settings: RolloutSettings, generator: torch.Generator | None):
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
    """One token per row drawn from ``probs`` by inverting its cumulative sum.

    ``torch.multinomial`` does the same draw at ~5 ms per call for 32 rows of a 4.5k vocabulary on
    this CPU, a quarter of a decoding step of the tiny model; a cumsum and a binary search take ~0.1 ms.
    A token of probability 0 is never drawn: its cumulative sum equals its predecessor's.
    """
    cdf = probs.cumsum(dim=-1)
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=cdf.dtype)
    u = u.clamp_(min=1e-12) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp_(max=probs.shape[-1] - 1)


def _preallocated_layer(capacity: int) -> Any:
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A full-attention cache layer whose keys and values live in a buffer sized for the whole turn.

        transformers' ``DynamicLayer`` appends each decoding step with ``torch.cat``, which copies the
        whole cache every step; here a step writes one column of the buffer and the layer hands out a
        view of the filled part (measured: ~1.8 ms of a ~17 ms step, 32 rows of the tiny model).
        """

        def __init__(self) -> None:
            super().__init__()
            self.capacity, self.length = capacity, 0

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
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

    return PreallocatedLayer()


def _pack(cache: Any, cached: list[int], new: list[int], width_cached: int, width_new: int,
          steps: int) -> tuple[torch.Tensor, int]:
    """Move each row's keys and values from ``[pad | cached | pad | new]`` to ``[pad | cached new]``.

    Returns the attention mask for the packed layout with room for ``steps`` more columns, and the
    number of columns filled."""
    lengths = [c + n for c, n in zip(cached, new, strict=True)]
    width = max(lengths)
    device = cache.layers[0].keys.device
    columns = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros((len(lengths), width + steps), dtype=torch.long)
    for i, (c, n) in enumerate(zip(cached, new, strict=True)):
        columns[i, width - c - n : width - n] = torch.arange(width_cached - c, width_cached)
        columns[i, width - n :] = torch.arange(width_cached + width_new - n, width_cached + width_new)
        mask[i, width - c - n : width] = 1
    columns = columns.to(device)
    for layer in cache.layers:
        layer.keep_columns(columns)
    return mask.to(device), width


def _new_cache(model: Any, capacity: int) -> Any:
    """A ``DynamicCache`` for ``model``; its full-attention layers preallocated for ``capacity`` tokens."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [_preallocated_layer(capacity) for _ in cache.layers]
    return cache


class LocalPolicy:
    """A local transformers model (CPU or GPU, plain or peft-wrapped) as the policy.

    Example:
        >>> policy = LocalPolicy.from_pretrained("runs/tiny/model")
        >>> trajectories = rollout(rows, policy, "http://127.0.0.1:8000", token, RolloutSettings(seed=0))

    Training passes the model it is updating; the policy switches it to eval mode for generation and
    back afterwards. ``reuse_cache=False`` recomputes the whole conversation every turn (less memory
    held between turns: a 7B model keeps ~57 KB per token per rollout in bf16). ``lean_decoding=False``
    decodes every token through the model's own forward instead of ``LeanStep`` (which only takes
    small float32 Llama-family models and leaves the rest to the model's forward anyway).
    """

    def __init__(
        self, model: Any, tokenizer: Any, device: str | None = None, batch_size: int = 32, name: str | None = None,
        reuse_cache: bool = True, lean_decoding: bool = True,
    ) -> None:
        if device is not None:
            model.to(device)
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.reuse_cache = reuse_cache
        self.lean_decoding = lean_decoding
        ensure_response_parser(tokenizer)
        config = getattr(model, "config", None)
        self.name = name or getattr(config, "_name_or_path", "") or "local"
        self.stop_ids = self._stop_ids()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str = "cpu", dtype: str | None = None, batch_size: int = 32
    ) -> LocalPolicy:
        """Load a model directory (or hub id) saved with ``save_pretrained``."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or "auto")
        except (OSError, ValueError) as exc:  # missing folder, no weights, not a valid hub id
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path}: cannot load a model ({first})") from None
        return cls(model, tokenizer, device=device, batch_size=batch_size, name=str(path))

    def _stop_ids(self) -> list[int]:
        config_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        return render.end_token_ids(self.name, config_eos, self.tokenizer.eos_token_id)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    async def generate(self, episodes: list[Episode], settings: RolloutSettings,
                       on_reply: Callable[[int, Reply], None] | None = None) -> list[Reply]:
        """One assistant turn for each episode (tool results still pending are appended first).

        ``on_reply(index, reply)``, if given, is called in the caller's event loop as soon as an
        episode's turn is final, while the rest of the batch still decodes (the loop starts that
        episode's tool calls then); the policy does not touch the episode again in this call."""
        if on_reply is None:
            return await asyncio.to_thread(self.generate_sync, episodes, settings)
        loop = asyncio.get_running_loop()

        def hand_over(index: int, reply: Reply) -> None:
            loop.call_soon_threadsafe(on_reply, index, reply)

        return await asyncio.to_thread(self.generate_sync, episodes, settings, hand_over)

    def generate_sync(self, episodes: list[Episode], settings: RolloutSettings,
                      on_reply: Callable[[int, Reply], None] | None = None) -> list[Reply]:
        """``generate`` without the event loop; ``on_reply`` is called from this thread."""
        replies: list[Reply | None] = [None] * len(episodes)
        todo: list[tuple[int, int]] = []  # (episode index, tokens it may still generate)
        for index, episode in enumerate(episodes):
            room = render.open_turn(episode, self.tokenizer, settings.max_trajectory_tokens, settings.max_new_tokens)
            if room:
                todo.append((index, room))
            else:
                replies[index] = render.out_of_budget()
        chunks = [todo[start : start + self.batch_size] for start in range(0, len(todo), self.batch_size)]
        seeds = [None if settings.seed is None else
                 settings.seed * 1_000_003 + max(episodes[i].replies for i, _ in chunk) * 7919 + n * self.batch_size
                 for n, chunk in enumerate(chunks)]  # before any episode is handed over
        for chunk, seed in zip(chunks, seeds, strict=True):
            batch = [episodes[i] for i, _ in chunk]
            def finish(row: int, ids: list[int], logprobs: list[float], chunk: list[tuple[int, int]] = chunk) -> None:
                index = chunk[row][0]
                replies[index] = render.close_turn(episodes[index], self.tokenizer, ids, logprobs, self.stop_ids)
                if on_reply is not None:
                    on_reply(index, replies[index])

            self._sample(batch, [n for _, n in chunk], settings, seed, finish)
        if on_reply is not None:  # those that ran out of room before generating
            for index, reply in enumerate(replies):
                if reply is not None and reply.out_of_budget:
                    on_reply(index, reply)
        return [reply for reply in replies if reply is not None]

    def _sample(
        self, batch: list[Episode], limits: list[int], settings: RolloutSettings, seed: int | None,
        finish: Callable[[int, list[int], list[float]], None],
    ) -> None:
        """Generate one turn for each episode of ``batch`` (at most ``limits[i]`` tokens, through its stop token);
        ``finish(i, token_ids, logprobs)`` is called once per episode, as soon as its turn is over (its
        ``policy_state`` already kept).

        Only the tokens an episode gained since its last turn (tool results, template, the last token
        it generated) are run through the model; the keys and values of everything before come from
        the episode's ``_KVState``. Layout of row ``i`` in that first pass: ``[pad | cached_i | pad | new_i]``;
        the attention mask hides the pads and ``position_ids`` count real tokens only.

        Decoding then reads every row's keys and values at every step, which is what a step is bound by
        on a CPU, so two things keep the batch's cache small: after the first pass each row's keys and
        values are packed to the right (``[pad | cached_i new_i]``, as wide as the longest row instead of
        the longest cached part plus the longest new part), and rows that have finished their turn leave
        the batch once they are a quarter of it. Both need transformers' full-attention cache layers
        (``_new_cache``); with other caches (sliding windows) the turn decodes as laid out and nothing is
        kept for the next one.
        """
        device = self.device
        rows = len(batch)
        states = [e.policy_state if isinstance(e.policy_state, _KVState) else None for e in batch]
        cached = [s.length if s is not None else 0 for s in states]
        news = [list(e.token_ids or [])[c:] for e, c in zip(batch, cached, strict=True)]
        width_cached, width_new = max(cached), max(len(n) for n in news)
        steps = max(limits)
        total = width_cached + width_new + steps
        mask = torch.zeros((rows, total), dtype=torch.long)
        input_ids = torch.full((rows, width_new), self.pad_id, dtype=torch.long)
        positions = torch.zeros((rows, width_new), dtype=torch.long)
        for i, (c, new) in enumerate(zip(cached, news, strict=True)):
            mask[i, width_cached - c : width_cached] = 1
            mask[i, width_cached + width_new - len(new) : width_cached + width_new] = 1
            input_ids[i, width_new - len(new) :] = torch.tensor(new, dtype=torch.long)
            positions[i, width_new - len(new) :] = torch.arange(c, c + len(new))
        cache = _new_cache(self.model, total)
        if width_cached:
            reference = next(s for s in states if s is not None).layers
            for layer, (keys, values) in enumerate(reference):
                shape = (rows, keys.shape[0], width_cached, keys.shape[-1])
                k_all, v_all = keys.new_zeros(shape), values.new_zeros(shape)
                for i, state in enumerate(states):
                    if state is not None:
                        k_all[i, :, width_cached - state.length :] = state.layers[layer][0]
                        v_all[i, :, width_cached - state.length :] = state.layers[layer][1]
                cache.update(k_all.to(device), v_all.to(device), layer)
        generator = None
        if seed is not None and settings.temperature != 0:
            generator = torch.Generator(device=device).manual_seed(seed)
        mask, positions = mask.to(device), positions.to(device)
        next_pos = positions[:, -1] + 1
        packable = bool(cache.layers) and all(hasattr(layer, "keep_rows") for layer in cache.layers)
        lean = LeanStep.build(self.model) if packable and self.lean_decoding else None  # after this turn's weights
        live = list(range(rows))  # the row of ``batch`` at each position of the decoding batch
        begins = [0] * rows  # where each row's own columns begin, once packed
        generated: list[list[int]] = [[] for _ in range(rows)]
        logprobs: list[list[float]] = [[] for _ in range(rows)]
        done = [False] * rows
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                feed, seen = input_ids.to(device), width_cached + width_new
                for step in range(steps):
                    if step and lean is not None:
                        logits = lean.step(feed[:, 0], positions[:, 0], cache, mask[:, :seen])
                    else:
                        logits = self.model(input_ids=feed, attention_mask=mask[:, :seen], position_ids=positions,
                                            cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
                    if step == 0 and packable:
                        mask, seen = _pack(cache, cached, [len(n) for n in news], width_cached, width_new, steps)
                        begins = [seen - c - len(n) for c, n in zip(cached, news, strict=True)]
                    tokens, lps = _choose(logits, settings, generator)
                    for b, (tok, lp) in enumerate(zip(tokens.tolist(), lps.tolist(), strict=True)):
                        i = live[b]
                        if done[i]:
                            continue
                        generated[i].append(tok)
                        logprobs[i].append(float(lp))
                        done[i] = tok in self.stop_ids or len(generated[i]) >= limits[i]
                        if done[i] and packable:
                            if self.reuse_cache:  # all it fed: its columns so far
                                batch[i].policy_state = _KVState(
                                    [(layer.keys[b, :, begins[i] : seen].clone(),
                                      layer.values[b, :, begins[i] : seen].clone()) for layer in cache.layers],
                                    seen - begins[i])
                            finish(i, generated[i], logprobs[i])
                    if all(done) or step == steps - 1:
                        break
                    finished = [b for b, i in enumerate(live) if done[i]]
                    if packable and 4 * len(finished) >= len(live):
                        stay = torch.tensor([b for b, i in enumerate(live) if not done[i]], device=device)
                        for layer in cache.layers:
                            layer.keep_rows(stay)
                        mask, tokens, next_pos = mask[stay], tokens[stay], next_pos[stay]
                        live = [live[b] for b in stay.tolist()]
                    feed, positions = tokens[:, None], (next_pos + step)[:, None]
                    mask[:, seen] = 1
                    seen += 1
        finally:
            self.model.train(was_training)
        if not packable:  # nothing kept: the next turn runs the whole conversation again
            for i in range(rows):
                finish(i, generated[i], logprobs[i])


__all__ = ["LocalPolicy"]
