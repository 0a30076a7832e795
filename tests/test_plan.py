import json

import pytest

from agentrft.cli import main
from agentrft.errors import UserError
from agentrft.plan import GIB, KNOWN, PlanInput, arch_from_config, make_plan, memory_items


def test_lora_reference_is_free_but_full_finetune_pays_for_it():
    arch = KNOWN["Qwen/Qwen2.5-7B-Instruct"]
    lora = memory_items(PlanInput("Qwen/Qwen2.5-7B-Instruct"), arch)
    full = memory_items(PlanInput("Qwen/Qwen2.5-7B-Instruct", lora_rank=None), arch)
    assert lora["reference model"] == 0
    assert full["reference model"] == pytest.approx(7.62e9 * 2)
    assert full["trainable state (grad + Adam)"] == pytest.approx(7.62e9 * 14)
    no_kl = memory_items(PlanInput("Qwen/Qwen2.5-7B-Instruct", lora_rank=None, kl_coef=0), arch)
    assert no_kl["reference model"] == 0


def test_rollout_kv_cache_for_7b_group_16_at_4k_tokens():
    # 2 (K,V) × 28 layers × 4 KV heads × 128 dims × 2 bytes = 57,344 bytes a token
    items = memory_items(PlanInput("Qwen/Qwen2.5-7B-Instruct", group_size=16, prompts_per_step=1),
                         KNOWN["Qwen/Qwen2.5-7B-Instruct"])
    assert items["rollout KV cache"] == 57344 * 4096 * 16
    assert 3.0 < items["rollout KV cache"] / GIB < 4.0


def test_full_finetune_needs_more_gpus_than_lora():
    lora = make_plan(PlanInput("Qwen/Qwen2.5-7B-Instruct"))
    full = make_plan(PlanInput("Qwen/Qwen2.5-7B-Instruct", lora_rank=None))
    assert lora.gpus == 1 and full.gpus > 1
    assert full.per_gpu <= 80 * GIB * 0.9
    big = make_plan(PlanInput("Qwen/Qwen2.5-72B-Instruct", lora_rank=None))
    assert big.gpus >= 16 and "NeMo" in big.framework


def test_local_config_is_read(tmp_path):
    cfg = {"num_attention_heads": 4, "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
           "vocab_size": 1000, "num_key_value_heads": 2, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    arch = arch_from_config(tmp_path)
    assert arch.head_dim == 16 and arch.kv_heads == 2
    assert arch.params == 2 * (64 * (4 + 4) * 16 + 64 * 64 + 3 * 64 * 128) + 1000 * 64
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(UserError, match="num_attention_heads"):
        arch_from_config(tmp_path)


def test_cli_prints_the_plan_and_rejects_bad_input(capsys):
    main(["plan", "--model", "Qwen/Qwen2.5-1.5B-Instruct"])
    out = capsys.readouterr().out
    assert "rollout KV cache" in out and "GPUs: 1" in out
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--model", "no/such-model"])
    assert exc.value.code == 1
    assert "unknown model" in capsys.readouterr().err
