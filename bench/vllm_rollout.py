"""Rollout phase through vLLM against the local policy: same model, rows, settings and tool server, one run.

- local: ``run_rollouts`` with ``LocalPolicy`` (batched decoding per turn, KV cache kept across turns),
  in this process with ``--threads`` torch threads.
- vLLM: ``run_rollouts`` with ``VLLMPolicy`` against a ``VLLMServer`` on the same model folder in fp32
  (vLLM's CPU build from ``.venv-vllm``; its engine pins itself to one core and leaves one to the rest).
  Each turn of each rollout is one ``/v1/completions`` request with the whole token context, at most
  ``--max-concurrency`` in flight; vLLM batches them continuously and prefills only what its prefix
  cache lacks. The server's start-up is timed apart and not counted in the rollout wall time.

The tool server is ``bench/rollout.py``'s: agentrft's filings tools in a process of their own, each call
answering ``--latency-ms`` later. Both policies sample at the same temperature with the same per-turn and
tool-call caps and seeds, but not the same random streams, so the trajectories differ; generated tokens/s
and tool calls per trajectory are printed so the work can be compared. Run:
``python bench/vllm_rollout.py [--model DIR] [--repeats 2]`` (without --model, the tiny model of
``bench/rollout.py`` is built and warm-started into bench/.cache first, which takes a few minutes once).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rollout import ROOT, TOKEN, ensure_model, prepare, run_ours, tool_server_process  # noqa: E402

sys.path.insert(0, str(ROOT))

from agentrft.agent.loop import rollout  # noqa: E402
from agentrft.agent.vllm import VLLMPolicy, VLLMServer  # noqa: E402
from agentrft.filings.model import prompts  # noqa: E402


def run_vllm(policy: Any, rows: list, url: str, settings: Any, samples: int) -> dict[str, float]:
    start = time.perf_counter()
    trajectories = rollout(rows, policy, url, TOKEN, settings, samples_per_row=samples)
    wall = time.perf_counter() - start
    return {
        "wall": wall,
        "trajectories": len(trajectories),
        "generated": sum(sum(t.loss_mask) for t in trajectories),
        "tool_calls": sum(t.n_tool_calls for t in trajectories),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="A model folder that calls the filings tools.")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the local policy.")
    parser.add_argument("--max-concurrency", type=int, default=32, help="vLLM requests in flight.")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work, rows, settings = prepare(args.rows, args.threads, "bench-vllm-rollout-")
    with tool_server_process(work / "corpus", args.latency_ms / 1000, prompts.READ_BUDGET_CHARS, args.threads) as url:
        model_dir = ensure_model(args.model, work, url)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        with VLLMServer(model_dir, dtype="float32", max_num_seqs=max(args.max_concurrency, 1),
                        log_path=work / "vllm.log") as server:
            policy = VLLMPolicy(server.url, tokenizer, max_concurrency=args.max_concurrency)
            # Warm-up (first-call overheads), then alternate the two so drift hits both alike.
            run_ours(model, tokenizer, rows[:2], url, settings, 2)
            run_vllm(policy, rows[:2], url, settings, 2)
            local, served = [], []
            for repeat in range(args.repeats):
                seeded = settings.model_copy(update={"seed": repeat})
                local.append(run_ours(model, tokenizer, rows, url, seeded, args.samples))
                served.append(run_vllm(policy, rows, url, seeded, args.samples))
    report(local, served, server.startup_s or 0.0, args)


def report(local: list[dict[str, float]], served: list[dict[str, float]], startup_s: float,
           args: argparse.Namespace) -> None:
    def row(name: str, runs: list[dict[str, float]]) -> tuple[str, float, float, float, float, float]:
        wall = statistics.median(r["wall"] for r in runs)
        n = runs[0]["trajectories"]
        generated = statistics.mean(r["generated"] for r in runs)
        calls = statistics.mean(r["tool_calls"] for r in runs) / n
        return name, wall, n / wall, generated / wall, calls, generated / n

    lines = [row("LocalPolicy (transformers, this process)", local),
             row(f"VLLMPolicy (vLLM CPU server, {args.max_concurrency} in flight)", served)]
    print(
        f"\n{args.rows} rows × {args.samples} samples = {args.rows * args.samples} trajectories, "
        f"{args.latency_ms:g} ms per tool call, {args.threads} torch threads for the local policy, "
        f"median of {args.repeats}; vLLM server start-up {startup_s:.1f} s (not counted)"
    )
    print("| policy | wall s | trajectories/s | generated tokens/s | tool calls/trajectory | generated tokens/trajectory |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, wall, tps, gps, calls, gen in lines:
        print(f"| {name} | {wall:.2f} | {tps:.2f} | {gps:.0f} | {calls:.2f} | {gen:.0f} |")
    print(f"vLLM / local: {lines[0][1] / lines[1][1]:.2f}× the trajectories per second "
          f"(local wall / vLLM wall), {lines[1][3] / lines[0][3]:.2f}× the generated tokens per second")
    print(json.dumps({"local": local, "vllm": served, "vllm_startup_s": startup_s}))


if __name__ == "__main__":
    main()
