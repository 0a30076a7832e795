"""The report's plots: matplotlib figures rendered to inline SVG strings.

Inline SVG keeps report.html a single file that opens from disk with no network, and stays sharp
when zoomed. Several SVGs share one HTML document, so each figure gets its own ``svg.hashsalt``:
matplotlib names clip paths by a salted hash, and equal names would make one plot clip another.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .compare import SliceStats

# Learning curves in the order the tutorial's training printout lists them, with readable titles.
# Each names the metrics.jsonl keys that may hold it, first found wins (``reward`` is an older
# name of ``train_reward``).
CURVES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("val_reward",), "val reward", "reward"),
    (("tool_calls",), "tool calls per rollout", "calls"),
    (("kl_to_ref",), "KL to the reference", "KL"),
    (("loss",), "loss", "loss"),
    (("train_reward", "reward"), "train reward", "reward"),
)
REQUIRED_CURVES = ("val_reward", "tool_calls", "kl_to_ref", "loss")
_NO_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}
BASE_COLOR, TUNED_COLOR, LINE_COLOR = "#9aa5b1", "#2f6fdf", "#2f6fdf"


@dataclass(frozen=True)
class Curve:
    """One metric over training steps (points without a value are left out)."""

    key: str
    title: str
    ylabel: str
    steps: list[float]
    values: list[float]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def curves_from_metrics(metrics: Sequence[dict]) -> tuple[list[Curve], list[str]]:
    """The curves present in ``metrics`` rows, and the names of the expected ones that had no data."""
    curves, missing = [], []
    for keys, title, ylabel in CURVES:
        key = next((k for k in keys if any(_number(row.get(k)) is not None for row in metrics)), keys[0])
        steps, values = [], []
        for index, row in enumerate(metrics):
            value = _number(row.get(key))
            if value is None:
                continue
            step = _number(row.get("step"))
            steps.append(step if step is not None else float(index))
            values.append(value)
        if values:
            curves.append(Curve(key, title, ylabel, steps, values))
        elif key in REQUIRED_CURVES:
            missing.append(key)
    return curves, missing


SLICE_WINDOW = 5
"""Steps in the running mean of a slice's training reward: one step holds a handful of its groups."""


def slice_curves(series: dict[str, tuple[list[float], list[float]]]) -> list[Curve]:
    """One curve per slice of ``train.metrics.slice_series``: the running mean of its last ``SLICE_WINDOW``
    values, at the steps the slice was trained in."""
    curves = []
    for name, (steps, values) in series.items():
        windows = [values[max(0, i + 1 - SLICE_WINDOW): i + 1] for i in range(len(values))]
        running = [sum(window) / len(window) for window in windows]
        curves.append(Curve(f"train_reward_by_slice.{name}", f"train reward, {name} ({SLICE_WINDOW}-step mean)",
                            "reward", steps, running))
    return curves


def _plain(text: str) -> str:
    # A "$" would switch matplotlib to mathtext ("$842M" is a price, not an equation).
    return text.replace("$", r"\$")


def _svg(fig: object, salt: str) -> str:
    import matplotlib
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none"}):
        # No metadata block: it stamps a date (the page would differ on every run) and names URLs.
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata=_NO_METADATA)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    text = buffer.getvalue()
    # Drop the XML prolog and DOCTYPE: inside HTML they are noise, and the DOCTYPE names a URL.
    return text[text.index("<svg"):]


def _figure(width: float, height: float) -> tuple[object, object]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=96)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, alpha=0.3)
    return fig, ax


def curve_svg(curve: Curve) -> str:
    """A small line chart of one metric against the training step."""
    fig, ax = _figure(4.2, 2.6)
    ax.plot(curve.steps, curve.values, color=LINE_COLOR, marker="o" if len(curve.values) < 40 else None, markersize=3)
    ax.set_title(_plain(curve.title), fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(_plain(curve.ylabel))
    return _svg(fig, f"agentrft-curve-{curve.key}")


def slice_bars_svg(stats: Sequence[SliceStats]) -> str:
    """Grouped bars of base vs tuned mean reward per slice; a slice that went down is marked ▼."""
    fig, ax = _figure(max(3.5, 0.9 * len(stats) + 1.5), 2.6)
    xs = range(len(stats))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], [s.base for s in stats], width, label="base", color=BASE_COLOR)
    ax.bar([x + width / 2 for x in xs], [s.tuned for s in stats], width, label="tuned", color=TUNED_COLOR)
    labels = [_plain(s.value) + (" ▼" if s.went_down else "") + f"\n(n={s.n})" for s in stats]
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean reward")
    key = stats[0].key if stats else ""
    ax.set_title(_plain(f"reward by {key}"), fontsize=11)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    safe_key = re.sub(r"[^A-Za-z0-9_-]", "_", key)
    return _svg(fig, f"agentrft-slices-{safe_key}")
