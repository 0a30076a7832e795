"""Measure a (warm-started) tiny model: success, prior-check buckets and strategy shares.

Runs the product's own rollout engine (``agentrft.agent.loop.rollout``) with the budgets of
``prompts.py`` and grades with the running example's default grader, so the numbers are the ones
the prior check and evaluation steps will see. ``python -m agentrft.filings.model.measure MODEL ROWS URL``
prints them; the warm-start report quotes them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...agent.loop import rollout
from ...agent.settings import RolloutSettings
from ...graders import default_grader, grade_all
from ...jsonl import read_models
from ...prior import summarise
from ...schema import Row, Trajectory
from ...tools.client import read_token
from .prompts import MAX_NEW_TOKENS, MAX_TOOL_CALLS, MAX_TRAJECTORY_TOKENS, SYSTEM_PROMPT, TEMPERATURE
from .scripted import classify_strategy, trajectory_calls

STRATEGIES = ("good", "hasty", "wandering", "no_answer")


@dataclass
class Measurement:
    rows: int
    samples_per_row: int
    temperature: float
    success: float
    """Mean success over every rollout (a rollout succeeds when the grader gives it 1.0)."""
    buckets: dict[str, int]
    """Rows that never / sometimes / always succeeded over their samples (the prior check)."""
    strategies: dict[str, float]
    """Share of rollouts per strategy (good / hasty / wandering / no_answer)."""
    success_by_task: dict[str, float]
    seconds: float


def rollout_settings(temperature: float, seed: int) -> RolloutSettings:
    """The budgets and system prompt the tiny model was built for, at ``temperature``."""
    return RolloutSettings(
        max_tool_calls=MAX_TOOL_CALLS,
        max_trajectory_tokens=MAX_TRAJECTORY_TOKENS,
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=temperature,
        seed=seed,
        system_prompt=SYSTEM_PROMPT,
    )


def measure(
    policy: Any, rows: list[Row], tools_url: str, token: str | None, temperature: float = TEMPERATURE,
    samples_per_row: int = 1, seed: int = 0,
) -> Measurement:
    """Roll out ``policy`` on ``rows`` and summarise (greedy when ``temperature`` is 0)."""
    start = time.perf_counter()
    trajectories = rollout(rows, policy, tools_url, token, rollout_settings(temperature, seed),
                           samples_per_row=samples_per_row)
    by_id = {row.id: row for row in rows}
    traj_rows = [by_id[t.row_id] for t in trajectories]
    grades = grade_all(default_grader(), traj_rows, trajectories)
    summary = summarise(rows, trajectories, grades)  # the prior check's buckets, success = full reward
    task_wins: dict[str, list[int]] = {}
    for row, grade in zip(traj_rows, grades):
        task_wins.setdefault(row.metadata.task_type, []).append(int((grade.reward or 0.0) >= 1.0))
    total = max(len(trajectories), 1)
    return Measurement(
        rows=len(rows),
        samples_per_row=samples_per_row,
        temperature=temperature,
        success=round(sum(r.successes for r in summary.results) / total, 3),
        buckets={k: summary.counts.get(k, 0) for k in ("never", "sometimes", "always")},
        strategies=strategy_shares(rows, trajectories),
        success_by_task={k: round(sum(v) / len(v), 3) for k, v in sorted(task_wins.items())},
        seconds=round(time.perf_counter() - start, 1),
    )


def strategy_shares(rows: list[Row], trajectories: list[Trajectory]) -> dict[str, float]:
    """Share of ``trajectories`` per strategy (good / hasty / wandering / no_answer), as the scripted
    demonstrations define them; every strategy appears, 0.0 where none followed it."""
    by_id = {row.id: row for row in rows}
    counts: Counter[str] = Counter({name: 0 for name in STRATEGIES})
    for traj in trajectories:
        answered = traj.stop_reason == "answer" and bool(traj.output_text.strip())
        counts[classify_strategy(trajectory_calls(traj), by_id[traj.row_id], answered)] += 1
    total = max(len(trajectories), 1)
    return {name: round(counts[name] / total, 3) for name in STRATEGIES}


def strategy_line(before: dict[str, float], after: dict[str, float]) -> str:
    """``  good 0% → 61% · hasty 27% → 6% · …`` for two strategy-share tables."""
    return "  " + " · ".join(f"{name} {before.get(name, 0):.0%} → {after.get(name, 0):.0%}" for name in after)


def measure_strategies(model_dir: Path, rows: list[Row], tools_url: str, token: str | None, samples: int,
                       seed: int = 0) -> dict[str, float]:
    """Strategy shares of ``samples`` rollouts per row of the model in ``model_dir``, at the training temperature."""
    from ...agent.local import LocalPolicy  # torch
    trajectories = rollout(rows, LocalPolicy.from_pretrained(model_dir), tools_url, token,
                           rollout_settings(TEMPERATURE, seed), samples_per_row=samples)
    return strategy_shares(rows, trajectories)


def main(argv: list[str] | None = None) -> None:
    from ...agent.local import LocalPolicy  # torch
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("rows")
    parser.add_argument("tools_url")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=TEMPERATURE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    rows = read_models(Path(args.rows), Row)[: args.limit]
    policy = LocalPolicy.from_pretrained(args.model)
    token = read_token()
    greedy = measure(policy, rows, args.tools_url, token, 0.0, 1, args.seed)
    sampled = measure(policy, rows, args.tools_url, token, args.temperature, args.samples, args.seed)
    print(json.dumps({"greedy": asdict(greedy), "sampled": asdict(sampled)}, indent=2))


if __name__ == "__main__":
    main()


__all__ = ["STRATEGIES", "Measurement", "measure", "measure_strategies", "rollout_settings", "strategy_line",
           "strategy_shares"]
