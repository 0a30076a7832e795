"""A transformers causal LM as the policy: one batched ``generate`` per turn, KV cache, left padding.

Batched generation per turn (rather than a token-by-token loop or one rollout at a time) is where the
speed comes from on CPU as on GPU. Sampling follows ``RolloutSettings`` exactly: temperature, top_p,
top_k (passed explicitly, since transformers otherwise applies top_k=50 and whatever the model's
generation config carries, e.g. Qwen's repetition penalty), greedy at temperature 0.

The recorded log-probs are those of the distribution actually sampled from (after temperature, top-k
and top-p), which is what TRL's importance-sampling correction compares against.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor

from ..errors import UserError
from . import render
from .episode import Episode, Reply
from .parse import ensure_response_parser, parse_reply
from .settings import RolloutSettings


class _SampledLogprobs(LogitsProcessor):
    """Records the log-prob of each sampled token without keeping a vocabulary-sized tensor per step.

    Runs last among the processors, so it sees the scores sampling uses; the token chosen at step t is
    only known at step t+1 (as the last input id), hence the one-step lag and ``finish``.
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.values: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._take(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        if self.previous is not None:
            self.values.append(self.previous.gather(1, tokens[:, None]).squeeze(1))
            self.previous = None

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        self._take(sequences[:, -1])
        return torch.stack(self.values, dim=1) if self.values else sequences.new_zeros((len(sequences), 0)).float()


class LocalPolicy:
    """A local transformers model (CPU or GPU, plain or peft-wrapped) as the policy.

    Example:
        >>> policy = LocalPolicy.from_pretrained("runs/tiny/model")
        >>> trajectories = rollout(rows, policy, "http://127.0.0.1:8000", token, RolloutSettings(seed=0))

    Training passes the model it is updating; the policy switches it to eval mode for generation and
    back afterwards.
    """

    tracks_tokens = True

    def __init__(
        self, model: Any, tokenizer: Any, device: str | None = None, batch_size: int = 32, name: str | None = None
    ) -> None:
        if device is not None:
            model.to(device)
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
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
        ids: set[int] = set()
        config_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in (config_eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        if not ids:
            raise UserError(f"{self.name}: the tokenizer has no end-of-sequence token to stop generation at")
        return sorted(ids)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    async def generate(self, episodes: list[Episode], settings: RolloutSettings) -> list[Reply]:
        """One assistant turn for each episode (tool results still pending are appended first)."""
        return await asyncio.to_thread(self.generate_sync, episodes, settings)

    def generate_sync(self, episodes: list[Episode], settings: RolloutSettings) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(episodes)
        todo: list[tuple[int, int]] = []  # (episode index, tokens it may still generate)
        for index, episode in enumerate(episodes):
            if episode.token_ids is None:
                render.start(episode, self.tokenizer)
            context = render.pending_context(episode, self.tokenizer)
            room = settings.max_trajectory_tokens - episode.n_tokens - len(context)
            if room <= 0:
                # Tool results that do not fit are left out of the ids: they would carry no loss.
                replies[index] = Reply(content="", finished=False, out_of_budget=True)
                continue
            render.append_context(episode, context)
            todo.append((index, min(settings.max_new_tokens, room)))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            batch = [episodes[i] for i, _ in chunk]
            seed = None
            if settings.seed is not None:
                seed = settings.seed * 1_000_003 + max(e.replies for e in batch) * 7919 + start
            outputs = self._sample(batch, max(n for _, n in chunk), settings, seed)
            for (index, limit), (ids, logprobs) in zip(chunk, outputs, strict=True):
                episode = episodes[index]
                ids, logprobs = ids[:limit], logprobs[:limit]
                finished = bool(ids) and ids[-1] in self.stop_ids
                prefix = list(episode.token_ids or [])
                render.append_generated(episode, ids, logprobs)
                replies[index] = parse_reply(self.tokenizer, ids, prefix, episode.tools, finished)
        return [reply for reply in replies if reply is not None]

    def _sample(
        self, batch: list[Episode], max_new_tokens: int, settings: RolloutSettings, seed: int | None
    ) -> list[tuple[list[int], list[float]]]:
        """Batched generation with left padding; returns each episode's new ids (through its stop token)."""
        device = self.device
        contexts = [episode.token_ids or [] for episode in batch]
        width = max(len(c) for c in contexts)
        input_ids = torch.full((len(contexts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(contexts), width), dtype=torch.long)
        for row, context in enumerate(contexts):
            input_ids[row, width - len(context) :] = torch.tensor(context, dtype=torch.long)
            attention[row, width - len(context) :] = 1
        greedy = settings.temperature == 0
        recorder = _SampledLogprobs()
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            temperature=1.0 if greedy else settings.temperature,
            top_k=0 if greedy else settings.top_k,
            top_p=1.0 if greedy else settings.top_p,
            repetition_penalty=1.0,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            use_cache=True,
            logits_processor=[recorder],
        )
        devices = [device] if device.type == "cuda" else []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=devices, enabled=seed is not None), torch.no_grad():
                if seed is not None:
                    torch.manual_seed(seed)
                sequences = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs
                )
        finally:
            self.model.train(was_training)
        logprobs = recorder.finish(sequences).cpu().tolist()
        generated = sequences[:, width:].cpu().tolist()
        results = []
        for ids, lps in zip(generated, logprobs, strict=True):
            cut = next((i + 1 for i, tok in enumerate(ids) if tok in self.stop_ids), len(ids))
            results.append((ids[:cut], [float(v) for v in lps[:cut]]))
        return results


__all__ = ["LocalPolicy"]
