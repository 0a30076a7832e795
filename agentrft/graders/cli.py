"""Step 4's commands: ``agentrft grade`` (one answer), ``grade test`` (a case file), ``grade run``
(stored trajectories again).

``grade`` is both a command and a group: with ``--reference``/``--answer`` it grades one answer;
with a sub-command it tests or re-grades. The last line of ``agentrft grade`` is the reward alone
(``none`` for "no grade"), so scripts can read it with ``tail -1``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UserError
from ..files import refuse_overwrite
from ..jsonl import read_models, write_models
from ..schema import Row
from .base import grade_answer
from .cases import read_cases, regrade_traces, run_cases
from .loader import BUILTIN, default_grader, load_grader

grade_app = typer.Typer(
    help="Step 4: grade answers, test a grader on cases, re-grade stored trajectories.",
    invoke_without_command=True,
    no_args_is_help=False,
)

GraderOpt = Annotated[
    Optional[Path],
    typer.Option("--grader", "-g", help="Grader JSON/YAML (OpenAI RFT shapes, numeric, tool_use) or a built-in name; default: numeric."),
]


def _grader(path: Path | None):  # type: ignore[no-untyped-def]
    if path is None:
        return default_grader()
    if str(path) in BUILTIN and not path.exists():
        return load_grader(str(path))  # --grader numeric / tool_use
    return load_grader(path)


def _fmt(reward: float | None) -> str:
    return "none" if reward is None else f"{reward:.2f}"


@grade_app.callback()
def grade(
    ctx: typer.Context,
    reference: Annotated[Optional[str], typer.Option("--reference", "-r", help="The reference answer, e.g. 13.4%.")] = None,
    answer: Annotated[Optional[str], typer.Option("--answer", "-a", help="The answer to grade, e.g. 0.134.")] = None,
    grader: GraderOpt = None,
    tolerance: Annotated[Optional[float], typer.Option(help="The row's expected.tolerance_rel (0.02 = ±2%).")] = None,
    prompt: Annotated[str, typer.Option(help="The question (lets the numeric grader ignore its numbers).")] = "(no prompt)",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with reward and reason.")] = False,
) -> None:
    """Grade one answer against a reference; the last line printed is the reward."""
    if ctx.invoked_subcommand is not None:
        if reference is not None or answer is not None:
            raise UserError("--reference/--answer grade one answer; they cannot be combined with a sub-command")
        return
    if reference is None or answer is None:
        if reference is None and answer is None:
            typer.echo(ctx.get_help())
            raise typer.Exit(0)
        raise UserError("grade needs both --reference and --answer")
    if tolerance is not None and tolerance < 0:
        raise UserError(f"--tolerance must be >= 0, got {tolerance}")
    if not reference.strip():
        raise UserError("--reference is empty")
    result = grade_answer(_grader(grader), reference, answer, {"tolerance_rel": tolerance}, prompt)
    if as_json:
        typer.echo(json.dumps({"reward": result.reward, "reason": result.reason, "grader": result.grader,
                               "sub_rewards": result.sub_rewards}))  # fmt: skip
        return
    typer.echo(f"{result.grader}: {result.reason}")
    typer.echo("none" if result.reward is None else f"{result.reward:g}")


@grade_app.command("test")
def grade_test(
    cases: Annotated[Path, typer.Argument(help="JSONL of {reference_answer, output_text, expected_reward[, expected]}.")],
    grader: GraderOpt = None,
) -> None:
    """Test a grader standalone: a table of ref / out / expected / got; exit 1 on any mismatch."""
    results = run_cases(_grader(grader), read_cases(cases))
    table = Table(show_edge=False, pad_edge=False)
    for column in ("ref", "out", "expected", "got", ""):
        table.add_column(column, overflow="fold")
    table.add_column("reason", overflow="fold", max_width=72)
    for r in results:
        table.add_row(r.case.reference_answer, r.case.output_text, _fmt(r.case.expected_reward),
                      _fmt(r.grade.reward), "ok" if r.ok else "MISMATCH", r.grade.reason)  # fmt: skip
    console = Console(highlight=False, soft_wrap=False, width=160)
    console.print(table)
    bad = sum(not r.ok for r in results)
    console.print(f"{len(results) - bad}/{len(results)} cases match", markup=False)
    if bad:
        raise UserError(f"{bad} of {len(results)} cases in {cases} do not get their expected reward")


@grade_app.command("run")
def grade_run(
    traces: Annotated[Path, typer.Argument(help="JSONL of stored Trajectory lines (traces/*.jsonl).")],
    rows: Annotated[Path, typer.Option("--rows", help="The dataset rows (for the reference answers).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write one EvalRecord per trajectory.")],
    grader: GraderOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="Trajectories graded at once (judges wait on HTTP).")] = 8,
) -> None:
    """Grade stored trajectories again (step 8: fix the grader, re-evaluate, don't retrain)."""
    refuse_overwrite(out, traces, rows)
    chosen = _grader(grader)
    records = regrade_traces(traces, read_models(rows, Row), chosen, out, workers)
    write_models(out, records)
    graded = [r.reward for r in records if r.reward is not None]
    mean = f"{sum(graded) / len(graded):.3f}" if graded else "n/a"
    typer.echo(f"graded {len(records)} trajectories with {chosen.name}: mean reward {mean}, "
               f"{len(records) - len(graded)} without a grade → {out}")  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add this step's commands to the main app."""
    app.add_typer(grade_app, name="grade")
