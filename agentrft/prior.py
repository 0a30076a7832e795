"""Step 1, the prior check: can the base model sometimes succeed? If never, RFT has nothing to climb.

Each row is rolled out N times (5 by default) through the same agent loop and tools that training
uses, at the training temperature, and graded with the training grader. A rollout *succeeds* when its
reward reaches ``success_threshold`` (1.0 by default: the numeric grader's full credit, so its 0.5
for a rounded figure is not a success). Rows are bucketed by success rate:

- ``never`` (0 successes): no signal, every rollout in the group gets the same reward;
- ``sometimes`` (0 < rate < 1): the signal band, where GRPO's group-relative advantage is non-zero;
- ``always`` (every rollout succeeds): nothing left to learn.

The tutorial's rule of thumb: at least 15–30% of rows in the signal band. Below it, the verdict is
"fix the prior first" (mostly never: warm-start, better prompt or tools) or "already solved" (mostly
always: harder rows). Rollouts a grader could not grade (reward None) are left out of the rates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .schema import Grade, PriorResult, Row, Trajectory

Bucket = Literal["never", "sometimes", "always"]
Verdict = Literal["go", "fix the prior first", "already solved"]

SIGNAL_BAND_RULE = (0.15, 0.30)
"""The tutorial's rule of thumb for the share of rows in the signal band."""


def bucket_of(successes: int, rollouts: int) -> Bucket:
    if rollouts == 0 or successes == 0:
        return "never"
    return "always" if successes == rollouts else "sometimes"


def summarise_row(
    row: Row, trajectories: Sequence[Trajectory], grades: Sequence[Grade], success_threshold: float = 1.0
) -> PriorResult:
    """One row's success rate over its rollouts (ungraded rollouts left out)."""
    rewards = [g.reward for g in grades if g.reward is not None]
    successes = sum(1 for r in rewards if r >= success_threshold)
    n = len(rewards)
    return PriorResult(
        id=row.id,
        rollouts=n,
        successes=successes,
        rate=successes / n if n else 0.0,
        bucket=bucket_of(successes, n),
        mean_reward=sum(rewards) / n if n else 0.0,
        mean_tool_calls=sum(t.n_tool_calls for t in trajectories) / len(trajectories) if trajectories else 0.0,
    )


@dataclass
class PriorSummary:
    """The prior check's outcome: per-row results, bucket counts and the verdict."""

    results: list[PriorResult]
    counts: Counter[str]
    verdict: Verdict
    ungraded: int = 0

    @property
    def signal_share(self) -> float:
        return self.counts["sometimes"] / len(self.results) if self.results else 0.0

    def band_line(self) -> str:
        """``19/50 (38%) of rows are in the signal band — well over the 15–30% rule of thumb.``"""
        n, k = len(self.results), self.counts["sometimes"]
        low, high = SIGNAL_BAND_RULE
        share = self.signal_share
        if share > high:
            where = "well over"
        elif share >= low:
            where = "within"
        else:
            where = "below"
        return f"{k}/{n} ({share:.0%}) of rows are in the signal band — {where} the {low:.0%}–{high:.0%} rule of thumb."

    def advice(self) -> str:
        if self.verdict == "go":
            return "RFT has something to learn here. Move on."
        if self.verdict == "already solved":
            return "The base model already solves most rows: use harder rows (or skip RFT)."
        return (
            "The base model rarely succeeds, so most groups give RFT no signal: warm-start it "
            "(agentrft sft), improve the prompt or tools, or use easier rows."
        )


def decide(counts: Counter[str], n_rows: int) -> Verdict:
    """go when the signal band reaches the rule of thumb's floor; otherwise name what to fix."""
    if n_rows and counts["sometimes"] / n_rows >= SIGNAL_BAND_RULE[0]:
        return "go"
    return "already solved" if counts["always"] > counts["never"] else "fix the prior first"


def summarise(
    rows: Sequence[Row],
    trajectories: Sequence[Trajectory],
    grades: Sequence[Grade],
    success_threshold: float = 1.0,
) -> PriorSummary:
    """Group trajectories (any order) by row, compute each row's rate, bucket and decide."""
    by_row: dict[str, list[tuple[Trajectory, Grade]]] = {row.id: [] for row in rows}
    for trajectory, grade in zip(trajectories, grades, strict=True):
        by_row[trajectory.row_id].append((trajectory, grade))
    results = []
    for row in rows:
        pairs = by_row[row.id]
        results.append(summarise_row(row, [t for t, _ in pairs], [g for _, g in pairs], success_threshold))
    counts = Counter(r.bucket for r in results)
    ungraded = sum(1 for g in grades if g.reward is None)
    return PriorSummary(results, counts, decide(counts, len(results)), ungraded)


def prior_check(
    rows: Sequence[Row],
    policy: Any,
    grader: Any,
    tools_url: str,
    token: str | None,
    settings: Any,
    rollouts: int = 5,
    success_threshold: float = 1.0,
    progress: Callable[[int], None] | None = None,
    rows_per_batch: int | None = None,
) -> tuple[PriorSummary, list[Trajectory]]:
    """Roll out each row ``rollouts`` times, grade, and summarise. Returns the summary and the traces.

    Rows go through the loop in batches (about 64 rollouts each) so progress shows early and memory
    stays bounded; every rollout of a row is in the same batch.
    """
    from .agent.loop import run_rollouts, run_sync
    from .graders import grade_all
    from .tools.client import ToolClient

    per_batch = rows_per_batch or max(1, 64 // max(1, rollouts))
    trajectories: list[Trajectory] = []
    grades: list[Grade] = []

    async def run() -> None:
        async with ToolClient(tools_url, token=token) as client:
            await client.specs()  # fail before the first rollout if the server is down or refuses the token
            for start in range(0, len(rows), per_batch):
                batch = list(rows[start : start + per_batch])
                done = await run_rollouts(batch, policy, client, settings, rollouts, progress)
                by_id = {row.id: row for row in batch}
                grades.extend(grade_all(grader, [by_id[t.row_id] for t in done], done))
                trajectories.extend(done)

    run_sync(run())
    return summarise(rows, trajectories, grades, success_threshold), trajectories


__all__ = [
    "SIGNAL_BAND_RULE",
    "PriorSummary",
    "bucket_of",
    "decide",
    "prior_check",
    "summarise",
    "summarise_row",
]
