"""On a lent GPU: `agentrft plan`'s memory items against what a real training step holds, and its speed.

The GPU image has torch, transformers, peft and accelerate, but not TRL or vLLM, and nothing can be
downloaded there. So this measures what those allow, on randomly initialised models of the published
shapes (no weights needed to measure memory and time):

- weights: the bf16 model's allocated bytes against the plan's "policy weights";
- one LoRA training micro-batch as TRL's GRPO loss runs it (gradient checkpointing, the policy's
  log-probs over the completion in fp32, a reference forward with the adapter disabled, backward,
  AdamW step): the peak allocated bytes above the weights, against the plan's "trainable state" +
  "training activations", and the tokens per second;
- the KV cache a batch of rollouts holds after prefill (transformers' DynamicCache), against the
  plan's per-token figure.

What waits for a machine with TRL and vLLM: GRPO steps through TRL on a GPU, rollouts through vLLM
(bench/vllm_rollout.py) and weight pushes at real sizes. Run: ``bash bench/gpu.sh`` (or
``python bench/gpu.py --models Qwen/Qwen2.5-0.5B-Instruct,Qwen/Qwen2.5-7B-Instruct``); on a CPU,
``--device cpu --models tiny`` checks the script itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = 1024**3
# Published shapes (config.json of each model), as in agentrft/plan.py's KNOWN table; "tiny" for a CPU check.
SHAPES = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=2,
                 num_key_value_heads=2, vocab_size=4492, tie_word_embeddings=True),
    "Qwen/Qwen2.5-0.5B-Instruct": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                       num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                       tie_word_embeddings=True),
    "Qwen/Qwen2.5-1.5B-Instruct": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                       num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                                       tie_word_embeddings=True),
    "Qwen/Qwen2.5-7B-Instruct": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                     num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                     tie_word_embeddings=False),
}


def plan_items(model: str, micro: int, tokens: int, rank: int) -> dict[str, float] | None:
    """The plan's items for this shape, or None where agentrft's dependencies are not installed."""
    try:
        from agentrft.plan import KNOWN, PlanInput, memory_items
    except ImportError:
        return None
    if model not in KNOWN:
        return None
    return memory_items(PlanInput(model=model, lora_rank=rank, micro_batch=micro, trajectory_tokens=tokens,
                                  group_size=micro, prompts_per_step=1), KNOWN[model])


def measure(model_name: str, device: str, micro: int, tokens: int, rank: int, steps: int) -> dict[str, float]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    config = Qwen2Config(max_position_embeddings=max(4096, tokens), **SHAPES[model_name])
    torch.manual_seed(0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    weights = torch.cuda.memory_allocated() if cuda else sum(p.numel() * p.element_size() for p in model.parameters())
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(0, config.vocab_size, (micro, tokens), device=device)
    completion = tokens // 2

    def logprobs() -> torch.Tensor:
        logits = model(input_ids=ids).logits[:, -completion - 1 : -1].float()
        return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, -completion:, None]).squeeze(-1)

    timings = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad(), model.disable_adapter():
            reference = logprobs()
        policy = logprobs()
        kl = torch.exp(reference - policy) - (reference - policy) - 1
        loss = (-(policy - policy.detach()).exp() + 0.01 * kl).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else float("nan")
    kv = kv_bytes(model, config, device, micro, tokens)
    return {"weights": weights, "step_peak_above_weights": peak - weights, "kv_cache": kv,
            "step_s": sorted(timings)[len(timings) // 2], "tokens_per_s": micro * tokens / sorted(timings)[len(timings) // 2]}


def kv_bytes(model: object, config: object, device: str, micro: int, tokens: int) -> float:
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    ids = torch.randint(0, config.vocab_size, (micro, tokens), device=device)
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)  # type: ignore[operator]
    return float(sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="Qwen/Qwen2.5-0.5B-Instruct,Qwen/Qwen2.5-7B-Instruct")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--micro", type=int, default=2, help="Trajectories per micro-batch.")
    parser.add_argument("--tokens", type=int, default=4096, help="Tokens per trajectory.")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: bench/gpu.py measures on a GPU (--device cpu --models tiny checks the script)")
        return
    if args.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        print(f"{props.name}: {props.total_memory / GIB:.0f} GiB, torch {torch.__version__}", flush=True)
    results = {}
    for name in args.models.split(","):
        got = measure(name, args.device, args.micro, args.tokens, args.rank, args.steps)
        planned = plan_items(name, args.micro, args.tokens, args.rank)
        results[name] = {"measured": got, "plan": planned}
        print(f"\n{name} · LoRA r={args.rank} · micro-batch {args.micro} × {args.tokens} tokens")
        print(f"  weights                 measured {got['weights'] / GIB:7.2f} GiB"
              + (f"   plan {planned['policy weights (bf16)'] / GIB:7.2f}" if planned else ""))
        if planned:
            step_plan = planned["trainable state (grad + Adam)"] + planned["training activations"]
            print(f"  step above the weights  measured {got['step_peak_above_weights'] / GIB:7.2f} GiB"
                  f"   plan {step_plan / GIB:7.2f} (trainable state + activations)")
            per_traj_plan = planned["rollout KV cache"] / args.micro
            print(f"  KV cache per trajectory measured {got['kv_cache'] / args.micro / GIB:7.3f} GiB"
                  f"   plan {per_traj_plan / GIB:7.3f}")
        else:
            print(f"  step above the weights  measured {got['step_peak_above_weights'] / GIB:7.2f} GiB")
        print(f"  step {got['step_s']:.2f} s, {got['tokens_per_s']:.0f} tokens/s (reference + policy forward, backward, AdamW)")
    print(json.dumps(results, default=float))


if __name__ == "__main__":
    main()
