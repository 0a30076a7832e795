"""The agent loop end to end: the real tiny model and tokenizer, the real tool server on loopback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentrft.agent import RolloutSettings, rollout
from agentrft.jsonl import read_models
from agentrft.schema import MessageTurn, Row, ToolCallTurn, ToolResultTurn, Trajectory
from conftest import TOOL_TOKEN

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def rows(synth_dir: Path) -> list[Row]:
    return read_models(synth_dir / "research_val.jsonl", Row)[:4]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def scripted(model_and_tokenizer, script):
    from agentrft.agent.testing import ScriptedLocalPolicy

    model, tokenizer = model_and_tokenizer
    return ScriptedLocalPolicy(model, tokenizer, script)


def n_results(messages) -> int:
    return sum(1 for m in messages if m["role"] == "tool")


def research_script(messages):
    """search → read the top hit → answer: what a good research agent does."""
    from agentrft.agent.testing import tool_call_text

    done = n_results(messages)
    if done == 0:
        return "Let me search.\n" + tool_call_text("search", {"query": messages[-1]["content"], "top_k": 2})
    if done == 1:
        path = re.search(r"(\S+\.html)", messages[-1]["content"]).group(1)
        return tool_call_text("read", {"path": path})
    return "$210M"


def runs(mask: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, end) runs of a 0/1 mask."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((mask[start], start, i))
            start = i
    return out


def test_tool_result_tokens_are_exactly_the_masked_ones(model_and_tokenizer, tool_server, rows):
    _, tokenizer = model_and_tokenizer
    policy = scripted(model_and_tokenizer, research_script)
    trajectories = rollout(rows[:2], policy, tool_server, TOOL_TOKEN, RolloutSettings(seed=0, max_trajectory_tokens=8192))
    for trajectory in trajectories:
        assert trajectory.stop_reason == "answer" and trajectory.output_text == "$210M"
        assert [t.name for t in trajectory.tool_calls] == ["search", "read"]
        results = [t for t in trajectory.turns if isinstance(t, ToolResultTurn)]
        assert len(results) == 2 and not any(r.is_error for r in results), results
        ids, mask = trajectory.token_ids, trajectory.loss_mask
        assert len(ids) == len(mask) and len(trajectory.logprobs) == sum(mask)
        assert all(v <= 0 for v in trajectory.logprobs)
        segments = runs(mask)
        assert segments[0] == (0, 0, trajectory.prompt_length)
        generated = [tokenizer.decode(ids[a:b]) for v, a, b in segments if v == 1]
        context = [tokenizer.decode(ids[a:b]) for v, a, b in segments[1:] if v == 0]
        assert [g.endswith("<|im_end|>") for g in generated] == [True] * 3
        assert generated[2] == "$210M<|im_end|>"
        # Every zero run after the prompt is one tool result as the template renders it, nothing more.
        assert len(context) == 2
        for text, result in zip(context, results):
            expected = f"\n<|im_start|>user\n<tool_response>\n{result.output}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
            assert text == expected
        # Appending never drifted from what rendering the whole conversation gives.
        full = tokenizer.apply_chat_template(
            _as_template_messages(trajectory), tools=[s.model_dump() for s in rows[0].tools], tokenize=True,
            return_dict=False,
        )
        assert list(full)[: len(ids)] == ids


def _as_template_messages(trajectory: Trajectory) -> list[dict]:
    messages: list[dict] = []
    for turn in trajectory.turns:
        if isinstance(turn, MessageTurn):
            messages.append({"role": turn.role, "content": turn.content})
        elif isinstance(turn, ToolCallTurn):
            if not (messages[-1]["role"] == "assistant" and "tool_calls" in messages[-1]):
                if messages[-1]["role"] == "assistant":
                    messages[-1]["tool_calls"] = []
                else:
                    messages.append({"role": "assistant", "content": "", "tool_calls": []})
            messages[-1]["tool_calls"].append({"type": "function", "function": {"name": turn.name, "arguments": turn.args}})
        else:
            messages.append({"role": "tool", "name": turn.name, "content": turn.output})
    return messages


def test_malformed_unknown_and_failing_calls_are_recorded_not_raised(model_and_tokenizer, tool_server, rows):
    from agentrft.agent.testing import tool_call_text

    def script(messages):
        return [
            '<tool_call>\n{"name": "search", "arguments": {"query": \n</tool_call>',
            tool_call_text("browse", {"url": "x"}),
            tool_call_text("read", {"path": "filings/no-such-file.html"}),
            "I could not find it.",
        ][n_results(messages)]

    policy = scripted(model_and_tokenizer, script)
    (trajectory,) = rollout(rows[:1], policy, tool_server, TOOL_TOKEN, RolloutSettings(seed=0))
    calls, results = trajectory.tool_calls, [t for t in trajectory.turns if isinstance(t, ToolResultTurn)]
    assert trajectory.stop_reason == "answer" and trajectory.output_text == "I could not find it."
    assert calls[0].error and calls[0].error.startswith("malformed tool call") and '"query"' in calls[0].raw
    assert calls[1].name == "browse" and calls[2].name == "read" and calls[2].error is None
    assert [r.is_error for r in results] == [True, True, True]
    assert "unknown tool 'browse'" in results[1].output
    assert results[2].output.startswith("Error")
    # The model was shown each error: the tool-result tokens carry the error text.
    _, tokenizer = model_and_tokenizer
    shown = tokenizer.decode(trajectory.token_ids)
    assert all(r.output in shown for r in results)


def test_tool_call_budget_stops_the_loop(model_and_tokenizer, tool_server, rows):
    from agentrft.agent.testing import tool_call_text

    policy = scripted(model_and_tokenizer, lambda m: tool_call_text("list", {"prefix": "filings/"}))
    (trajectory,) = rollout(rows[:1], policy, tool_server, TOOL_TOKEN, RolloutSettings(max_tool_calls=3, max_trajectory_tokens=100_000))
    executed = [t for t in trajectory.turns if isinstance(t, ToolResultTurn)]
    assert trajectory.stop_reason == "max_tool_calls"
    assert len(executed) == 3 and trajectory.n_tool_calls == 4
    assert trajectory.tool_calls[-1].error.startswith("not run")


def test_token_budget_stops_the_loop(model_and_tokenizer, tool_server, rows):
    from agentrft.agent.testing import tool_call_text

    policy = scripted(model_and_tokenizer, lambda m: tool_call_text("list", {"prefix": ""}))
    settings = RolloutSettings(max_tool_calls=100, max_trajectory_tokens=1200)
    (trajectory,) = rollout(rows[:1], policy, tool_server, TOOL_TOKEN, settings)
    assert trajectory.stop_reason == "max_tokens"
    assert len(trajectory.token_ids) <= 1200
    assert trajectory.loss_mask[-1] == 1  # results that did not fit are not in the ids
    assert trajectory.n_tool_calls >= 1


def test_untrained_model_rollouts_are_recorded_and_reproducible(tiny_model_dir, tool_server, rows):
    from agentrft.agent.policy import LocalPolicy

    policy = LocalPolicy.from_pretrained(tiny_model_dir)
    settings = RolloutSettings(seed=7, max_new_tokens=24, max_trajectory_tokens=1536, temperature=1.0)
    first = rollout(rows, policy, tool_server, TOOL_TOKEN, settings, samples_per_row=2)
    again = rollout(rows, policy, tool_server, TOOL_TOKEN, settings, samples_per_row=2)
    other = rollout(rows, policy, tool_server, TOOL_TOKEN, settings.model_copy(update={"seed": 8}), samples_per_row=2)
    assert [(t.row_id, t.sample_index) for t in first] == [(r.id, k) for r in rows for k in range(2)]
    strip = lambda ts: [t.model_dump(exclude={"elapsed_s"}) for t in ts]  # noqa: E731
    assert strip(first) == strip(again)
    assert [t.token_ids for t in first] != [t.token_ids for t in other]
    for t in first:
        assert t.stop_reason in ("answer", "max_tokens", "max_tool_calls")
        assert len(t.token_ids) == len(t.loss_mask) <= 1536
        assert len(t.logprobs) == sum(t.loss_mask) > 0
        assert t.loss_mask[: t.prompt_length] == [0] * t.prompt_length


def test_greedy_is_deterministic_and_left_padding_is_harmless(tiny_model_dir, tool_server, rows):
    """A row's greedy rollout does not depend on which other rows share its batch."""
    from agentrft.agent.policy import LocalPolicy

    policy = LocalPolicy.from_pretrained(tiny_model_dir)
    settings = RolloutSettings(temperature=0, max_new_tokens=8, max_tool_calls=0)
    alone = rollout(rows[1:2], policy, tool_server, TOOL_TOKEN, settings)[0]
    batched = rollout(rows[:3], policy, tool_server, TOOL_TOKEN, settings)[1]
    n = alone.prompt_length
    assert alone.token_ids[: n + 1] == batched.token_ids[: n + 1]
    assert alone.logprobs[0] == pytest.approx(batched.logprobs[0], abs=1e-4)


def _two_turns(policy, rows, extra_lengths, settings):
    """Three episodes of different lengths: a turn, then different amounts of appended context, a turn."""
    from agentrft.agent import render
    from agentrft.agent.loop import new_episode
    from agentrft.filings.model.prompts import SYSTEM_PROMPT

    episodes = [new_episode(row, 0, SYSTEM_PROMPT, []) for row in rows]
    first = policy.generate_sync(episodes, settings)
    filler = policy.tokenizer.encode("Revenue: $476M\nGross margin: 51.3%\n" * 8)
    for episode, n in zip(episodes, extra_lengths, strict=True):
        render.append_context(episode, filler[:n])
    second = policy.generate_sync(episodes, settings)
    return episodes, first, second


def test_kept_kv_cache_gives_what_recomputing_the_conversation_gives(model_and_tokenizer, rows):
    """A turn that reuses the keys/values of earlier turns matches running the whole conversation
    again, with rows of different lengths in one batch (pads before and between the segments)."""
    import torch

    from agentrft.agent.policy import LocalPolicy

    model, tokenizer = model_and_tokenizer
    for settings in (RolloutSettings(temperature=0, max_new_tokens=6),
                     RolloutSettings(temperature=1.0, seed=3, max_new_tokens=6)):
        reuse = LocalPolicy(model, tokenizer, reuse_cache=True)
        fresh = LocalPolicy(model, tokenizer, reuse_cache=False)
        kept, *_ = _two_turns(reuse, rows[:3], [5, 40, 17], settings)
        again, *_ = _two_turns(fresh, rows[:3], [5, 40, 17], settings)
        assert all(e.policy_state is not None for e in kept)
        assert all(e.policy_state is None for e in again)
        for a, b in zip(kept, again, strict=True):
            assert a.token_ids == b.token_ids
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
            assert a.policy_state.length == len(a.token_ids) - 1  # all but the last sampled token was fed
    # The first turn agrees with transformers' own greedy generate on the same prompt.
    policy = LocalPolicy(model, tokenizer)
    episodes, *_ = _two_turns(policy, rows[1:2], [3], RolloutSettings(temperature=0, max_new_tokens=6))
    episode = episodes[0]
    prompt = episode.token_ids[: episode.prompt_length]
    with torch.no_grad():
        reference = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                   eos_token_id=policy.stop_ids, pad_token_id=policy.pad_id)[0, len(prompt):]
    ours = episode.token_ids[episode.prompt_length:][: len(reference)]
    cut = next((i + 1 for i, t in enumerate(reference.tolist()) if t in policy.stop_ids), len(reference))
    assert ours[:cut] == reference.tolist()[:cut]


def test_batches_decoded_side_by_side_sample_what_one_thread_samples(model_and_tokenizer, rows):
    """Two workers decode a turn's batches at the same time (each in its own thread, one torch thread
    each) and sample exactly the tokens one worker samples batch after batch; the model's mode and the
    caller's torch thread count are what they were before."""
    import threading

    import torch

    from agentrft.agent.policy import LocalPolicy

    model, tokenizer = model_and_tokenizer
    settings = RolloutSettings(temperature=1.0, seed=5, max_new_tokens=6)
    threads_seen: set[int] = set()
    forward = model.forward

    def spy(*args, **kwargs):
        threads_seen.add(threading.get_ident())
        return forward(*args, **kwargs)

    model.train()
    before = torch.get_num_threads()
    one = LocalPolicy(model, tokenizer, batch_size=2, threads=1, workers=1)
    apart, *_ = _two_turns(one, rows[:4], [5, 40, 17, 9], settings)
    model.forward = spy
    try:
        two = LocalPolicy(model, tokenizer, batch_size=2, threads=1, workers=2)
        together, *_ = _two_turns(two, rows[:4], [5, 40, 17, 9], settings)
    finally:
        del model.forward
    # two batches of two rows a turn, each decoding in a thread of its own
    assert len(threads_seen) >= 2 and threading.get_ident() not in threads_seen
    assert [e.token_ids for e in together] == [e.token_ids for e in apart]
    assert [e.logprobs for e in together] == [e.logprobs for e in apart]
    assert model.training and torch.get_num_threads() == before


@pytest.mark.parametrize("lean", [True, False], ids=["lean-step", "model-forward"])
def test_rows_that_finish_leave_the_batch_and_are_handed_over_first(model_and_tokenizer, rows, lean, monkeypatch):
    """Rows with less room finish first: they are handed over (``on_reply``) while the others still
    decode, the decoding batch shrinks, and each row's greedy turn is what it generates alone, whether
    decoding steps run through ``LeanStep`` or the model's forward."""
    import torch

    from agentrft.agent.lean_step import LeanStep
    from agentrft.agent.loop import new_episode
    from agentrft.filings.model.prompts import SYSTEM_PROMPT
    from agentrft.agent.policy import LocalPolicy

    model, tokenizer = model_and_tokenizer
    policy = LocalPolicy(model, tokenizer, lean_decoding=lean)
    policy.stop_ids = [policy.pad_id]  # a token this model never emits: each row runs to its own limit
    episodes = [new_episode(row, 0, SYSTEM_PROMPT, []) for row in rows[:4]]
    lengths = [len(tokenizer.apply_chat_template(e.messages, tokenize=True, add_generation_prompt=True,
                                                  return_dict=True)["input_ids"]) for e in episodes]
    # a token budget that leaves each row a different number of tokens to generate (at most 12)
    settings = RolloutSettings(temperature=0, max_new_tokens=12, max_trajectory_tokens=max(lengths) + 3)
    batch_sizes: list[int] = []
    forward = model.forward

    def spy(*args, **kwargs):
        batch_sizes.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    lean_rows: list[int] = []
    lean_step = LeanStep.step

    def lean_spy(self, tokens, *args):
        lean_rows.append(tokens.shape[0])
        return lean_step(self, tokens, *args)

    monkeypatch.setattr(LeanStep, "step", lean_spy)
    handed: list[int] = []
    model.forward = spy
    try:
        replies = policy.generate_sync(episodes, settings, on_reply=lambda index, reply: handed.append(index))
    finally:
        del model.forward
    generated = [e.token_ids[e.prompt_length :] for e in episodes]
    assert sorted(handed) == list(range(len(episodes))) and len(replies) == len(episodes)
    assert [len(g) for g in generated] != [len(generated[0])] * len(episodes), generated  # they end apart
    assert [len(generated[i]) for i in handed] == sorted(len(g) for g in generated)
    if lean:  # the first pass runs through the model, every decoding step through the lean step
        assert batch_sizes == [len(episodes)] and len(lean_rows) == max(len(g) for g in generated) - 1
    else:
        assert not lean_rows
    assert min(batch_sizes + lean_rows) < len(episodes)  # finished rows left the decoding batch
    for episode, ids in zip(episodes, generated, strict=True):
        prompt = torch.tensor([episode.token_ids[: episode.prompt_length]])
        with torch.no_grad():
            alone = model.generate(prompt, max_new_tokens=len(ids), do_sample=False, eos_token_id=policy.stop_ids,
                                   pad_token_id=policy.pad_id)[0, prompt.shape[1] :].tolist()
        assert ids == alone[: len(ids)]


def test_a_peft_model_in_training_mode_can_roll_out(model_and_tokenizer, tool_server, rows):
    """Training hands the policy the LoRA-wrapped model it is updating; it comes back in training mode."""
    import copy

    from peft import LoraConfig, get_peft_model

    from agentrft.agent.policy import LocalPolicy

    model, tokenizer = model_and_tokenizer
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.train()
    policy = LocalPolicy(peft_model, tokenizer, device="cpu")
    (trajectory,) = rollout(rows[:1], policy, tool_server, TOOL_TOKEN, RolloutSettings(seed=0, max_new_tokens=8))
    assert peft_model.training
    assert sum(trajectory.loss_mask) == len(trajectory.logprobs) > 0


def test_missing_model_folder_is_a_user_error(tmp_path):
    from agentrft.agent.policy import LocalPolicy
    from agentrft.errors import UserError

    with pytest.raises(UserError, match="cannot load a model"):
        LocalPolicy.from_pretrained(tmp_path / "nope")


def test_sampling_draws_each_token_at_its_probability_and_never_an_excluded_one():
    import torch

    from agentrft.agent.decoding import choose

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]]).repeat(2000, 1)
    settings = RolloutSettings(temperature=1.0, top_k=3, top_p=1.0)
    tokens, logps = choose(logits, settings, torch.Generator().manual_seed(0))
    first, uniform = tokens[0::2], tokens[1::2]
    kept = torch.softmax(torch.tensor([2.0, 1.0, 3.0]), dim=0)  # top-3 of the first row, renormalised
    counts = torch.bincount(first, minlength=5).float() / len(first)
    assert counts[2] == 0 and counts[3] == 0  # outside the top 3: never drawn
    assert torch.allclose(counts[[0, 1, 4]], kept, atol=0.03)
    # all five tie at the top-k cut and stay in (as transformers' top-k does): each drawn about 1/5 of the time
    assert torch.allclose(torch.bincount(uniform, minlength=5).float() / len(uniform), torch.full((5,), 0.2), atol=0.03)
    assert torch.allclose(logps[0::2], torch.log(kept[torch.tensor([0, 1, -1, -1, 2])[first]]), atol=1e-5)
    again, _ = choose(logits, settings, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again)  # the same generator state draws the same tokens


def test_the_trajectory_budget_fits_a_local_models_context(model_and_tokenizer) -> None:
    from agentrft.agent.local import LocalPolicy
    from agentrft.agent.policy import EndpointPolicy
    from agentrft.agent.settings import fit_context

    model, tokenizer = model_and_tokenizer
    limit = model.config.max_position_embeddings
    local = LocalPolicy(model, tokenizer)
    assert fit_context(RolloutSettings(max_trajectory_tokens=limit * 4), local).max_trajectory_tokens == limit
    assert fit_context(RolloutSettings(max_trajectory_tokens=limit // 2), local).max_trajectory_tokens == limit // 2
    endpoint = EndpointPolicy("http://127.0.0.1:9/v1", "m")  # its server cuts turns at its own context
    assert fit_context(RolloutSettings(max_trajectory_tokens=limit * 4), endpoint).max_trajectory_tokens == limit * 4


def test_a_small_model_decodes_on_one_cpu_thread_and_leaves_the_callers_threads(tiny_model_dir, tool_server, rows,
                                                                                  monkeypatch):
    """The tiny model decodes with one torch thread (its steps are too small to share between two), set in
    the decoding thread only: the caller's thread count is what it was. ``threads=None`` leaves torch's."""
    import torch

    from agentrft.agent import decoding, local
    from agentrft.agent.policy import LocalPolicy
    from agentrft.hardware import SMALL_MODEL_PARAMETERS, decoding_threads

    seen: list[int] = []
    decode_turn = decoding.decode_turn

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return decode_turn(*args, **kwargs)

    monkeypatch.setattr(local, "decode_turn", spy)
    torch.set_num_threads(2)
    settings = RolloutSettings(seed=0, max_new_tokens=8, max_tool_calls=1)
    small = LocalPolicy.from_pretrained(tiny_model_dir)
    assert small.threads == decoding_threads(small.model) == 1
    rollout(rows[:2], small, tool_server, TOOL_TOKEN, settings)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2
    seen.clear()
    rollout(rows[:2], LocalPolicy(small.model, small.tokenizer, threads=None), tool_server, TOOL_TOKEN, settings)
    assert set(seen) == {2}

    class Big(torch.nn.Module):  # on the CPU, counted but not allocated
        def parameters(self):
            yield torch.empty(1).expand(SMALL_MODEL_PARAMETERS)

    assert decoding_threads(Big()) is None
