"""A train/val split stratified by task type × difficulty.

Each stratum is shuffled with its own seeded stream and gives ``round(n × val_frac)`` rows to val,
so every stratum's val share is within half a row of the target — val is never accidentally easier
than train. Row ids and row order within each side are kept.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UserError
from ..schema import Row

Stratum = tuple[str, str]


@dataclass(frozen=True)
class SplitResult:
    train: list[Row]
    val: list[Row]
    counts: dict[Stratum, tuple[int, int]]  # stratum → (train, val)


def check_val_frac(val_frac: float) -> None:
    if not 0 < val_frac <= 0.5:
        raise UserError(f"--val-frac must be in (0, 0.5], got {val_frac}: a larger val set starves training")


def stratum_of(row: Row) -> Stratum:
    return (row.metadata.task_type, row.metadata.difficulty)


def stratified_split(rows: Sequence[Row], val_frac: float = 0.2, seed: int = 0) -> SplitResult:
    """Split ``rows``; deterministic for a given seed and row order."""
    check_val_frac(val_frac)
    members: dict[Stratum, list[int]] = {}
    for index, row in enumerate(rows):
        members.setdefault(stratum_of(row), []).append(index)
    val_indices: set[int] = set()
    counts: dict[Stratum, tuple[int, int]] = {}
    for stratum in sorted(members):
        indices = list(members[stratum])
        random.Random(f"agentrft-split:{seed}:{stratum[0]}:{stratum[1]}").shuffle(indices)
        n_val = int(len(indices) * val_frac + 0.5)  # round half up, unlike round()'s banker's rule
        val_indices.update(indices[:n_val])
        counts[stratum] = (len(indices) - n_val, n_val)
    train = [row for i, row in enumerate(rows) if i not in val_indices]
    val = [row for i, row in enumerate(rows) if i in val_indices]
    return SplitResult(train=train, val=val, counts=counts)
