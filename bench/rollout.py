"""Rollout phase: agentrft's agent loop against TRL's own tool-calling loop, in the same run.

Both loops drive the same model object (a warm-started tiny Qwen2, so it really calls tools) on the
same rows against the same tool server, whose three filings tools each wait 50 ms before answering
(a stand-in for a real tool's network and compute time). The server is agentrft's own, with its
batched search, in a process of its own as ``agentrft tools serve`` would be. 32 trajectories: 8 rows
× 4 samples, as one GRPO generation batch.

- agentrft: ``run_rollouts`` with a ``LocalPolicy``: one batched ``generate`` per turn across all
  unfinished rollouts; each rollout's tool calls start over HTTP as soon as its turn is generated,
  all of them concurrently.
- agentrft again with ``LocalPolicy(lean_decoding=False)``: every decoding step through the model's
  own forward instead of ``LeanStep``, with the same seeds (the same trajectories but for float noise;
  the token and tool-call counts match), for the lean step's share.
- TRL: ``GRPOTrainer(tools=[search, list, read])`` and its generation path (``_generate``: batched
  first turn, then ``_tool_call_loop``, which runs tool calls one sample at a time). Its tools are
  plain functions posting to the same server with a pooled httpx client.

Both run with the same torch thread count (``--threads``, 1 by default, which is also what
``LocalPolicy`` picks for a model this small on a CPU; on a shared 2-core machine two OpenMP threads in
the main thread were measured 30× slower than one, which would flatter whichever loop happens to
generate off the main thread). Both sample at the same temperature with the same per-turn cap (64 new tokens) and tool-call cap.
Sampling differs, so the loops do not produce identical trajectories; generated tokens/s and tool
calls per trajectory are printed so the work can be compared. Run:
``python bench/rollout.py [--model DIR] [--repeats 2]`` (without --model, a tiny model is built and
warm-started for two epochs into bench/.cache first, which takes a few minutes once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import inspect
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# agentrft from this checkout (ROOT first on the path), with the environment above set
from agentrft.agent.loop import rollout  # noqa: E402
from agentrft.agent.settings import RolloutSettings  # noqa: E402
from agentrft.filings.model import prompts  # noqa: E402
from agentrft.filings.synth import synth  # noqa: E402
from agentrft.jsonl import read_models  # noqa: E402
from agentrft.schema import Row  # noqa: E402
from agentrft.tools.corpus_tools import CorpusTools, tool_specs  # noqa: E402
from agentrft.tools.local_server import serve_app  # noqa: E402
from agentrft.tools.server import create_app  # noqa: E402

TOKEN = "bench-token"


def prepare(n_rows: int, threads: int, prefix: str) -> tuple[Path, list[Row], RolloutSettings]:
    """Torch's threads set; a fresh 4-company corpus in a temporary folder, its first ``n_rows`` val rows, and
    the rollout settings the tiny model was built for (shared by the rollout benches)."""
    import torch

    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix=prefix))
    synth(work, companies=4, seed=0)
    rows = read_models(work / "research_val.jsonl", Row)[:n_rows]
    settings = RolloutSettings(
        max_tool_calls=prompts.MAX_TOOL_CALLS,
        max_trajectory_tokens=prompts.MAX_TRAJECTORY_TOKENS,
        max_new_tokens=prompts.MAX_NEW_TOKENS,
        temperature=prompts.TEMPERATURE,
        seed=0,
    )
    return work, rows, settings


def slow_registry(corpus_dir: Path, latency_s: float, read_budget: int) -> Any:
    """agentrft's filings tools as ``agentrft tools serve`` has them (search through the query batcher),
    each answering ``latency_s`` later, without holding the server's event loop."""
    registry = CorpusTools(corpus_dir, read_budget).registry()
    for tool in registry.tools.values():
        inner = dataclasses.replace(tool)

        async def delayed(_inner: Any = inner, **arguments: Any) -> str:
            await asyncio.sleep(latency_s)
            return await _inner.run(arguments)

        tool.impl = delayed
    return registry


def _serve(corpus_dir: Path, latency_s: float, read_budget: int, threads: int, pipe: Any) -> None:
    """Child process: serve the slow tools on loopback, send the URL, serve until told to stop."""
    import torch

    torch.set_num_threads(threads)
    with serve_app(create_app(slow_registry(corpus_dir, latency_s, read_budget), TOKEN)) as url:
        pipe.send(url)
        pipe.recv()


@contextlib.contextmanager
def tool_server_process(corpus_dir: Path, latency_s: float, read_budget: int, threads: int) -> Iterator[str]:
    """The tool server in its own process, as a deployment runs ``agentrft tools serve``: in the benchmark's
    process its search threads would take turns at the GIL with whichever loop is generating."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(corpus_dir, latency_s, read_budget, threads, child), daemon=True)
    process.start()
    try:
        deadline = time.monotonic() + 120
        while not parent.poll(0.5):
            if not process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the tool server process did not start (see its error above)")
        yield parent.recv()
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()


def trl_tools(url: str) -> list[Any]:
    """Sync tool functions for TRL, posting to the tool server (TRL calls them one at a time)."""
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    def post(name: str, arguments: dict[str, Any]) -> str:
        return client.post(f"/{name}", json={"arguments": arguments, "call_id": "trl"}).json()["output"]

    def search(query: str, top_k: int = 3) -> str:
        return post("search", {"query": query, "top_k": top_k})

    def list(prefix: str = "") -> str:  # noqa: A001 - the tool's name
        return post("list", {"prefix": prefix})

    def read(path: str) -> str:
        return post("read", {"path": path})

    from transformers.utils import get_json_schema

    for fn, spec in zip((search, list, read), tool_specs()):
        # Without a return annotation, get_json_schema gives exactly the spec the server publishes and the
        # model was trained on (a "return" entry would change the rendered system prompt).
        fn.__doc__ = getattr(CorpusTools, fn.__name__).__doc__
        fn.__annotations__.pop("return", None)
        assert get_json_schema(fn) == spec, (get_json_schema(fn), spec)
    return [search, list, read]


def ensure_model(model: Path | None, synth_dir: Path, url: str) -> Path:
    if model is not None:
        return model
    from agentrft.filings.model.tiny import build_tiny_model  # torch, TRL: only without --model
    from agentrft.filings.model.warm_start import WarmStartSettings, warm_start

    cache = ROOT / "bench" / ".cache"
    warm = cache / "warm"
    if not (warm / "config.json").exists():
        print("building and warm-starting a tiny model (once) …", flush=True)
        base = build_tiny_model(synth_dir / "corpus", cache / "tiny", seed=0)
        rows = read_models(synth_dir / "research_train.jsonl", Row)
        # Two epochs are enough for the model to call the tools, which is all this benchmark needs.
        warm_start(base, rows, url, warm, token=TOKEN, settings=WarmStartSettings(epochs=2))
    return warm


def run_ours(model: Any, tokenizer: Any, rows: list, url: str, settings: Any, samples: int,
             phases: bool = False, lean: bool = True) -> dict[str, float]:
    import torch

    from agentrft.agent.policy import LocalPolicy  # torch

    # the count ``prepare`` set from --threads, not the one LocalPolicy would pick itself
    policy = LocalPolicy(model, tokenizer, lean_decoding=lean, threads=torch.get_num_threads())
    spent: dict[str, float] = {}
    with _timed(policy, spent) if phases else contextlib.nullcontext(policy) as policy:
        start = time.perf_counter()
        trajectories = rollout(rows, policy, url, TOKEN, settings, samples_per_row=samples)
        wall = time.perf_counter() - start
    result = {
        "wall": wall,
        "trajectories": len(trajectories),
        "generated": sum(sum(t.loss_mask) for t in trajectories),
        "tool_calls": sum(t.n_tool_calls for t in trajectories),
    }
    if phases:
        result["phases"] = {"outside_generation_s": wall - spent.pop("generation_s", 0.0),
                            **{key: round(value, 3) for key, value in spent.items()}}
    return result


@contextlib.contextmanager
def _timed(policy: Any, spent: dict[str, float]) -> Iterator[Any]:
    """Where a run's time goes: each ``generate`` call (one round), and within it the forward passes
    that prefill new context (more than one token per row, pads counted apart) and the decoding passes
    (the model's forward with one token per row, or ``LeanStep.step``). Yields the timed policy."""
    model = policy.model
    forward = model.forward

    def timed_forward(*args: Any, **kwargs: Any) -> Any:
        begin = time.perf_counter()
        out = forward(*args, **kwargs)
        ids = kwargs["input_ids"]
        kind = "prefill" if ids.shape[1] > 1 else "decode"
        spent[f"{kind}_s"] = spent.get(f"{kind}_s", 0.0) + time.perf_counter() - begin
        spent[f"{kind}_passes"] = spent.get(f"{kind}_passes", 0) + 1
        if kind == "prefill":
            spent["prefill_tokens"] = spent.get("prefill_tokens", 0) + ids.numel()
            real = int(kwargs["attention_mask"][:, -ids.shape[1]:].sum())
            spent["prefill_real_tokens"] = spent.get("prefill_real_tokens", 0) + real
        return out

    model.forward = timed_forward
    from agentrft.agent.lean_step import LeanStep  # torch

    lean_step = LeanStep.step

    def timed_step(self: Any, *args: Any) -> Any:  # a decoding pass that bypasses model.forward
        begin = time.perf_counter()
        out = lean_step(self, *args)
        spent["decode_s"] = spent.get("decode_s", 0.0) + time.perf_counter() - begin
        spent["decode_passes"] = spent.get("decode_passes", 0) + 1
        return out

    LeanStep.step = timed_step
    generate = policy.generate

    @functools.wraps(generate)
    async def timed_generate(*args: Any, **kwargs: Any) -> Any:
        begin = time.perf_counter()
        try:
            return await generate(*args, **kwargs)
        finally:
            spent["generation_s"] = spent.get("generation_s", 0.0) + time.perf_counter() - begin

    policy.generate = timed_generate
    try:
        yield policy
    finally:
        del model.forward
        LeanStep.step = lean_step


def make_trl_trainer(
    model: Any, tokenizer: Any, tools: list, settings: Any, batch: int, samples: int, out: Path, defaults: bool
) -> Any:
    """TRL's trainer around the same model. Unless ``defaults``, generation gets TRL's best settings here:
    GRPOConfig turns the model's KV cache off (``config.use_cache = False``) and enables gradient
    checkpointing, which makes its transformers generation path recompute the whole context per token."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    generation = {"max_new_tokens": settings.max_new_tokens}
    tuned: dict[str, Any] = {}
    if not defaults:
        generation["use_cache"] = True
        tuned["gradient_checkpointing"] = False
    args = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        num_generations=samples,
        max_completion_length=settings.max_trajectory_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        generation_kwargs=generation,
        max_tool_calling_iterations=settings.max_tool_calls,
        use_cpu=True,
        bf16=False,
        report_to="none",
        disable_tqdm=True,
        logging_steps=1,
        **tuned,
    )
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "x"}]}])
    return GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        tools=tools,
    )


def run_trl(trainer: Any, rows: list, system_prompt: str, samples: int) -> dict[str, float]:
    prompts = [
        [{"role": "system", "content": system_prompt}, {"role": "user", "content": row.prompt}]
        for row in rows
        for _ in range(samples)
    ]
    # TRL builds the per-rollout tool tables in its batch preparation, which _generate skips.
    tools = getattr(trainer, "_standalone_tools", None) or trainer.tools
    sync = {t.__name__: t for t in tools if not inspect.iscoroutinefunction(t)}
    asynchronous = {t.__name__: t for t in tools if inspect.iscoroutinefunction(t)}
    trainer._sync_tool_dicts = [sync] * len(prompts)
    trainer._async_tool_dicts = [asynchronous] * len(prompts)
    mode = "train" if trainer.model.training else "eval"  # where TRL logs this generation's metrics
    start = time.perf_counter()
    _, completion_ids, tool_mask, *_ = trainer._generate(prompts)
    wall = time.perf_counter() - start
    frequency = trainer._metrics[mode]["tools/call_frequency"][-1]
    return {
        "wall": wall,
        "trajectories": len(completion_ids),
        "generated": sum(sum(mask) for mask in tool_mask),
        "tool_calls": frequency * len(completion_ids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="A model folder that calls the filings tools.")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both loops.")
    parser.add_argument("--trl-defaults", action="store_true", help="TRL as GRPOConfig leaves it (no KV cache).")
    parser.add_argument("--phases", action="store_true",
                        help="Also time agentrft's rounds, prefill and decoding passes (printed per run).")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work, rows, settings = prepare(args.rows, args.threads, "bench-rollout-")
    with tool_server_process(work / "corpus", args.latency_ms / 1000, prompts.READ_BUDGET_CHARS, args.threads) as url:
        model_dir = ensure_model(args.model, work, url)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        trainer = make_trl_trainer(
            model, tokenizer, trl_tools(url), settings, args.rows * args.samples, args.samples, work / "trl",
            args.trl_defaults,
        )
        # Warm-up (first-call overheads), then alternate the loops so drift hits all alike.
        run_ours(model, tokenizer, rows[:2], url, settings, 2)
        run_trl(trainer, rows[:2], prompts.SYSTEM_PROMPT, 2)
        ours, plain, trl = [], [], []
        for repeat in range(args.repeats):
            seeded = settings.model_copy(update={"seed": repeat})
            ours.append(run_ours(model, tokenizer, rows, url, seeded, args.samples, args.phases))
            plain.append(run_ours(model, tokenizer, rows, url, seeded, args.samples, lean=False))
            trl.append(run_trl(trainer, rows, prompts.SYSTEM_PROMPT, args.samples))
    report(ours, plain, trl, args)


def report(ours: list[dict[str, float]], plain: list[dict[str, float]], trl: list[dict[str, float]],
           args: argparse.Namespace) -> None:
    def row(name: str, runs: list[dict[str, float]]) -> tuple[str, float, float, float, float, float]:
        wall = statistics.median(r["wall"] for r in runs)
        n = runs[0]["trajectories"]
        generated = statistics.mean(r["generated"] for r in runs)
        calls = statistics.mean(r["tool_calls"] for r in runs) / n
        return name, wall, n / wall, generated / wall, calls, generated / n

    lines = [row("TRL GRPOTrainer(tools=…)", trl), row("agentrft run_rollouts", ours),
             row("agentrft, every token through model.forward (lean_decoding=False)", plain)]
    print(
        f"\n{args.rows} rows × {args.samples} samples = {args.rows * args.samples} trajectories, "
        f"{args.latency_ms:g} ms per tool call, {args.threads} CPU threads, median of {args.repeats}"
        + (", TRL with GRPOConfig defaults" if args.trl_defaults else ", TRL with KV cache on")
    )
    print("| loop | wall s | trajectories/s | generated tokens/s | tool calls/trajectory | generated tokens/trajectory |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, wall, tps, gps, calls, gen in lines:
        print(f"| {name} | {wall:.2f} | {tps:.2f} | {gps:.0f} | {calls:.2f} | {gen:.0f} |")
    for n, run in enumerate(ours):
        if "phases" in run:
            ph = run["phases"]
            print(f"agentrft run {n}: wall {run['wall']:.2f} s = generation {run['wall'] - ph['outside_generation_s']:.2f} s "
                  f"(prefill {ph.get('prefill_s', 0):.2f} s in {ph.get('prefill_passes', 0)} passes, "
                  f"{ph.get('prefill_real_tokens', 0)} of {ph.get('prefill_tokens', 0)} tokens real; "
                  f"decode {ph.get('decode_s', 0):.2f} s in {ph.get('decode_passes', 0)} passes) "
                  f"+ {ph['outside_generation_s']:.2f} s outside generation (tool calls still out, bookkeeping)")
    speedup = lines[0][1] / lines[1][1]
    print(f"rollout phase speed-up (TRL wall / agentrft wall): {speedup:.1f}×; "
          f"the lean decoding step's share: {lines[2][1] / lines[1][1]:.2f}× (lean_decoding=False wall / agentrft wall)")
    print(json.dumps({"ours": ours, "ours_lean_decoding_off": plain, "trl": trl}))


if __name__ == "__main__":
    main()
