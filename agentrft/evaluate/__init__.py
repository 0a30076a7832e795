"""Steps 7 and 8: evaluate a model per row, compare base vs tuned, inspect regressions, write a report.

>>> from agentrft.evaluate import compare_runs, format_comparison, load_eval
>>> print(format_comparison(compare_runs(load_eval("eval/base.jsonl"), load_eval("eval/tuned.jsonl"))))  # doctest: +SKIP
mean Δreward: +0.218
"""

from .compare import Comparison, RowDiff, SliceStats, bootstrap_ci, compare_runs, format_comparison
from .inspect import Regrade, format_regrade, format_regressions, regrade, render_trace
from .records import EvalRun, RowResult, TraceStore, load_eval, load_rows, traces_path_for
from .report import build_context, render_report, write_report
from .run import EvalOptions, EvalSummary, evaluate

__all__ = [
    "Comparison",
    "EvalOptions",
    "EvalRun",
    "EvalSummary",
    "Regrade",
    "RowDiff",
    "RowResult",
    "SliceStats",
    "TraceStore",
    "bootstrap_ci",
    "build_context",
    "compare_runs",
    "evaluate",
    "format_comparison",
    "format_regrade",
    "format_regressions",
    "load_eval",
    "load_rows",
    "regrade",
    "render_report",
    "render_trace",
    "traces_path_for",
    "write_report",
]
