"""One decoding step of a small Llama-family model written out with plain tensor ops.

On a CPU, a decoding step of a small model costs mostly the fixed price of calling it through
transformers (module hooks, mask building, keyword plumbing), not its arithmetic. The same step
written with a dozen tensor ops per layer, and with the q/k/v and the gate/up projections each fused
into one matrix, takes about half the time for one row of the tiny model and less for a batch
(``bench/RESULTS.md``); ``bench/rollout.py`` prints its share of a whole rollout phase, and ``tests/test_agent_lean_step.py`` checks that it gives the model's logits. The first
pass of a turn, which runs many tokens, still goes through the model itself.

It covers Qwen2, Qwen3, Llama and Mistral in float32 with full attention, plain or with peft LoRA
adapters (their weight deltas are folded in when the step is built, so it must be rebuilt after the
weights change: ``LocalPolicy`` builds one per turn). Anything else (other architectures, sliding
windows, DoRA, bf16, models over ``MAX_PARAMETERS``, whose fused copies would cost real memory) gets
``None`` from ``LeanStep.build`` and decodes through transformers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

FAMILY = frozenset({"qwen2", "qwen3", "llama", "mistral"})
"""Model types built as plain Llama-style decoders whose logits are exactly ``lm_head(last hidden state)``
(no soft-capping or scaling); ``pretrain.causal_lm_loss`` relies on the same property."""
MAX_PARAMETERS = 100_000_000


def _weight(module: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The effective ``(weight, bias)`` of a linear layer, LoRA deltas included; None if it is anything else."""
    if type(module) is torch.nn.Linear:
        return module.weight, module.bias
    base = getattr(module, "base_layer", None)
    if type(base) is not torch.nn.Linear or not hasattr(module, "get_delta_weight"):
        return None
    weight = base.weight
    if not module.disable_adapters and not module.merged:
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                if adapter in getattr(module, "lora_variant", {}):  # DoRA and others: not a plain delta
                    return None
                weight = weight + module.get_delta_weight(adapter)
    return weight, base.bias


def _fused(modules: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Several linear layers reading the same input as one ``[in, sum(out)]`` matrix and bias."""
    parts = [_weight(m) for m in modules]
    if any(p is None for p in parts):
        return None
    weight = torch.cat([w for w, _ in parts]).t().contiguous()
    if all(b is None for _, b in parts):
        return weight, None
    return weight, torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in parts])


def _norm(module: Any) -> tuple[torch.Tensor, float] | None:
    if not type(module).__name__.endswith("RMSNorm"):  # e.g. wrapped by peft's modules_to_save
        return None
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    weight = getattr(module, "weight", None)
    return None if eps is None or not isinstance(weight, torch.Tensor) else (weight, float(eps))


def _rms(x: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), norm[0], norm[1])


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _linear(x: torch.Tensor, weight: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    return x @ weight[0] if weight[1] is None else torch.addmm(weight[1], x, weight[0])


class LeanStep:
    """``step(tokens, positions, cache, mask)`` → next-token logits ``[rows, vocab]``.

    Example:
        >>> lean = LeanStep.build(model)   # None: decode through ``model(...)``
        >>> logits = lean.step(tokens, positions, cache, mask)

    ``tokens`` and ``positions`` are ``[rows]``; ``cache`` is a transformers cache whose full-attention
    layers take the new keys and values through ``update``; ``mask`` is ``[rows, columns]`` with 1 on
    the columns each row attends to, the new one included.
    """

    def __init__(self, model: Any, inner: Any, layers: list[dict[str, Any]]) -> None:
        self.embed = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb
        self.final = _norm(inner.norm)
        self.layers = layers
        self.head = _weight(model.get_output_embeddings())

    @classmethod
    @torch.no_grad()
    def build(cls, model: Any) -> LeanStep | None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = getattr(base, "config", None)
        if (getattr(config, "model_type", None) not in FAMILY or getattr(config, "hidden_act", None) != "silu"
                or any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or [])
                or (getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True))):
            return None
        parameters = list(base.parameters())
        if any(p.dtype != torch.float32 for p in parameters) or sum(p.numel() for p in parameters) > MAX_PARAMETERS:
            return None
        inner = base.get_decoder()
        if type(inner.embed_tokens) is not torch.nn.Embedding or _weight(base.get_output_embeddings()) is None:
            return None
        layers = []
        for layer in inner.layers:
            attention, mlp = layer.self_attn, layer.mlp
            entry = {
                "qkv": _fused([attention.q_proj, attention.k_proj, attention.v_proj]),
                "o": _fused([attention.o_proj]),
                "gate_up": _fused([mlp.gate_proj, mlp.up_proj]),
                "down": _fused([mlp.down_proj]),
                "norm_in": _norm(layer.input_layernorm),
                "norm_post": _norm(layer.post_attention_layernorm),
                "q_norm": _norm(attention.q_norm) if hasattr(attention, "q_norm") else False,
                "k_norm": _norm(attention.k_norm) if hasattr(attention, "k_norm") else False,
                "heads": config.num_attention_heads,
                "kv_heads": config.num_key_value_heads,
                "head_dim": attention.head_dim,
                "scale": attention.scaling,
                "index": attention.layer_idx,
            }
            if any(value is None for value in entry.values()):
                return None
            layers.append(entry)
        if _norm(inner.norm) is None:
            return None
        return cls(base, inner, layers)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, cache: Any, mask: torch.Tensor) -> torch.Tensor:
        rows = tokens.shape[0]
        x = self.embed[tokens]
        cos, sin = self.rotary(x, positions[:, None])  # [rows, 1, head_dim]: any rope scaling the model has
        attend = mask.bool()[:, None, None, :]
        for layer in self.layers:
            heads, kv_heads, dim = layer["heads"], layer["kv_heads"], layer["head_dim"]
            qkv = _linear(_rms(x, layer["norm_in"]), layer["qkv"])
            q = qkv[:, : heads * dim].view(rows, heads, dim)
            k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(rows, kv_heads, dim)
            v = qkv[:, (heads + kv_heads) * dim :].view(rows, kv_heads, dim)
            if layer["q_norm"]:  # Qwen3 normalizes each head before the rotation
                q, k = _rms(q, layer["q_norm"]), _rms(k, layer["k_norm"])
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            keys, values = cache.layers[layer["index"]].update(k[:, :, None], v[:, :, None])
            out = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=attend, scale=layer["scale"],
                                                 enable_gqa=heads != kv_heads)
            x = x + _linear(out.reshape(rows, heads * dim), layer["o"])
            gate_up = _linear(_rms(x, layer["norm_post"]), layer["gate_up"])
            half = gate_up.shape[-1] // 2
            x = x + _linear(F.silu(gate_up[:, :half]) * gate_up[:, half:], layer["down"])
        return F.linear(_rms(x, self.final), *self.head)


__all__ = ["LeanStep"]
