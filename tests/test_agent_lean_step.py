"""The lean decoding step gives the model's own next-token logits, and declines what it does not cover."""

from __future__ import annotations

import copy

import pytest
import torch

from agentrft.agent.lean_step import LeanStep
from agentrft.agent.decoding import new_cache


def _small(kind: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    base = {"qwen2": {}, "qwen3": {"head_dim": 16}, "llama": {"attention_bias": True}, "mistral": {}}[kind]
    config = AutoConfig.for_model(kind, vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                  **{"sliding_window": None, **base, **extra})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # biases and norms away from their initial zeros and ones, so each one counts
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def _compare_steps(model, steps: int = 5) -> float:
    """Largest logit difference between ``LeanStep`` and ``model(...)`` over a few decoding steps of a
    left-padded batch that share the same prefilled cache."""
    lean = LeanStep.build(model)
    assert lean is not None
    rows, width = 3, 12
    lengths = [12, 7, 3]
    mask = torch.zeros((rows, width + steps), dtype=torch.long)
    ids = torch.randint(3, 300, (rows, width))
    positions = torch.zeros((rows, width), dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, width - n : width] = 1
        positions[i, width - n :] = torch.arange(n)
    ours = new_cache(model, width + steps)
    worst = 0.0
    with torch.no_grad():
        first = model(input_ids=ids, attention_mask=mask[:, :width], position_ids=positions, cache=ours, use_cache=True,
                      logits_to_keep=1).logits[:, -1]
        theirs = copy.deepcopy(ours)
        tokens, next_pos = first.argmax(-1), torch.tensor(lengths)
        for step in range(steps):
            mask[:, width + step] = 1
            seen = width + step + 1
            expected = model(input_ids=tokens[:, None], attention_mask=mask[:, :seen], position_ids=next_pos[:, None],
                             cache=theirs, use_cache=True, logits_to_keep=1).logits[:, -1]
            got = lean.step(tokens, next_pos, ours, mask[:, :seen])
            worst = max(worst, float((got - expected).abs().max()))
            tokens, next_pos = expected.argmax(-1), next_pos + 1
    return worst


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "llama", "mistral"])
def test_lean_step_gives_the_models_logits(kind):
    assert _compare_steps(_small(kind)) < 1e-4


def test_a_sliding_window_switched_off_is_full_attention():
    """Qwen2.5's configs name a window and switch it off (``use_sliding_window: false``)."""
    assert _compare_steps(_small("qwen2", sliding_window=4, use_sliding_window=False)) < 1e-4


def test_lean_step_gives_the_tiny_models_logits(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    assert _compare_steps(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()) < 1e-4


def test_lean_step_folds_in_lora_deltas_and_follows_disabled_adapters():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_small("qwen2"), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero, which would hide a missing delta
                parameter.normal_(0, 0.2)
    model.eval()
    assert _compare_steps(model) < 1e-4
    with model.disable_adapter():
        assert _compare_steps(model) < 1e-4


def test_lean_step_declines_what_it_does_not_cover():
    assert LeanStep.build(_small("qwen2").to(torch.bfloat16)) is None
    assert LeanStep.build(_small("qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=0)) is None
    assert LeanStep.build(_small("mistral", sliding_window=8)) is None
    from transformers import GPT2Config, GPT2LMHeadModel

    assert LeanStep.build(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))) is None
    from peft import LoraConfig, get_peft_model

    dora = get_peft_model(_small("llama"), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    assert LeanStep.build(dora) is None
