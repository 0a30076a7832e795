"""The tiny model's synthetic pretraining: induction targets, look-up tables, and heads that form."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agentrft.filings.model import pretrain


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_induction_targets_point_after_the_latest_earlier_occurrence() -> None:
    import torch

    ids, labels, target = pretrain._induction_batch(10, 60, torch.Generator().manual_seed(0), random.Random(0), 4)
    checked = 0
    for b in range(ids.shape[0]):
        row = ids[b].tolist()
        for i, t in enumerate(target[b].tolist()):
            earlier = [j for j in range(i) if row[j] == row[i]]
            if t < 0:
                assert not earlier or i + 1 == len(row)
                continue
            assert t == earlier[-1] + 1
            assert labels[b, i + 1].item() == row[t]
            checked += 1
    assert checked > 40  # planted repeats (and chance repeats in a 50-token vocabulary) give targets


def test_lookup_tables_ask_about_lines_they_show(tokenizer) -> None:
    rng = random.Random(3)
    for _ in range(20):
        ids, mask = pretrain.lookup_example(tokenizer, ["Revenue", "Operating margin", "Net income"], rng)
        text = tokenizer.decode(ids)
        assert len(ids) == len(mask) and sum(mask) > 0
        answered = tokenizer.decode([t for t, m in zip(ids, mask) if m]).split("<|im_end|>")[:-1]
        assert len(answered) == pretrain.QUESTIONS_PER_TABLE
        table = text.split("</tool_response>")[0]
        for answer in answered:
            assert f"{answer}\n" in table and ": " in answer, (answer, table)


def test_supervised_attention_forms_a_previous_token_head(tiny_model_dir: Path, tokenizer) -> None:
    """90 induction steps turn layer 0 head 0 into a previous-token head (a fresh model: ~5% on it)."""
    import torch
    from transformers import AutoConfig, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(AutoConfig.from_pretrained(tiny_model_dir))

    def previous_token_attention() -> float:
        model.set_attn_implementation("eager")
        ids, _, _ = pretrain._induction_batch(len(tokenizer.all_special_ids), len(tokenizer),
                                              torch.Generator().manual_seed(1), random.Random(1), 8)
        with torch.no_grad():
            heads = model(input_ids=ids, output_attentions=True).attentions[0][:, 0]
        model.set_attn_implementation("sdpa")
        n = ids.shape[1]
        return heads[:, torch.arange(1, n), torch.arange(n - 1)].mean().item()

    before = previous_token_attention()
    history = pretrain.pretrain_lookup(model, tokenizer, ["Revenue", "Net income"], induction_steps=90, lookup_steps=0)
    after = previous_token_attention()
    assert before < 0.2 and after > 0.6, (before, after)
    assert history["induction"][-1] < history["induction"][0]
    assert model.config._attn_implementation == "sdpa"  # restored for the rest of the pipeline


def test_causal_lm_loss_equals_the_models_own_loss_and_gradients(tiny_model_dir: Path, tokenizer) -> None:
    """The LM head on the labelled positions alone gives the model's loss (mean, and sum over a count)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    inputs, _ = pretrain._lookup_batch(tokenizer, ["Revenue", "Net income"], random.Random(0), 4,
                                       pretrain.number_token_ids(tokenizer))
    assert (inputs["attention_mask"] == 0).any() and (inputs["labels"] == -100).float().mean() > 0.5
    count = torch.tensor(40)

    def loss_and_grad(fast: bool, num_items=None):
        model.zero_grad()
        if fast:
            loss, _ = pretrain.causal_lm_loss(model, inputs, num_items)
        else:
            extra = {"num_items_in_batch": num_items} if num_items is not None else {}
            loss = model(**inputs, **extra).loss
        loss.backward()
        return loss.item(), model.model.layers[0].mlp.down_proj.weight.grad.clone()

    for num_items in (None, count):
        (fast, fast_grad), (own, own_grad) = loss_and_grad(True, num_items), loss_and_grad(False, num_items)
        assert abs(fast - own) < 1e-5 * max(1.0, abs(own)), (num_items, fast, own)
        assert torch.allclose(fast_grad, own_grad, atol=1e-6, rtol=1e-4)
    mean = model(**inputs).loss.item()
    model.config.model_type = "unknown"  # any other architecture takes the model's own loss
    assert abs(pretrain.causal_lm_loss(model, inputs)[0].item() - mean) < 1e-6

