"""Step 8: ``report.html`` — one self-contained page a team can read to decide what to do next.

It reads only files: the run directory (``config.yaml``, ``metrics.jsonl``) and two evaluation
files (by default ``eval/base.jsonl`` and ``eval/tuned.jsonl`` in the run). The page embeds its
plots as inline SVG and its trace viewer as ``<details>`` elements: no script, no network, so it
opens from disk, from a CI artifact or from an email attachment alike. Whatever is missing (no
metrics yet, no evaluation) becomes a note on the page telling how to produce it, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import read_text, refuse_overwrite
from ..schema import MessageTurn, MetricsRow, Row, ToolCallTurn, ToolResultTurn, Trajectory
from ..train.metrics import METRICS_FILE, read_metric_lines, slice_series
from .compare import Comparison, RowDiff, compare_runs, format_comparison
from .inspect import call_text, format_delta_tools, prompt_of
from .plots import curve_svg, curves_from_metrics, slice_bars_svg, slice_curves
from .records import TraceStore, load_eval, load_rows

TEMPLATE = "report.html.jinja"
# Tool outputs are cut in the page: a read returns up to 8,000 characters and a val set has
# hundreds of calls; the first part is what a reader scans, and the traces file has the rest.
REPORT_OUTPUT_CHARS = 1500
SLICE_KEYS = ("task_type", "difficulty")


@dataclass
class RowView:
    """One paired row as the page shows it: a summary line and the turns of both traces."""

    id: str
    bucket: str
    d_reward: float
    d_tools: str
    base: float
    tuned: float
    task_type: str
    difficulty: str
    prompt: str
    reference: str
    base_answer: str
    tuned_answer: str
    base_reason: str
    tuned_reason: str
    tuned_turns: list[dict[str, Any]] = field(default_factory=list)
    base_turns: list[dict[str, Any]] = field(default_factory=list)
    tuned_note: str = ""
    base_note: str = ""
    samples: int = 1


def read_metrics(path: Path) -> tuple[list[MetricsRow], list[str]]:
    """The rows of metrics.jsonl, and a note for each line that is not one.

    A missing file, or a cut last line, is a run still starting or still writing: a note, not an
    error. A file that cannot be read at all (a directory, not UTF-8) is one.
    """
    rows, problems = read_metric_lines(path)
    return rows, [f"{path.name}:{number}: {why}; skipped" for number, why in problems]


def turn_views(trajectory: Trajectory) -> list[dict[str, Any]]:
    """Turns as plain dicts for the template: kind, a label, and the text to show."""
    views = []
    for turn in trajectory.turns:
        if isinstance(turn, MessageTurn):
            views.append({"kind": turn.role, "label": turn.role if turn.role != "assistant" else "model", "text": turn.content})
        elif isinstance(turn, ToolCallTurn):
            views.append({"kind": "call", "label": "→ call", "text": call_text(turn)})
        elif isinstance(turn, ToolResultTurn):
            output = turn.output
            if len(output) > REPORT_OUTPUT_CHARS:
                output = output[:REPORT_OUTPUT_CHARS] + f"\n… ({len(turn.output) - REPORT_OUTPUT_CHARS} more characters)"
            kind = "error" if turn.is_error else "result"
            views.append({"kind": kind, "label": f"← {turn.name}", "text": output})
    if trajectory.stop_reason != "answer":
        views.append({"kind": "stop", "label": "stopped", "text": trajectory.stop_reason})
    return views


def _row_view(diff: RowDiff, c: Comparison, rows: dict[str, Row] | None, store: TraceStore) -> RowView:
    tuned_rec, base_rec = diff.tuned.records[0], diff.base.records[0]
    tuned_trace = store.load(Path(c.tuned_path), tuned_rec)
    base_trace = store.load(Path(c.base_path), base_rec)
    row = rows.get(diff.id) if rows else None
    view = RowView(
        id=diff.id, bucket=diff.bucket, d_reward=diff.d_reward, d_tools=format_delta_tools(diff.d_tools),
        base=diff.base.reward or 0.0, tuned=diff.tuned.reward or 0.0,
        task_type=diff.tuned.task_type, difficulty=diff.tuned.difficulty,
        prompt=row.prompt if row else prompt_of(tuned_trace) or prompt_of(base_trace) or "",
        reference=row.reference_answer if row else "",
        base_answer=base_rec.answer, tuned_answer=tuned_rec.answer,
        base_reason=base_rec.reason, tuned_reason=tuned_rec.reason,
        samples=max(diff.tuned.samples, diff.base.samples),
    )
    for trace, side in ((tuned_trace, "tuned"), (base_trace, "base")):
        if isinstance(trace, Trajectory):
            setattr(view, f"{side}_turns", turn_views(trace))
        else:
            setattr(view, f"{side}_note", trace)
    return view


def _default_eval(run_dir: Path, given: Path | None, name: str) -> Path | None:
    if given is not None:
        if not given.exists():
            raise UserError(f"--{name} {given}: no such file")
        return given  # a directory or an unreadable file is the reader's one-line error
    candidate = run_dir / "eval" / f"{name}.jsonl"
    return candidate if candidate.is_file() else None


def _eval_pair(run_dir: Path, base: Path | None, tuned: Path | None) -> tuple[Path | None, Path | None]:
    """Both evaluation files, or neither; one given without the other is an error, not ignored."""
    base_path, tuned_path = _default_eval(run_dir, base, "base"), _default_eval(run_dir, tuned, "tuned")
    for given, found, other in ((base, tuned_path, "tuned"), (tuned, base_path, "base")):
        if given is not None and found is None:
            raise UserError(f"--{other}: not given and {run_dir / 'eval' / f'{other}.jsonl'} does not exist; "
                            f"pass --{other} to compare with {given}")  # fmt: skip
    return base_path, tuned_path


def build_context(
    run_dir: Path, base: Path | None = None, tuned: Path | None = None, rows: Path | None = None
) -> dict[str, Any]:
    """Everything the template shows, computed from the files."""
    metrics, metric_notes = read_metrics(run_dir / METRICS_FILE)
    curves, missing = curves_from_metrics([row.model_dump() for row in metrics])
    curves += slice_curves(slice_series(metrics))
    config_path = run_dir / "config.yaml"
    context: dict[str, Any] = {
        "title": run_dir.resolve().name,
        "run_dir": str(run_dir),
        "has_metrics": bool(metrics),
        "metric_steps": len(metrics),
        "metric_notes": metric_notes,
        "aborts": [f"step {row.step}: {row.abort}" for row in metrics if row.abort],
        "curves": [{"title": c.title, "svg": curve_svg(c), "last": c.values[-1]} for c in curves],
        "missing_curves": missing,
        "config": read_text(config_path, "a YAML config") if config_path.exists() else None,
        "comparison": None,
    }
    base_path, tuned_path = _eval_pair(run_dir, base, tuned)
    if base_path is None or tuned_path is None:
        return context
    dataset = load_rows(rows) if rows else None
    comparison = compare_runs(load_eval(base_path), load_eval(tuned_path), by=SLICE_KEYS)
    store = TraceStore()
    regressions = comparison.regressions()
    others = sorted(
        (d for d in comparison.diffs if d.bucket != "regressed"), key=lambda d: (-d.d_reward, d.id)
    )
    context.update(
        comparison=comparison,
        base_path=str(base_path),
        tuned_path=str(tuned_path),
        compare_text=format_comparison(comparison),
        slices=[
            {"key": key, "stats": stats, "svg": slice_bars_svg(stats)}
            for key, stats in comparison.slices.items()
        ],
        regressions=[_row_view(d, comparison, dataset, store) for d in regressions],
        other_rows=[_row_view(d, comparison, dataset, store) for d in others],
    )
    return context


def render_report(context: dict[str, Any]) -> str:
    """The HTML page for a context from ``build_context``."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("agentrft.evaluate", "."),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template(TEMPLATE).render(**context)


def write_report(
    run_dir: str | Path,
    base: str | Path | None = None,
    tuned: str | Path | None = None,
    rows: str | Path | None = None,
    out: str | Path | None = None,
) -> Path:
    """Write ``report.html`` for a run directory; returns its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory (expected config.yaml, metrics.jsonl, eval/)")
    target = Path(out) if out else run_dir / "report.html"
    inputs = (Path(p) for p in (base, tuned, rows) if p)
    refuse_overwrite(target, run_dir / METRICS_FILE, run_dir / "config.yaml", *inputs)
    context = build_context(
        run_dir,
        Path(base) if base else None,
        Path(tuned) if tuned else None,
        Path(rows) if rows else None,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_report(context), encoding="utf-8")
    return target
