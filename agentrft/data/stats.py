"""``agentrft data stats``: the distributions of a dataset, per file and overall."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..jsonl import read_models
from ..schema import Row
from .split import Stratum


def _count(rows: list[Row], key: str) -> Counter[str]:
    if key in ("task_type", "difficulty"):
        return Counter(getattr(r.metadata, key) for r in rows)
    return Counter(str((r.metadata.model_extra or {}).get(key, "-")) for r in rows)


def stats_table(title: str, rows: list[Row], key_a: str, key_b: str) -> Table:
    """A cross-tab of two metadata keys, with totals."""
    a_values = sorted(_count(rows, key_a))
    b_values = sorted(_count(rows, key_b))
    table = Table(title=title)
    table.add_column(key_a)
    for b in b_values:
        table.add_column(b, justify="right")
    table.add_column("total", justify="right")
    for a in a_values:
        picked = [r for r in rows if _count([r], key_a)[a]]
        per_b = _count(picked, key_b)
        table.add_row(a, *[str(per_b[b]) for b in b_values], str(len(picked)))
    totals = _count(rows, key_b)
    table.add_row("total", *[str(totals[b]) for b in b_values], str(len(rows)), style="bold")
    return table


def strata_table(counts: dict[Stratum, tuple[int, int]]) -> Table:
    """Rows per stratum (task type × difficulty) on each side of a split, and the val share."""
    table = Table(title="Split per stratum (task type × difficulty)")
    for name in ("task_type", "difficulty", "train", "val", "val share"):
        table.add_column(name, justify="left" if name in ("task_type", "difficulty") else "right")
    for (task, difficulty), (n_train, n_val) in sorted(counts.items()):
        share = n_val / max(n_train + n_val, 1)
        table.add_row(task, difficulty, str(n_train), str(n_val), f"{share:.0%}")
    total_train = sum(t for t, _ in counts.values())
    total_val = sum(v for _, v in counts.values())
    table.add_row("total", "", str(total_train), str(total_val), "", style="bold")
    return table


def print_stats(paths: list[Path], console: Console) -> None:
    everything: list[Row] = []
    for path in paths:
        rows = read_models(path, Row)
        everything.extend(rows)
        tools = Counter(name for r in rows for name in r.tool_names())
        with_ref = sum(1 for r in rows if r.expected.evidence_path)
        mean_len = sum(len(r.prompt) for r in rows) / max(len(rows), 1)
        console.print(
            f"{path}: {len(rows)} rows, mean prompt {mean_len:.0f} chars, "
            f"{with_ref} with an evidence path, tools {dict(sorted(tools.items()))}"
        )
    title = "all files" if len(paths) > 1 else str(paths[0])
    console.print(stats_table(f"Task type × difficulty ({title})", everything, "task_type", "difficulty"))
    console.print(f"Difficulty distribution: {dict(Counter(r.metadata.difficulty for r in everything))}")
    console.print(f"Task types: {dict(Counter(r.metadata.task_type for r in everything))}")
    sources = _count(everything, "source")
    if set(sources) != {"-"}:
        console.print(f"Sources: {dict(sources)}")
