"""Build the embedded default: a ~1M-parameter Qwen2 model with a tokenizer trained on the corpus.

The result is an ordinary Hugging Face checkpoint (``save_pretrained``), so every later step loads it
with ``AutoTokenizer`` / ``AutoModelForCausalLM`` exactly as it would load Qwen2.5-7B-Instruct.
The weights start random; a short synthetic pretraining (``pretrain.py``: induction heads, then
look-up in tables of highlight lines) gives the model the in-context look-up every pretrained model
has, and the warm start (``agentrft model warm-start``) then gives it its prior for the task.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from ...errors import UserError
from ...tools.corpus_tools import tool_specs
from .cache import RECIPE
from .pretrain import pretrain_lookup
from .prompts import MAX_NEW_TOKENS, MAX_POSITIONS, TEMPERATURE
from .tokenizer import corpus_documents, find_metric_labels, train_tokenizer

TINY_SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
"""Shape of the tiny model: ~1.4M parameters, a few ms per token on one CPU core. Two heads of 64
dimensions rather than four of 32: one head copies a token it attends to through a rank-head_dim
value/output path, and at 32 that path cannot single out one of ~4,500 tokens: copying plateaus,
where at 64 the same pretraining answers synthetic look-ups exactly (``bench/RESULTS.md``)."""


def build_tiny_model(
    corpus_dir: Path,
    out_dir: Path,
    seed: int = 0,
    induction_steps: int = 600,
    lookup_steps: int = 300,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train a tokenizer on ``corpus_dir``, create a tiny Qwen2 model, pretrain it to look up, save both.

    Returns ``out_dir``, loadable by ``AutoTokenizer.from_pretrained`` and
    ``AutoModelForCausalLM.from_pretrained``.
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    if not corpus_dir.is_dir():
        raise UserError(f"{corpus_dir}: corpus directory not found (pass --corpus DIR, e.g. data/corpus)")
    docs = corpus_documents(corpus_dir)
    if not docs:
        raise UserError(f"{corpus_dir}: no .html/.txt/.md documents to train the tokenizer on")

    tokenizer = train_tokenizer(corpus_dir, tool_specs())
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=pad,
        eos_token_id=im_end,
        pad_token_id=pad,
        **TINY_SHAPE,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    losses = pretrain_lookup(model, tokenizer, find_metric_labels(docs), induction_steps=induction_steps,
                             lookup_steps=lookup_steps, seed=seed, log=log)
    model.generation_config = GenerationConfig(
        eos_token_id=im_end,
        pad_token_id=pad,
        do_sample=True,
        temperature=TEMPERATURE,
        top_p=1.0,
        top_k=0,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _check_reload(tokenizer, out_dir)
    info = {"seed": seed, "recipe": RECIPE, "corpus": str(corpus_dir), "parameters": model.num_parameters(),
            "induction_steps": induction_steps, "lookup_steps": lookup_steps, "pretrain_losses": losses}
    (out_dir / "agentrft_model.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _check_reload(tokenizer, out_dir: Path) -> None:
    """Fail the build if ``AutoTokenizer`` would load a tokenizer that encodes differently.

    transformers loads ``qwen2`` checkpoints through its own Qwen2Tokenizer class, which rebuilds
    parts of the backend; a mismatch would silently put the training and the rollouts on different ids.
    """
    loaded = AutoTokenizer.from_pretrained(out_dir)
    probe = (
        "<|im_start|>user\nWhat was Henderson Industries' Q3 2025 operating margin?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "read", "arguments": {"path": "filings/a.html"}}'
        "\n</tool_call><|im_end|>\nRevenue: $1,430M  Operating margin: 13.4% (-2.05) caf\u00e9 \u65e5\u672c"
    )
    if loaded.encode(probe) != tokenizer.encode(probe) or loaded.decode(loaded.encode(probe)) != probe:
        raise RuntimeError(f"{out_dir}: the saved tokenizer reloads with a different encoding; report this")


__all__ = ["TINY_SHAPE", "build_tiny_model"]
