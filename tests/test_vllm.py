"""The vLLM engine end to end: a real vLLM server (CPU build, from .venv-vllm) on the tiny model, the real
agent loop and tool server; log-probs and weight updates checked against transformers and peft."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentrft.agent import RolloutSettings, rollout
from agentrft.agent.vllm import VLLMPolicy, VLLMServer
from agentrft.errors import UserError
from agentrft.jsonl import read_models
from agentrft.schema import Row, ToolResultTurn, Trajectory
from conftest import TOOL_TOKEN

pytestmark = pytest.mark.timeout(600)

SETTINGS = RolloutSettings(seed=7, max_new_tokens=24, max_trajectory_tokens=1536, temperature=0.7)


@pytest.fixture(scope="module")
def policy(vllm_server: VLLMServer) -> VLLMPolicy:
    return VLLMPolicy(vllm_server.url)


@pytest.fixture(scope="module")
def rows(synth_dir: Path) -> list[Row]:
    return read_models(synth_dir / "research_val.jsonl", Row)[:4]


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def reference_logprobs(model, ids: list[int], temperature: float = 1.0) -> list[float]:
    """transformers' log-prob of each of ``ids[1:]`` given those before, at ``temperature``."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1).tolist()


def generated_deltas(model, trajectory: Trajectory, temperature: float) -> list[float]:
    """|engine − transformers| for every generated token's sampling log-prob."""
    reference = reference_logprobs(model, trajectory.token_ids, temperature)
    positions = [i for i, m in enumerate(trajectory.loss_mask) if m]
    assert positions and positions[0] > 0
    return [abs(lp - reference[i - 1]) for lp, i in zip(trajectory.logprobs, positions, strict=True)]


def runs(mask: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, end) runs of a 0/1 mask."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((mask[start], start, i))
            start = i
    return out


def strip(trajectories: list[Trajectory]) -> list[dict]:
    return [t.model_dump(exclude={"elapsed_s", "logprobs"}) for t in trajectories]


def test_sampled_logprobs_match_transformers(policy, model, tool_server, rows):
    for temperature in (1.0, 0.7):
        settings = SETTINGS.model_copy(update={"temperature": temperature})
        trajectories = rollout(rows, policy, tool_server, TOOL_TOKEN, settings, samples_per_row=2)
        deltas = [d for t in trajectories for d in generated_deltas(model, t, temperature)]
        assert len(deltas) >= 8 * 10
        assert sum(deltas) / len(deltas) <= 1e-4, (temperature, sum(deltas) / len(deltas), max(deltas))
        assert max(deltas) <= 1e-3


def test_rollouts_keep_local_policy_bookkeeping_and_reproduce(policy, tiny_model_dir, tool_server, rows):
    from agentrft.agent.policy import LocalPolicy

    first = rollout(rows, policy, tool_server, TOOL_TOKEN, SETTINGS, samples_per_row=2)
    local = rollout(rows, LocalPolicy.from_pretrained(tiny_model_dir), tool_server, TOOL_TOKEN, SETTINGS)
    assert [(t.row_id, t.sample_index) for t in first] == [(r.id, k) for r in rows for k in range(2)]
    for trajectory in first:
        twin = local[[r.id for r in rows].index(trajectory.row_id)]
        n = trajectory.prompt_length
        assert n == twin.prompt_length and trajectory.token_ids[:n] == twin.token_ids[:n]  # the same rendering
        assert trajectory.stop_reason in ("answer", "max_tokens", "max_tool_calls")
        assert len(trajectory.token_ids) == len(trajectory.loss_mask) <= SETTINGS.max_trajectory_tokens
        assert len(trajectory.logprobs) == sum(trajectory.loss_mask) > 0
        assert all(lp <= 0 for lp in trajectory.logprobs)
        assert trajectory.loss_mask[:n] == [0] * n and trajectory.loss_mask[n] == 1
        for value, start, end in runs(trajectory.loss_mask):
            if value == 1:  # a turn ends at the end token or at the per-turn cap
                assert trajectory.token_ids[end - 1] in policy.stop_ids or end - start == SETTINGS.max_new_tokens
    # The same seed gives the same trajectories, also with fewer requests in flight (other batches);
    # another seed gives others.
    again = rollout(rows, VLLMPolicy(policy.url, policy.tokenizer, max_concurrency=3), tool_server, TOOL_TOKEN,
                    SETTINGS, samples_per_row=2)
    assert strip(again) == strip(first)
    for a, b in zip(first, again, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    other = rollout(rows, policy, tool_server, TOOL_TOKEN, SETTINGS.model_copy(update={"seed": 8}), samples_per_row=2)
    assert [t.token_ids for t in other] != [t.token_ids for t in first]


class _ScriptedFirstTurn:
    """The first turn of every rollout from a script (a search call), the rest from vLLM: the untrained tiny
    model rarely calls a tool by itself, and the tool results' tokens are what this checks."""

    def __init__(self, scripted, policy: VLLMPolicy) -> None:
        self.scripted, self.policy, self.name = scripted, policy, policy.name

    async def generate(self, episodes, settings, on_reply=None):
        if all(e.replies == 0 for e in episodes):
            return await self.scripted.generate(episodes, settings, on_reply=on_reply)
        return await self.policy.generate(episodes, settings, on_reply=on_reply)


def test_tool_results_are_appended_with_no_loss_and_later_turns_sampled_after_them(
        policy, model, tool_server, rows):
    from agentrft.agent.testing import ScriptedLocalPolicy, tool_call_text

    scripted = ScriptedLocalPolicy(model, policy.tokenizer,
                                   lambda messages: tool_call_text("search", {"query": "revenue", "top_k": 1}))
    both = _ScriptedFirstTurn(scripted, policy)
    settings = SETTINGS.model_copy(update={"max_new_tokens": 64})  # room for the whole scripted call
    trajectories = rollout(rows[:2], both, tool_server, TOOL_TOKEN, settings, samples_per_row=2)
    for trajectory in trajectories:
        results = [t for t in trajectory.turns if isinstance(t, ToolResultTurn)]
        assert results and not results[0].is_error
        segments = runs(trajectory.loss_mask)
        assert [v for v, *_ in segments][:4] == [0, 1, 0, 1]  # prompt, call, tool result, vLLM's turn
        _, start, end = segments[2]
        expected = (f"\n<|im_start|>user\n<tool_response>\n{results[0].output}\n</tool_response><|im_end|>\n"
                    "<|im_start|>assistant\n")
        assert policy.tokenizer.decode(trajectory.token_ids[start:end]) == expected
        # the turns after the tool result are vLLM's, sampled at the settings' temperature
        sampled = sum(end - start for v, start, end in segments[3:] if v == 1)
        deltas = generated_deltas(model, trajectory, settings.temperature)[-sampled:]
        assert sum(deltas) / len(deltas) <= 1e-4


def test_on_reply_hands_every_reply_over_once(policy, rows):
    from agentrft.agent.loop import new_episode, run_sync
    from agentrft.filings.model.prompts import SYSTEM_PROMPT

    episodes = [new_episode(row, 0, SYSTEM_PROMPT, []) for row in rows]
    handed: list[int] = []
    replies = run_sync(policy.generate(episodes, SETTINGS, on_reply=lambda index, reply: handed.append(index)))
    assert sorted(handed) == list(range(len(rows))) and len(replies) == len(rows)
    assert all(len(e.logprobs) == sum(e.loss_mask) > 0 for e in episodes)


def test_turns_are_cut_to_the_trajectory_budget_and_the_servers_context(policy, tool_server, rows):
    from agentrft.agent.episode import Episode
    from agentrft.agent.loop import run_sync

    (first,) = rollout(rows[:1], policy, tool_server, TOOL_TOKEN, SETTINGS.model_copy(update={"max_new_tokens": 64}))
    budget = first.prompt_length + 5
    (cut,) = rollout(rows[:1], policy, tool_server, TOOL_TOKEN,
                     SETTINGS.model_copy(update={"max_new_tokens": 64, "max_trajectory_tokens": budget}))
    assert cut.stop_reason == "max_tokens" and len(cut.token_ids) <= budget and sum(cut.loss_mask) >= 1
    (none,) = rollout(rows[:1], policy, tool_server, TOOL_TOKEN,
                      SETTINGS.model_copy(update={"max_trajectory_tokens": first.prompt_length}))
    assert none.stop_reason == "max_tokens" and sum(none.loss_mask) == 0 and none.logprobs == []
    # a context that nearly fills the server's max_model_len gets a turn that ends where the context does
    episode = Episode(row=rows[0], sample_index=0, messages=[], tools=[])
    ids = (first.token_ids * 64)[: policy.max_model_len - 3]
    episode.token_ids, episode.loss_mask, episode.logprobs = list(ids), [0] * len(ids), []
    episode.prompt_length = episode.n_tokens = episode.rendered = len(ids)
    settings = RolloutSettings(seed=1, max_new_tokens=64, max_trajectory_tokens=100_000)
    (reply,) = run_sync(policy.generate([episode], settings))
    assert not reply.out_of_budget and 1 <= len(episode.token_ids) - len(ids) <= 3
    assert len(episode.token_ids) <= policy.max_model_len


def probe(policy: VLLMPolicy, rows: list[Row]) -> list[int]:
    """A fixed token sequence: a rendered prompt and a few tokens after it."""
    from agentrft.agent import render

    ids = render.render_prompt(policy.tokenizer, [{"role": "user", "content": rows[0].prompt}], [])
    return ids + policy.tokenizer.encode("Revenue was $476M in 2023.", add_special_tokens=False)


def sampled_turn(policy: VLLMPolicy, ids: list[int], row: Row, temperature: float = 0.7) -> Trajectory:
    """One sampled turn after ``ids`` through ``VLLMPolicy.generate``, as a trajectory."""
    from agentrft.agent.episode import Episode
    from agentrft.agent.loop import run_sync

    episode = Episode(row=row, sample_index=0, messages=[], tools=[])
    episode.token_ids, episode.loss_mask, episode.logprobs = list(ids), [0] * len(ids), []
    episode.prompt_length = episode.n_tokens = episode.rendered = len(ids)
    settings = RolloutSettings(seed=1, temperature=temperature, max_new_tokens=12)
    run_sync(policy.generate([episode], settings))
    return episode.to_trajectory(policy.name, 1)


def mean_delta(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) > 0
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def test_reloaded_full_weights_are_served(policy, model, rows, tmp_path):
    import copy

    import torch

    from agentrft.agent.vllm import save_weights

    ids = probe(policy, rows)
    before = policy.score(ids)
    assert mean_delta(before, reference_logprobs(model, ids)) <= 1e-4
    sampled_turn(policy, ids, rows[0])  # the probe's keys and values are in the prefix cache now
    changed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in changed.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    # save_pretrained leaves the tied head out, which vLLM's CPU build would not reload: refused
    changed.save_pretrained(tmp_path / "pretrained")
    with pytest.raises(UserError, match="lm_head.weight"):
        policy.reload_weights(tmp_path / "pretrained")
    try:
        began = time.perf_counter()
        policy.reload_weights(save_weights(changed, tmp_path / "step-1"))
        assert time.perf_counter() - began < 30
        after = policy.score(ids)
        assert mean_delta(after, before) > 1e-2  # the change is visible …
        assert mean_delta(after, reference_logprobs(changed, ids)) <= 1e-4  # … and is the new model's
        turn = sampled_turn(policy, ids, rows[0])  # sampled after the cached prefix: the cache was dropped
        assert sum(generated_deltas(changed, turn, 0.7)) / len(turn.logprobs) <= 1e-4
    finally:
        policy.reload_weights(save_weights(model, tmp_path / "step-0"))  # as it was, for the other tests
    assert mean_delta(policy.score(ids), before) <= 1e-6


def test_loaded_lora_adapters_are_served(policy, model, rows, tmp_path):
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    ids = probe(policy, rows)
    base = policy.score(ids)
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules=modules,
                                                               init_lora_weights=False)).eval()
    try:
        for step in (1, 2):
            generator = torch.Generator().manual_seed(step)
            with torch.no_grad():  # a different adapter each step, as training would write
                for name, parameter in peft_model.named_parameters():
                    if "lora_B" in name:
                        parameter.normal_(0, 0.05 * step, generator=generator)
            peft_model.save_pretrained(tmp_path / f"adapter-{step}")
            policy.load_lora(tmp_path / f"adapter-{step}")
            served = policy.score(ids)
            assert mean_delta(served, base) > 1e-2
            assert mean_delta(served, reference_logprobs(peft_model, ids)) <= 1e-4
            turn = sampled_turn(policy, ids, rows[0])
            assert sum(generated_deltas(peft_model, turn, 0.7)) / len(turn.logprobs) <= 1e-4
        with pytest.raises(ValueError, match="new one"):
            policy.load_lora(tmp_path / "adapter-2")
    finally:
        policy.use_base_model()
    assert mean_delta(policy.score(ids), base) <= 1e-6


def test_a_server_that_cannot_start_is_one_line_within_bounded_time(tmp_path):
    began = time.monotonic()
    with pytest.raises(UserError) as error:
        with VLLMServer(tmp_path / "no-such-model", startup_timeout_s=240):
            pass
    message = str(error.value)
    assert time.monotonic() - began < 240
    assert "\n" not in message and "exited during start-up" in message and "no-such-model" in message
    with pytest.raises(UserError, match="did not answer"):
        with VLLMServer.connect("http://127.0.0.1:9", startup_timeout_s=1):
            pass


def test_a_missing_vllm_python_names_make_vllm(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTRFT_VLLM_PYTHON", str(tmp_path / "python"))
    with pytest.raises(UserError, match="make vllm"):
        VLLMServer(tmp_path).start()
