"""Step 7: base vs tuned on the held-out set, per row, with the views the aggregate number hides.

Beyond the tutorial's five lines this adds a paired-bootstrap interval for the mean Δreward, splits
the unchanged rows into already solved / still unsolved / partial, slices the diffs by metadata,
and names rows found in one file only or left ungraded — they are reported, never dropped.

With several samples per row a row's mean moves by chance alone, so a model compared with itself
already has rows "regressed" (``bench/RESULTS.md`` counts them). Where both runs sampled every row at least
twice, the improved and regressed rows are also counted beyond sampling noise: those whose own samples
would show a shift this large in fewer than ``ALPHA`` of the ways of relabelling them (an exact
one-sided permutation test per row). Under no change that count is at most ``ALPHA`` of the rows in
expectation; with 4 samples a side a row passes only when almost every tuned sample falls on one side
of almost every base sample. The plain counts stay the headline; this one says how many of them the
samples can tell from chance.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UserError
from ..schema import Row
from .records import EvalRun, RowResult

BUCKETS = ("regressed", "improved", "solved", "unsolved", "partial")
# Rewards are means over samples, so "unchanged" means equal up to float noise, not bit-equal.
EPS = 1e-9
RECORD_KEYS = ("task_type", "difficulty")
ALPHA = 0.05
"""A row's shift counts as beyond sampling noise when its one-sided permutation p-value is below this."""
EXACT_LIMIT = 20_000
"""Relabellings enumerated exactly up to this many (8 + 8 samples: 12,870); beyond it a seeded random draw."""


def shift_p_value(base: Sequence[float], tuned: Sequence[float], lower: bool, seed: int = 0) -> float:
    """One-sided permutation p-value: how often relabelling the pooled samples gives the tuned side a sum
    at least as far below (``lower``) or above its observed sum. 1.0 when either side has fewer than 2."""
    if len(base) < 2 or len(tuned) < 2:
        return 1.0
    pooled = [*base, *tuned]
    k, observed = len(tuned), sum(tuned)

    def extreme(total: float) -> bool:
        return total <= observed + EPS if lower else total >= observed - EPS

    if math.comb(len(pooled), k) <= EXACT_LIMIT:
        sums = [sum(pooled[i] for i in chosen) for chosen in itertools.combinations(range(len(pooled)), k)]
        return sum(1 for total in sums if extreme(total)) / len(sums)
    rng = np.random.default_rng(seed)
    values = np.asarray(pooled, dtype=float)
    draws = np.array([values[rng.permutation(len(values))[:k]].sum() for _ in range(EXACT_LIMIT)])
    hits = int(np.sum(draws <= observed + EPS) if lower else np.sum(draws >= observed - EPS))
    return (hits + 1) / (EXACT_LIMIT + 1)


def _rewards(result: RowResult) -> list[float]:
    """A row's graded samples' rewards."""
    return [r.reward for r in result.records if r.reward is not None]


def success_rate(result: RowResult, threshold: float) -> float:
    """Share of a row's graded samples whose reward reaches ``threshold``."""
    rewards = _rewards(result)
    return sum(1 for r in rewards if r >= threshold) / len(rewards) if rewards else 0.0


@dataclass(frozen=True)
class RowDiff:
    """One row in both runs: tuned minus base."""

    id: str
    base: RowResult
    tuned: RowResult

    @property
    def d_reward(self) -> float:
        assert self.base.reward is not None and self.tuned.reward is not None
        return self.tuned.reward - self.base.reward

    @property
    def d_tools(self) -> float:
        return self.tuned.tool_calls - self.base.tool_calls

    def beyond_noise(self) -> bool:
        """Whether this row's shift is one its samples tell from chance (``ALPHA``, ``shift_p_value``)."""
        if self.bucket not in ("improved", "regressed"):
            return False
        lower = self.bucket == "regressed"
        return shift_p_value(_rewards(self.base), _rewards(self.tuned), lower) < ALPHA

    def fewer_successes(self, threshold: float) -> bool:
        """Whether the tuned model reaches ``threshold`` on a smaller share of this row's graded samples."""
        return success_rate(self.tuned, threshold) < success_rate(self.base, threshold) - EPS

    @property
    def bucket(self) -> str:
        """improved, regressed, or for unchanged rows: solved, unsolved or partial."""
        if self.d_reward > EPS:
            return "improved"
        if self.d_reward < -EPS:
            return "regressed"
        reward = self.base.reward or 0.0
        if reward >= 1.0 - EPS:
            return "solved"
        if reward <= EPS:
            return "unsolved"
        return "partial"


@dataclass(frozen=True)
class SliceStats:
    """The diffs of the rows sharing one value of a metadata key."""

    key: str
    value: str
    n: int
    base: float
    tuned: float
    improved: int
    regressed: int

    @property
    def delta(self) -> float:
        return self.tuned - self.base

    @property
    def went_down(self) -> bool:
        return self.delta < -EPS


@dataclass
class Comparison:
    """Everything ``agentrft compare`` prints; ``to_dict`` is its ``--json`` form."""

    base_path: str
    tuned_path: str
    diffs: list[RowDiff]
    only_base: list[str]
    only_tuned: list[str]
    ungraded: list[str]
    ci_low: float
    ci_high: float
    resamples: int
    seed: int
    slices: dict[str, list[SliceStats]] = field(default_factory=dict)
    threshold: float | None = None
    """The success line (``--threshold``): a regression is then also told apart by whether the row reached it
    less often, or only lost part of a reward that pays for more than success (a grader's partial credit)."""

    @property
    def fewer_successes(self) -> int | None:
        """Regressed rows that reach ``threshold`` less often; None without a threshold."""
        if self.threshold is None:
            return None
        return sum(1 for d in self.regressions() if d.fewer_successes(self.threshold))

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean_d_reward(self) -> float:
        return sum(d.d_reward for d in self.diffs) / self.n

    @property
    def mean_d_tools(self) -> float:
        return sum(d.d_tools for d in self.diffs) / self.n

    def count(self, *buckets: str) -> int:
        return sum(1 for d in self.diffs if d.bucket in buckets)

    @property
    def sampled(self) -> bool:
        """Whether both runs graded every compared row at least twice (the noise count needs it)."""
        return all(len(_rewards(d.base)) >= 2 and len(_rewards(d.tuned)) >= 2 for d in self.diffs)

    def beyond_noise(self, bucket: str) -> int | None:
        """Rows of ``bucket`` (improved or regressed) whose shift is beyond sampling noise; None unless sampled."""
        if not self.sampled:
            return None
        return sum(1 for d in self.diffs if d.bucket == bucket and d.beyond_noise())

    def regressions(self) -> list[RowDiff]:
        """Regressed rows, worst first (ties by id so the order is stable)."""
        return self.in_bucket("regressed")

    def in_bucket(self, bucket: str) -> list[RowDiff]:
        """The rows of one bucket, the largest change first (ties by id so the order is stable)."""
        rows = [d for d in self.diffs if d.bucket == bucket]
        return sorted(rows, key=lambda d: (-abs(d.d_reward), d.id))

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base_path,
            "tuned": self.tuned_path,
            "n": self.n,
            "mean_d_reward": self.mean_d_reward,
            "mean_d_tools": self.mean_d_tools,
            "ci95_d_reward": [self.ci_low, self.ci_high],
            "bootstrap": {"resamples": self.resamples, "seed": self.seed},
            "improved": self.count("improved"),
            "regressed": self.count("regressed"),
            "threshold": self.threshold,
            "regressed_fewer_successes": self.fewer_successes,
            "beyond_noise": {"alpha": ALPHA, "improved": self.beyond_noise("improved"),
                             "regressed": self.beyond_noise("regressed")},
            "unchanged": self.count("solved", "unsolved", "partial"),
            "unchanged_split": {b: self.count(b) for b in ("solved", "unsolved", "partial")},
            "only_in_base": self.only_base,
            "only_in_tuned": self.only_tuned,
            "ungraded": self.ungraded,
            "slices": {
                key: [
                    {
                        "value": s.value, "n": s.n, "base": s.base, "tuned": s.tuned,
                        "delta": s.delta, "improved": s.improved, "regressed": s.regressed,
                        "went_down": s.went_down,
                    }
                    for s in stats
                ]
                for key, stats in self.slices.items()
            },
            "rows": [
                {
                    "id": d.id, "base": d.base.reward, "tuned": d.tuned.reward,
                    "d_reward": d.d_reward, "d_tools": d.d_tools, "bucket": d.bucket,
                }
                for d in self.diffs
            ],
        }


def bootstrap_ci(
    diffs: Sequence[float], resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean of ``diffs`` under resampling rows with replacement.

    Resampling the per-row differences (not each run on its own) keeps the pairing: a row that is
    hard for both models moves both means together and must not widen the interval.
    """
    values = np.asarray(diffs, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(1, len(values)))  # bound memory on large eval sets
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[idx].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def slice_value(diff: RowDiff, key: str, rows: dict[str, Row] | None) -> str:
    """A row's value for a slicing key: from the record, or from the dataset row's metadata."""
    if key in RECORD_KEYS:
        return str(getattr(diff.tuned, key))
    if rows is None:
        raise UserError(
            f"--by {key}: evaluation records carry only task_type and difficulty; "
            "pass --rows VAL.jsonl to slice by other metadata keys"
        )
    row = rows.get(diff.id)
    meta = row.metadata.model_dump() if row is not None else {}
    return str(meta.get(key, "unknown"))


def slice_diffs(diffs: list[RowDiff], key: str, rows: dict[str, Row] | None = None) -> list[SliceStats]:
    """Group the diffs by one key, in order of the slice's size (largest first), then name."""
    groups: dict[str, list[RowDiff]] = {}
    for diff in diffs:
        groups.setdefault(slice_value(diff, key, rows), []).append(diff)
    stats = [
        SliceStats(
            key=key,
            value=value,
            n=len(group),
            base=sum(d.base.reward or 0.0 for d in group) / len(group),
            tuned=sum(d.tuned.reward or 0.0 for d in group) / len(group),
            improved=sum(1 for d in group if d.bucket == "improved"),
            regressed=sum(1 for d in group if d.bucket == "regressed"),
        )
        for value, group in groups.items()
    ]
    return sorted(stats, key=lambda s: (-s.n, s.value))


def compare_runs(
    base: EvalRun,
    tuned: EvalRun,
    by: Sequence[str] = (),
    rows: dict[str, Row] | None = None,
    resamples: int = 10_000,
    seed: int = 0,
    threshold: float | None = None,
) -> Comparison:
    """Pair two evaluation runs by row id and compute the comparison (``threshold``: the success line)."""
    only_base = [rid for rid in base.rows if rid not in tuned.rows]
    only_tuned = [rid for rid in tuned.rows if rid not in base.rows]
    diffs: list[RowDiff] = []
    ungraded: list[str] = []
    for rid, b in base.rows.items():
        t = tuned.rows.get(rid)
        if t is None:
            continue
        if b.reward is None or t.reward is None:
            ungraded.append(rid)
            continue
        diffs.append(RowDiff(id=rid, base=b, tuned=t))
    if not diffs:
        raise UserError(
            f"{base.path} and {tuned.path} share no graded row id; "
            "are they evaluations of the same dataset?"
        )
    low, high = bootstrap_ci([d.d_reward for d in diffs], resamples=resamples, seed=seed)
    comparison = Comparison(
        base_path=str(base.path), tuned_path=str(tuned.path), diffs=diffs,
        only_base=only_base, only_tuned=only_tuned, ungraded=ungraded,
        ci_low=low, ci_high=high, resamples=resamples, seed=seed, threshold=threshold,
    )
    comparison.slices = {key: slice_diffs(diffs, key, rows) for key in by}
    return comparison


def _ids(ids: list[str], limit: int = 8) -> str:
    shown = ", ".join(ids[:limit])
    return f" ({shown}{', …' if len(ids) > limit else ''})" if ids else ""


def format_slices(stats: list[SliceStats]) -> list[str]:
    """A plain-text table; a slice whose mean reward went down is flagged."""
    key = stats[0].key if stats else ""
    width = max([len(key) + 3] + [len(s.value) for s in stats]) + 2
    lines = [f"{'by ' + key:<{width}}{'n':>5}{'base':>8}{'tuned':>8}{'Δ':>8}{'improved':>10}{'regressed':>11}"]
    for s in stats:
        flag = "  ▼ mean down" if s.went_down else ""
        lines.append(
            f"{s.value:<{width}}{s.n:>5}{s.base:>8.3f}{s.tuned:>8.3f}{s.delta:>+8.3f}"
            f"{s.improved:>10}{s.regressed:>11}{flag}"
        )
    return lines


def format_comparison(c: Comparison) -> str:
    """The tutorial's five lines, then the interval, the unchanged split, gaps and slices."""
    n = c.n
    noise = f"  beyond sampling noise: {{}} (per-row permutation test, p < {ALPHA:g})"
    lines = [
        f"mean Δreward: {c.mean_d_reward:+.3f}",
        f"mean Δtools:  {c.mean_d_tools:+.2f}",
        f"improved:  {c.count('improved')}/{n}",
        *([] if not c.sampled else [noise.format(c.beyond_noise("improved"))]),
        f"regressed: {c.count('regressed')}/{n}",
        *([] if c.threshold is None else [
            f"  reaching {c.threshold:g} less often: {c.fewer_successes}",
            f"  only partial credit lost:  {c.count('regressed') - (c.fewer_successes or 0)}",
        ]),
        *([] if not c.sampled else [noise.format(c.beyond_noise("regressed"))]),
        f"unchanged: {c.count('solved', 'unsolved', 'partial')}/{n}",
        f"  already solved: {c.count('solved')}",
        f"  still unsolved: {c.count('unsolved')}",
        f"  partial:        {c.count('partial')}",
        f"95% CI of mean Δreward: [{c.ci_low:+.3f}, {c.ci_high:+.3f}] "
        f"(paired bootstrap, {c.resamples} resamples, seed {c.seed})",
    ]
    if c.only_base:
        lines.append(f"only in base:  {len(c.only_base)}{_ids(c.only_base)}")
    if c.only_tuned:
        lines.append(f"only in tuned: {len(c.only_tuned)}{_ids(c.only_tuned)}")
    if c.ungraded:
        lines.append(f"no grade in base or tuned: {len(c.ungraded)}{_ids(c.ungraded)}")
    for stats in c.slices.values():
        lines.append("")
        lines.extend(format_slices(stats))
    return "\n".join(lines)
