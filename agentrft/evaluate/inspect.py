"""Step 8: the regressions, worst first, with the tuned model's trace — and re-grading without retraining.

A regression is often the grader's fault, not the model's ("$842 million dollars" scored zero).
``regrade`` grades both runs' stored trajectories again with another grader and says which
regressions disappear, so a grader bug is found and fixed before anyone retrains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..schema import EvalRecord, MessageTurn, Row, ToolCallTurn, ToolResultTurn, Trajectory
from .compare import Comparison, RowDiff, compare_runs
from .records import EvalRun, TraceStore, group_records

if TYPE_CHECKING:
    from ..graders import Grader

BUCKET_NAMES = {"solved": "already solved", "unsolved": "still unsolved", "partial": "unchanged at partial credit"}
TOOL_OUTPUT_CHARS = 80
ANSWER_CHARS = 120


def _clip(text: str, limit: int) -> str:
    cut = text[:limit]
    # Newlines shown as \n keep one turn on one line, as in the tutorial's printout.
    return cut.replace("\n", "\\n") + ("…" if len(text) > limit else "")


def call_text(turn: ToolCallTurn) -> str:
    """``search({"query": ...})``; a malformed call shows the model's own text and what was wrong."""
    args = turn.raw if turn.error and turn.raw else json.dumps(turn.args, ensure_ascii=False)
    return f"{turn.name}({args})" + (f"  ✗ {turn.error}" if turn.error else "")


def render_trace(trajectory: Trajectory) -> list[str]:
    """A trajectory as the tutorial prints it: → calls, ← first 80 characters, [model] text."""
    lines = []
    for turn in trajectory.turns:
        if isinstance(turn, ToolCallTurn):
            lines.append(f"  → {call_text(turn)}")
        elif isinstance(turn, ToolResultTurn):
            lines.append(f"  ← {_clip(turn.output, TOOL_OUTPUT_CHARS)}")
        elif isinstance(turn, MessageTurn) and turn.role == "assistant":
            lines.append(f"  [model] {_clip(turn.content, ANSWER_CHARS)}")
    if trajectory.stop_reason != "answer":
        lines.append(f"  (stopped: {trajectory.stop_reason})")
    return lines


def format_delta_tools(value: float) -> str:
    """``+2`` for whole numbers (one sample per row), ``+1.50`` for means over samples."""
    return f"{int(value):+d}" if float(value).is_integer() else f"{value:+.2f}"


def _worst_sample(records: tuple[EvalRecord, ...]) -> EvalRecord:
    return min(records, key=lambda r: (r.reward if r.reward is not None else -1.0, r.sample_index))


def _grade_text(record: EvalRecord) -> str:
    reward = "no grade" if record.reward is None else f"{record.reward:.2f}"
    return f"{reward} ({record.reason})" if record.reason else reward


def prompt_of(trajectory: Trajectory | str) -> str | None:
    """The first user message of a trajectory: the prompt, when no dataset rows are at hand."""
    if isinstance(trajectory, Trajectory):
        for turn in trajectory.turns:
            if isinstance(turn, MessageTurn) and turn.role == "user":
                return turn.content
    return None


def format_regression(
    diff: RowDiff, tuned_path: Path, rows: dict[str, Row] | None, store: TraceStore
) -> list[str]:
    """One regression: header, prompt, reference, grades, and the tuned model's worst sample."""
    tuned_rec = _worst_sample(diff.tuned.records)
    base_rec = max(diff.base.records, key=lambda r: (r.reward or 0.0, -r.sample_index))
    trajectory = store.load(tuned_path, tuned_rec)
    row = rows.get(diff.id) if rows else None
    prompt = row.prompt if row else prompt_of(trajectory) or "(unknown: pass --rows VAL.jsonl)"
    reference = row.reference_answer if row else "(unknown: pass --rows VAL.jsonl)"
    lines = [
        f"=== {diff.id} Δreward={diff.d_reward:+.2f} Δtools={format_delta_tools(diff.d_tools)}",
        f"PROMPT: {prompt}",
        f"REFERENCE: {reference}",
        f"GRADE: base {_grade_text(base_rec)} → tuned {_grade_text(tuned_rec)}",
    ]
    if isinstance(trajectory, Trajectory):
        lines.extend(render_trace(trajectory))
    else:
        lines.append(f"  (no trace: {trajectory}; answer: {_clip(tuned_rec.answer, ANSWER_CHARS)})")
    return lines


def format_regressions(
    comparison: Comparison, rows: dict[str, Row] | None = None, top: int = 5, bucket: str = "regressed"
) -> str:
    """The ``top`` rows of a bucket (by default the worst regressions), rendered one after another.

    The other buckets answer the tutorial's other questions: ``improved`` shows what may be
    suspiciously right, ``unsolved`` what the model still cannot do.
    """
    chosen = comparison.in_bucket(bucket)
    store = TraceStore()
    tuned_path = Path(comparison.tuned_path)
    shown = chosen[:top] if top > 0 else chosen
    head = f"{len(chosen)} of {comparison.n} rows {BUCKET_NAMES.get(bucket, bucket)}"
    if len(shown) < len(chosen):
        order = {"regressed": "worst", "improved": "largest"}.get(bucket, "first")
        head += f"; the {order} {len(shown)} follow"
    gaps = [
        f"{len(ids)} {what}"
        for ids, what in ((comparison.only_base, "only in base"), (comparison.only_tuned, "only in tuned"),
                          (comparison.ungraded, "without a grade"))
        if ids
    ]
    if gaps:
        head += f"\nnot compared: {', '.join(gaps)} (listed by agentrft compare)"
    blocks = [head]
    for diff in shown:
        blocks.append("\n" + "\n".join(format_regression(diff, tuned_path, rows, store)))
    return "\n".join(blocks)


# ---------------------------------------------------------------------------------------------
# Re-grading stored answers
# ---------------------------------------------------------------------------------------------


def regrade_run(run: EvalRun, grader: Grader, rows: dict[str, Row], store: TraceStore) -> EvalRun:
    """Grade every stored sample of ``run`` again; the trace when there is one, else the answer."""
    records = []
    for result in run.rows.values():
        row = rows.get(result.id)
        if row is None:
            raise UserError(f"{run.path}: row {result.id} is not in the --rows file; regrading needs its reference")
        for rec in result.records:
            trajectory = store.load(run.path, rec)
            if not isinstance(trajectory, Trajectory):
                trajectory = Trajectory(
                    row_id=rec.id, sample_index=rec.sample_index, model=rec.model,
                    turns=[MessageTurn(role="assistant", content=rec.answer)],
                )
            grade = grader.grade(row, trajectory)
            records.append(rec.model_copy(update={"reward": grade.reward, "reason": grade.reason}))
    return group_records(run.path, records)


@dataclass
class Regrade:
    """A comparison before and after grading both runs again with another grader."""

    before: Comparison
    after: Comparison
    grader: str

    def disappeared(self) -> list[str]:
        after = {d.id: d for d in self.after.diffs}
        return [d.id for d in self.before.regressions() if d.id in after and after[d.id].bucket != "regressed"]

    def remaining(self) -> list[str]:
        kept = {d.id for d in self.after.regressions()}
        return [d.id for d in self.before.regressions() if d.id in kept]

    def new(self) -> list[str]:
        before = {d.id for d in self.before.regressions()}
        return [d.id for d in self.after.regressions() if d.id not in before]


def regrade(
    base: EvalRun, tuned: EvalRun, grader: Grader, rows: dict[str, Row], before: Comparison
) -> Regrade:
    """Grade both runs again with ``grader`` and compare the regressions before and after."""
    store = TraceStore()
    after = compare_runs(
        regrade_run(base, grader, rows, store), regrade_run(tuned, grader, rows, store),
        resamples=before.resamples, seed=before.seed,
    )
    return Regrade(before=before, after=after, grader=grader.name)


def format_regrade(result: Regrade) -> str:
    """Which regressions the other grader makes disappear, with each row's reward before → after."""
    before = {d.id: d for d in result.before.diffs}
    after = {d.id: d for d in result.after.diffs}

    def row_line(rid: str) -> str:
        b, a = before.get(rid), after.get(rid)
        old = f"{b.d_reward:+.2f}" if b else "n/a"
        new = f"{a.d_reward:+.2f}" if a else "no grade"
        tuned = f"tuned {b.tuned.reward:.2f} → {a.tuned.reward:.2f}" if a and b else ""
        answer = _worst_sample(a.tuned.records).answer if a else ""
        return f"  {rid}  Δreward {old} → {new}  {tuned}  answer: {_clip(answer, 60)}"

    gone, kept, new = result.disappeared(), result.remaining(), result.new()
    lines = [
        f"regraded with {result.grader}:",
        f"regressions that disappear: {len(gone)}/{len(result.before.regressions())}",
        *[row_line(rid) for rid in gone],
        f"regressions that remain: {len(kept)}",
        *[row_line(rid) for rid in kept],
        f"new regressions: {len(new)}",
        *[row_line(rid) for rid in new],
        f"mean Δreward: {result.before.mean_d_reward:+.3f} ({result.before.n} rows) → "
        f"{result.after.mean_d_reward:+.3f} ({result.after.n} rows)",
    ]
    if gone:
        lines.append("a regression that disappears was the grader's, not the model's: fix the grader and re-evaluate; don't retrain")
    return "\n".join(lines)
