"""Step 6's live view: the last rows of ``metrics.jsonl`` as a table that updates in place on a
terminal, or one plain line per row when the output is a file or a pipe (a CI log stays readable)."""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..schema import MetricsRow

TABLE_COLUMNS = (
    ("step", "step", "{:d}"),
    ("val_reward", "val_reward", "{:.2f}"),
    ("tool_calls", "tool_calls", "{:.1f}"),
    ("tool_err", "tool_error_rate", "{:.2f}"),
    ("kl_to_ref", "kl_to_ref", "{:.3f}"),
    ("loss", "loss", "{:.2f}"),
    ("reward", "train_reward", "{:.2f}"),
    ("reward_std", "reward_std", "{:.2f}"),
    ("zero_std", "zero_std_groups", "{:.2f}"),
    ("grad_norm", "grad_norm", "{:.2f}"),
    ("step_s", "step_time_s", "{:.1f}"),
)
"""(title, MetricsRow field, format) of each column."""
SHOWN_ROWS = 20


class LiveTable:
    """Shows a run's metric rows as they come; ``start`` it on the main process only."""

    def __init__(self, title: str, console: Console, rows: list[MetricsRow] | None = None) -> None:
        self.title = title
        self.console = console
        self.rows = list(rows or [])
        self._live: Live | None = None

    def start(self) -> None:
        """A live table on a terminal; otherwise the header and the rows so far, one line each."""
        if self.console.is_terminal:
            self._live = Live(self._table(), console=self.console, refresh_per_second=2, transient=False)
            self._live.start()
            return
        self.console.print(_header_line(), markup=False)
        for row in self.rows:
            self.console.print(_row_line(row), markup=False)

    def add(self, row: MetricsRow, show: bool = True) -> None:
        self.rows.append(row)
        if not show:
            return
        if self._live is not None:
            self._live.update(self._table())
        else:
            self.console.print(_row_line(row), markup=False)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _table(self) -> Table:
        table = Table(title=self.title, show_edge=False)
        for title, _, _ in TABLE_COLUMNS:
            table.add_column(title, justify="right")
        for row in self.rows[-SHOWN_ROWS:]:
            table.add_row(*_cells(row))
        return table


def _width(title: str) -> int:
    return max(len(title), 6)


def _header_line() -> str:
    return " ".join(title.rjust(_width(title)) for title, _, _ in TABLE_COLUMNS)


def _row_line(row: MetricsRow) -> str:
    return " ".join(cell.rjust(_width(title)) for cell, (title, _, _) in zip(_cells(row), TABLE_COLUMNS))


def _cells(row: MetricsRow) -> list[str]:
    return ["—" if getattr(row, attr) is None else _number(fmt, getattr(row, attr)) for _, attr, fmt in TABLE_COLUMNS]


def _number(fmt: str, value: float) -> str:
    """``fmt`` applied, without the sign of a value that rounds to zero (a KL estimate of -1e-9 reads 0.000)."""
    text = fmt.format(value)
    return text.lstrip("-") if text.startswith("-") and float(text) == 0 else text


__all__ = ["TABLE_COLUMNS", "LiveTable"]
