"""The compact log-prob forward against TRL's own fused LM head, on TRL's padded layout.

TRL's loss reads per-token log-probs (and the policy's entropies) from ``model(..., fused_lm_head=True)``.
``agentrft.train.logprobs`` computes them with less padding and only where they are needed; these
tests hold it to TRL's numbers and gradients.
"""

from __future__ import annotations

import pytest
import torch

from agentrft.train import logprobs
from agentrft.train.logprobs import GeneratedTokens, covers, install_compact_logprobs

TEMPERATURE = 0.7


def tiny_qwen2(seed: int = 0):  # type: ignore[no-untyped-def]
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config).float()


def trl_head(model, with_entropy: bool = True):  # type: ignore[no-untyped-def]
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, temperature=TEMPERATURE, outputs=("log_probs", "entropy") if with_entropy else ("log_probs",))
    return model


def trl_layout(rows: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """input_ids, attention_mask and labels as TRL builds them: prompts padded left, completions right."""
    longest_prompt = max(len(p) for p, _ in rows)
    longest_completion = max(len(c) for _, c in rows)
    ids = torch.zeros((len(rows), longest_prompt + longest_completion), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (prompt, completion) in enumerate(rows):
        ids[i, longest_prompt - len(prompt) : longest_prompt] = torch.tensor(prompt)
        ids[i, longest_prompt : longest_prompt + len(completion)] = torch.tensor(completion)
        mask[i, longest_prompt - len(prompt) : longest_prompt + len(completion)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :longest_prompt] = -100
    return ids, mask, labels, longest_completion


def random_rows(count: int, seed: int = 1) -> list[tuple[list[int], list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        prompt = int(torch.randint(3, 12, (1,), generator=generator))
        completion = int(torch.randint(1, 60, (1,), generator=generator))
        rows.append((torch.randint(1, 97, (prompt,), generator=generator).tolist(),
                     torch.randint(1, 97, (completion,), generator=generator).tolist()))
    return rows


def forward(model, ids, mask, labels):  # type: ignore[no-untyped-def]
    return model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)


@pytest.mark.parametrize("chunk, floats, frozen_head", [(None, None, False), (7, None, False), (7, None, True),
                                                        (None, 97 * 3, False)])
def test_compact_log_probs_entropies_and_gradients_equal_trls_head(
    chunk: int | None, floats: int | None, frozen_head: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also with the head split into chunks of 7 positions (its backward recomputes each chunk's logits),
    of 3 positions because the vocabulary (97) fills the cap on logits per chunk, and with the head frozen
    as under LoRA (gradients still reach the layers below it)."""
    if chunk is not None:
        monkeypatch.setattr(logprobs, "HEAD_CHUNK", chunk)
    if floats is not None:
        monkeypatch.setattr(logprobs, "HEAD_CHUNK_FLOATS", floats)
        assert logprobs._chunk_positions(97) == 3
    reference, compact = trl_head(tiny_qwen2()), trl_head(tiny_qwen2())
    for model in (reference, compact):
        model.get_output_embeddings().weight.requires_grad_(not frozen_head)
    install_compact_logprobs(compact, TEMPERATURE)
    ids, mask, labels, _ = trl_layout(random_rows(19))  # more rows than one bucket, lengths far apart
    weights = torch.randn(ids.shape[0], ids.shape[1] - 1)
    ref_out, out = forward(reference, ids, mask, labels), forward(compact, ids, mask, labels)
    scored = labels[:, 1:] != -100
    assert torch.equal(out.label_mask, scored)
    assert torch.allclose(out.log_probs, ref_out.log_probs, atol=1e-5)
    assert torch.allclose(out.entropy, ref_out.entropy, atol=1e-5)
    assert (out.log_probs[~scored] == 0).all() and (out.entropy[~scored] == 0).all()
    for result in (ref_out, out):
        (result.log_probs * weights).sum().backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), compact.named_parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None) == (frozen_head and not a.requires_grad), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name


def test_generated_tokens_limit_the_head_to_the_policys_own_tokens() -> None:
    reference, compact = trl_head(tiny_qwen2()), trl_head(tiny_qwen2())
    rows = random_rows(11, seed=2)
    # the policy generated every other completion token; the rest is "tool output"
    masks = [[0] * len(p) + [int(j % 2 == 0) for j in range(len(c))] for p, c in rows]
    generated = GeneratedTokens()
    generated.record([p + c for p, c in rows[:-1]], masks[:-1])  # the last row is unknown to it
    install_compact_logprobs(compact, TEMPERATURE, generated=generated)
    ids, mask, labels, completion_width = trl_layout(rows)
    loss_mask = torch.zeros_like(labels[:, 1:], dtype=torch.bool)
    prompt_width = ids.shape[1] - completion_width
    for i, (p, c) in enumerate(rows):
        for j in range(len(c)):
            loss_mask[i, prompt_width + j - 1] = bool(masks[i][len(p) + j])
    ref_out, out = forward(reference, ids, mask, labels), forward(compact, ids, mask, labels)
    assert torch.allclose(out.log_probs[loss_mask], ref_out.log_probs[loss_mask], atol=1e-5)
    tool_tokens = (labels[:, 1:] != -100) & ~loss_mask
    assert (out.log_probs[:-1][tool_tokens[:-1]] == 0).all()  # never computed for known rows
    last = labels[-1, 1:] != -100  # the unknown row is scored at every label
    assert torch.allclose(out.log_probs[-1][last], ref_out.log_probs[-1][last], atol=1e-5)
    # what TRL's loss does with them: multiply by the mask first. The gradients then agree.
    for model, result in ((reference, ref_out), (compact, out)):
        (result.log_probs * loss_mask).sum().backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), compact.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name


def test_bf16_autocast_stays_close_and_leaves_plain_forward_alone() -> None:
    reference, compact = trl_head(tiny_qwen2()), trl_head(tiny_qwen2())
    install_compact_logprobs(compact, TEMPERATURE, autocast=True)
    ids, mask, labels, _ = trl_layout(random_rows(9, seed=3))
    scored = labels[:, 1:] != -100
    with torch.no_grad():
        ref_out, out = forward(reference, ids, mask, labels), forward(compact, ids, mask, labels)
        assert (out.log_probs - ref_out.log_probs)[scored].abs().mean() < 0.02
        # the model's own forward (what rollouts call) is float32 and unchanged
        assert compact(input_ids=ids, attention_mask=mask).logits.dtype == torch.float32
        assert torch.equal(compact(input_ids=ids, attention_mask=mask).logits,
                           reference(input_ids=ids, attention_mask=mask).logits)


def test_layouts_it_does_not_cover_go_to_trls_head() -> None:
    reference, compact = trl_head(tiny_qwen2()), trl_head(tiny_qwen2())
    install_compact_logprobs(compact, TEMPERATURE)
    ids, mask, labels, _ = trl_layout(random_rows(4, seed=4))
    mask[0, -1] = 0  # a hole inside a row: not one contiguous span
    mask[0, -3] = 1
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        ref_out, out = forward(reference, ids, mask, labels), forward(compact, ids, mask, labels)
    assert torch.equal(out.log_probs, ref_out.log_probs)


@pytest.mark.parametrize("field", ["final_logit_softcapping", "logit_scale"])
def test_scaled_logits_are_not_covered(field: str) -> None:
    model = tiny_qwen2()
    assert covers(model)
    setattr(model.config, field, 30.0)
    assert not covers(model)


def test_generated_tokens_checks_lengths_and_merges_duplicates() -> None:
    generated = GeneratedTokens()
    with pytest.raises(ValueError):
        generated.record([[1, 2, 3]], [[0, 1]])
    generated.record([[1, 2, 3], [1, 2, 3]], [[0, 1, 0], [0, 0, 1]])
    assert generated.lookup(torch.tensor([1, 2, 3])).tolist() == [False, True, True]
    assert generated.lookup(torch.tensor([1, 2])) is None


def test_the_cpu_loss_runs_in_float32_unless_bf16_is_asked_for() -> None:
    """The rollouts sample in float32: by default the loss scores their tokens in float32 too."""
    from agentrft.config import config_from_dict
    from agentrft.hardware import cpu_has_native_bf16
    from agentrft.train.trainer import cpu_autocast

    base = dict(train_path="t.jsonl", base_model="m", tools_url="http://127.0.0.1:9")
    assert cpu_autocast(config_from_dict(base)) is False
    assert cpu_autocast(config_from_dict({**base, "bf16": False})) is False
    assert cpu_autocast(config_from_dict({**base, "bf16": True})) is cpu_has_native_bf16()


def test_a_differentiable_entropy_keeps_its_gradient() -> None:
    """``entropy_grad`` (an entropy bonus in the loss) gets an entropy that backpropagates, equal to TRL's."""
    reference, compact = trl_head(tiny_qwen2()), trl_head(tiny_qwen2())
    install_compact_logprobs(compact, TEMPERATURE, entropy_grad=True)
    ids, mask, labels, _ = trl_layout(random_rows(5, seed=5))
    ref_out, out = forward(reference, ids, mask, labels), forward(compact, ids, mask, labels)
    scored = labels[:, 1:] != -100
    assert torch.allclose(out.entropy[scored], ref_out.entropy[scored], atol=1e-5)
    assert out.entropy.requires_grad
    out.entropy.sum().backward()
    assert compact.get_output_embeddings().weight.grad.abs().sum() > 0
