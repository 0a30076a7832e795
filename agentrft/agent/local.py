"""A transformers causal LM as the policy: one batched decoding pass per turn over every unfinished
rollout, each rollout's KV cache kept across its turns.

The policy owns the turn's bookkeeping (the chat template and token budgets through ``render``, which
rollouts share a batch, the seeds, handing replies over); ``decoding`` owns the tensors (the cache,
sampling, the decoding steps) and samples exactly as ``RolloutSettings`` say.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import UserError
from ..hardware import decoding_threads, decoding_workers, torch_threads
from . import render
from .decoding import decode_turn
from .episode import Episode, Reply
from .parse import ensure_response_parser
from .settings import RolloutSettings


class LocalPolicy:
    """A local transformers model (CPU or GPU, plain or peft-wrapped) as the policy.

    Example:
        >>> policy = LocalPolicy.from_pretrained("runs/tiny/model")
        >>> trajectories = rollout(rows, policy, "http://127.0.0.1:8000", token, RolloutSettings(seed=0))

    Training passes the model it is updating; the policy switches it to eval mode for generation and
    back afterwards. ``reuse_cache=False`` recomputes the whole conversation every turn (less memory
    held between turns: a 7B model keeps ~57 KB per token per rollout in bf16). ``lean_decoding=False``
    decodes every token through the model's own forward instead of ``LeanStep`` (which only takes
    small float32 Llama-family models and leaves the rest to the model's forward anyway). ``threads``: torch's
    CPU threads while decoding, set in the decoding thread only; "auto" is one for a small model on a CPU
    (``hardware.decoding_threads``: its steps are too small to share), torch's setting otherwise.
    ``workers``: batches of one turn decoded at the same time, each in its own thread; "auto" is one per
    CPU core where decoding runs on one thread (``hardware.decoding_workers``), else one. A batch's
    tokens do not depend on which batches decode beside it: each batch keeps its rows and its seed.
    """

    def __init__(
        self, model: Any, tokenizer: Any, device: str | None = None, batch_size: int = 32, name: str | None = None,
        reuse_cache: bool = True, lean_decoding: bool = True, threads: int | Literal["auto"] | None = "auto",
        workers: int | Literal["auto"] = "auto",
    ) -> None:
        if device is not None:
            model.to(device)
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.reuse_cache = reuse_cache
        self.lean_decoding = lean_decoding
        self.threads = decoding_threads(model) if threads == "auto" else threads
        self.workers = decoding_workers(self.threads) if workers == "auto" else max(1, workers)
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
        closing = threading.Lock()

        def decode(chunk: list[tuple[int, int]], seed: int | None) -> None:
            def finish(row: int, ids: list[int], logprobs: list[float]) -> None:
                index = chunk[row][0]
                with closing:  # the tokenizer is not shared between threads
                    replies[index] = render.close_turn(episodes[index], self.tokenizer, ids, logprobs, self.stop_ids)
                if on_reply is not None:
                    on_reply(index, replies[index])

            with torch_threads(self.threads):
                decode_turn(self.model, [episodes[i] for i, _ in chunk], [n for _, n in chunk], settings, seed,
                            finish, self.pad_id, self.stop_ids, reuse_cache=self.reuse_cache,
                            lean_decoding=self.lean_decoding)

        if self.workers > 1 and len(chunks) > 1:
            was_training = self.model.training
            self.model.eval()  # here, not in each chunk's decoding, which would switch it under the others
            try:  # torch's thread count set here too: a new thread starts from the count last set anywhere
                with torch_threads(self.threads), ThreadPoolExecutor(min(self.workers, len(chunks))) as pool:
                    list(pool.map(decode, chunks, seeds))  # raises what a worker raised
            finally:
                self.model.train(was_training)
        else:
            for chunk, seed in zip(chunks, seeds, strict=True):
                decode(chunk, seed)
        if on_reply is not None:  # those that ran out of room before generating
            for index, reply in enumerate(replies):
                if reply is not None and reply.out_of_budget:
                    on_reply(index, reply)
        return [reply for reply in replies if reply is not None]


__all__ = ["LocalPolicy"]
