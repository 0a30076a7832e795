"""Training rollouts through vLLM servers, with the policy's new weights pushed after every optimizer step.

``VLLMRollouts`` is the rollout runner (``rollout.RolloutRunner``) when the config says ``use_vllm``: the
agent loop samples through ``VLLMPolicy`` (token-in / token-out, the sampled tokens and their sampling
log-probs exactly) instead of the model being trained. It is also what TRL calls to keep a vLLM
engine in sync: TRL's ``_generate`` calls ``trainer.vllm_generation.sync_weights()`` before a
``rollout_func`` whenever the optimizer step changed, and applies its importance-sampling correction for
the engine/trainer log-prob mismatch when ``trainer.use_vllm`` is on. ``attach`` sets both after the
trainer is built, so TRL never imports vLLM into the training process (vLLM's pins clash with the
training stack; it runs in its own virtual environment and process, as on a GPU cluster).

Pushing weights: with LoRA the adapter is saved to a new folder per step and loaded in place
(``/v1/load_lora_adapter``); with every weight trained, ``save_weights`` writes them (tied ones included)
and the servers reload them (``reload_weights``, then their prefix caches are reset). The validation
rollouts of the monitor sync first too, so every rollout sees the weights of the step it belongs to.
With several servers, rollouts are spread over them by row and sample (the same one serves a rollout
every turn, so its prefix cache is reused), and the weights folder must be visible to each.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..agent.episode import Episode, Reply
from ..agent.loop import rollout
from ..agent.settings import RolloutSettings
from ..agent.vllm import VLLMPolicy, save_weights
from ..schema import Row, Trajectory

WEIGHTS_DIR = "vllm-weights"


class SpreadPolicy:
    """Several vLLM policies as one: each rollout goes to one server, chosen by its row and sample."""

    def __init__(self, policies: list[Any]) -> None:
        if not policies:
            raise ValueError("SpreadPolicy needs at least one policy")
        self.policies = policies
        self.name = policies[0].name

    def _server_of(self, episode: Episode) -> int:
        return zlib.crc32(f"{episode.row.id}/{episode.sample_index}".encode()) % len(self.policies)

    async def generate(self, episodes: list[Episode], settings: RolloutSettings,
                       on_reply: Callable[[int, Reply], None] | None = None) -> list[Reply]:
        if len(self.policies) == 1:
            return await self.policies[0].generate(episodes, settings, on_reply=on_reply)
        groups: dict[int, list[int]] = {}
        for index, episode in enumerate(episodes):
            groups.setdefault(self._server_of(episode), []).append(index)

        async def run(server: int, indices: list[int]) -> list[Reply]:
            forward = None if on_reply is None else (lambda i, reply: on_reply(indices[i], reply))
            return await self.policies[server].generate([episodes[i] for i in indices], settings, on_reply=forward)

        results = await asyncio.gather(*(run(server, indices) for server, indices in groups.items()))
        replies: list[Reply | None] = [None] * len(episodes)
        for indices, group in zip(groups.values(), results, strict=True):
            for index, reply in zip(indices, group, strict=True):
                replies[index] = reply
        return [reply for reply in replies if reply is not None]


class VLLMRollouts:
    """Rollout runner over vLLM servers and TRL's weight-sync hook; see the module docstring."""

    def __init__(self, urls: list[str], tools_url: str, token: str | None, settings: RolloutSettings,
                 run_dir: Path, lora: bool) -> None:
        self.policies = [VLLMPolicy(url) for url in urls]
        self.policy = SpreadPolicy(self.policies)
        self.tools_url, self.token, self.settings = tools_url, token, settings
        self.weights_dir = Path(run_dir) / WEIGHTS_DIR
        self.lora = lora
        self.trainer: Any = None
        self.synced_step: int | None = None
        self.sync_seconds: list[float] = []

    def attach(self, trainer: Any) -> None:
        """Make TRL sync weights through ``sync_weights`` and correct for the engine's log-probs."""
        self.trainer = trainer
        trainer.vllm_generation = self
        trainer.use_vllm = True
        trainer._last_loaded_step = -1  # TRL's own marker: the weights of step -1 are loaded
        self.synced_step = 0  # the servers start from the base model, which is step 0's policy

    def sync_weights(self) -> None:
        """Push the trained model's weights to every server, unless this step's are there already."""
        trainer = self.trainer
        step = int(trainer.state.global_step)
        if step == self.synced_step:
            return
        start = time.perf_counter()
        accelerator = trainer.accelerator
        if accelerator.is_main_process:
            self._push(accelerator.unwrap_model(trainer.model), step)
        accelerator.wait_for_everyone()
        self.synced_step = step
        self.sync_seconds.append(time.perf_counter() - start)

    def _push(self, model: Any, step: int) -> None:
        folder = self.weights_dir / f"step-{step:05d}"
        if self.lora:
            model.save_pretrained(str(folder))
            for policy in self.policies:
                policy.load_lora(folder)
        else:
            save_weights(model, folder)
            for policy in self.policies:
                policy.reload_weights(folder)
        for old in self.weights_dir.glob("step-*"):  # the servers hold what they loaded; keep the newest only
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)

    def step_metrics(self) -> dict[str, float]:
        """Seconds the last weight push took (for the metrics file), then forgotten."""
        if not self.sync_seconds:
            return {}
        seconds, self.sync_seconds = self.sync_seconds[-1], []
        return {"weight_sync_s": seconds}

    def __call__(self, rows: list[Row], model: Any, tokenizer: Any, greedy: bool, seed: int | None) -> list[Trajectory]:
        if self.trainer is not None:
            self.sync_weights()  # the monitor's validation runs between TRL's syncs
        settings = self.settings.model_copy(update={"seed": seed})
        if greedy:  # validation: scored without sampling noise, so curves compare
            settings = settings.model_copy(update={"temperature": 0.0, "top_p": 1.0, "top_k": 0})
        # vLLM seeds each request by row, sample and turn: a group's copies of a row must be told apart
        unique, copies = _groups(rows)
        return rollout(unique, self.policy, self.tools_url, self.token, settings, samples_per_row=copies)


def _groups(rows: list[Row]) -> tuple[list[Row], int]:
    """``rows`` as TRL hands them, each row repeated in a contiguous run of equal length: (the rows once, the
    run length). Rows in any other order are taken one sample each."""
    for copies in range(len(rows), 1, -1):
        if len(rows) % copies == 0:
            unique = rows[::copies]
            if all(rows[i].id == unique[i // copies].id for i in range(len(rows))):
                return unique, copies
    return rows, 1


__all__ = ["SpreadPolicy", "VLLMRollouts", "WEIGHTS_DIR"]
