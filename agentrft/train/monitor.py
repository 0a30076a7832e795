"""Step 6's eyes: a TRL callback that writes ``metrics.jsonl``, shows a live table, and aborts bad runs.

Every logging step appends one ``MetricsRow`` to ``RUN/metrics.jsonl`` with the tutorial's columns
(``step``, ``val_reward``, ``tool_calls``, ``kl_to_ref``, ``loss``) plus what tells a healthy run
from a dying one: train reward and its std, the share of groups whose rewards were all equal (they
carry no gradient in GRPO), grad norm and step time. ``val_reward`` is measured every ``val_every``
steps (and at step 0, before any update) on a fixed subset of the val rows, greedily, through the
same agent loop as training, so the curve is not sampling noise.

Abort rules (each can be switched off in the config) stop the run through
``control.should_training_stop``; the reason goes into the metrics file and into
``Monitor.abort_reason`` for the command's one-line message. The best checkpoint by val reward is
written to ``RUN/checkpoints/best`` whenever val improves, so an abort never loses it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.live import Live
from rich.table import Table
from transformers import TrainerCallback

from ..errors import UserError
from ..files import iter_lines
from ..jsonl import write_models
from ..schema import SCHEMA_VERSION, Row, Trajectory
from ..config import TrainConfig
from .rollout import AgentRollouts, RolloutRunner, mean_reward

METRICS_FILE = "metrics.jsonl"
TRACES_DIR = "traces"
BEST_DIR = "best"
BEST_INFO = "best.json"


class MetricsRow(BaseModel):
    """One line of ``metrics.jsonl``: the state of the run after optimizer step ``step``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    step: int
    epoch: float | None = None
    time: float = Field(default_factory=time.time, description="Unix time the row was written.")
    val_reward: float | None = Field(default=None, description="Greedy mean reward on the val subset.")
    val_tool_calls: float | None = None
    tool_calls: float | None = Field(default=None, description="Mean tool calls per training trajectory.")
    kl_to_ref: float | None = None
    loss: float | None = None
    train_reward: float | None = None
    reward_std: float | None = None
    zero_std_groups: float | None = Field(default=None, description="Share of groups with equal rewards.")
    grad_norm: float | None = None
    learning_rate: float | None = None
    step_time_s: float | None = None
    completion_tokens: float | None = Field(default=None, description="Mean policy tokens per trajectory.")
    no_grade: float | None = Field(default=None, description="Share of trajectories the grader could not grade.")
    weight_sync_s: float | None = Field(
        default=None, description="Seconds pushing the new weights to the vLLM servers before this step's rollouts."
    )
    abort: str | None = Field(default=None, description="Why the run stopped here, when an abort rule fired.")


class TraceRecord(BaseModel):
    """One sampled training trajectory with its grade, as written to ``RUN/traces/step-XXXX.jsonl``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    step: int
    reward: float | None
    reason: str = ""
    trajectory: Trajectory


# TRL's log keys → our column names.
_TRL_KEYS = {
    "kl": "kl_to_ref",
    "loss": "loss",
    "reward": "train_reward",
    "reward_std": "reward_std",
    "frac_reward_zero_std": "zero_std_groups",
    "grad_norm": "grad_norm",
    "learning_rate": "learning_rate",
    "step_time": "step_time_s",
    "tool_calls": "tool_calls",
    "completions/mean_length": "completion_tokens",
    "no_grade": "no_grade",
    "weight_sync_s": "weight_sync_s",
}

TABLE_COLUMNS = (
    ("step", "step", "{:d}"),
    ("val_reward", "val_reward", "{:.2f}"),
    ("tool_calls", "tool_calls", "{:.1f}"),
    ("kl_to_ref", "kl_to_ref", "{:.3f}"),
    ("loss", "loss", "{:.2f}"),
    ("reward", "train_reward", "{:.2f}"),
    ("reward_std", "reward_std", "{:.2f}"),
    ("zero_std", "zero_std_groups", "{:.2f}"),
    ("grad_norm", "grad_norm", "{:.2f}"),
    ("step_s", "step_time_s", "{:.1f}"),
)


class AbortRules:
    """The configured abort rules, as a pure function of the rows seen so far (easy to test)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.kl_history: list[float] = []

    def check(self, row: MetricsRow) -> str | None:
        """Return why the run must stop after ``row``, or None. Records the row's KL either way."""
        cfg = self.cfg
        reason = None
        if cfg.abort_nonfinite_loss and row.loss is not None and not math.isfinite(row.loss):
            reason = f"loss is {row.loss} (abort_nonfinite_loss)"
        kl = row.kl_to_ref
        if reason is None and kl is not None and not math.isfinite(kl):
            reason = f"kl_to_ref is {kl} (abort_kl_max)"
        elif reason is None and kl is not None:
            if cfg.abort_kl_max is not None and kl > cfg.abort_kl_max:
                reason = f"kl_to_ref {kl:.4g} is above the ceiling {cfg.abort_kl_max:g} (abort_kl_max); lower learning_rate or raise kl_coef"
            elif cfg.abort_kl_jump is not None and len(self.kl_history) >= 3 and kl > cfg.abort_kl_jump_min:
                running = sum(self.kl_history) / len(self.kl_history)
                if kl > cfg.abort_kl_jump * max(running, 1e-12):
                    reason = (
                        f"kl_to_ref {kl:.4g} jumped to {kl / max(running, 1e-12):.0f}× its running mean "
                        f"{running:.3g} (abort_kl_jump {cfg.abort_kl_jump:g})"
                    )
        if kl is not None and math.isfinite(kl):
            self.kl_history.append(kl)
        if (
            reason is None
            and cfg.abort_val_floor is not None
            and row.val_reward is not None
            and row.step > cfg.warmup_steps
            and row.val_reward < cfg.abort_val_floor
        ):
            reason = f"val_reward {row.val_reward:.3f} fell below the floor {cfg.abort_val_floor:g} after warm-up (abort_val_floor)"
        return reason


class Monitor(TrainerCallback):
    """Writes metrics and traces, evaluates val, keeps the best checkpoint, applies the abort rules."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        rollouts: AgentRollouts,
        runner: RolloutRunner,
        val_rows: Sequence[Row],
        console: Console | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.rollouts = rollouts
        self.runner = runner
        self.val_rows = list(val_rows)
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.rules = AbortRules(cfg)
        self.trainer: Any = None
        self.abort_reason: str | None = None
        self.abort_step: int | None = None
        self.best: dict[str, Any] | None = _read_json(self.best_dir / BEST_INFO)
        self._pending_val: tuple[float | None, float | None] | None = None
        self._rows: list[MetricsRow] = []
        self._live: Live | None = None
        for row in read_metrics(self.metrics_path):  # a resumed run continues its KL history
            if row.kl_to_ref is not None and math.isfinite(row.kl_to_ref):
                self.rules.kl_history.append(row.kl_to_ref)
            self._rows.append(row)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    @property
    def best_dir(self) -> Path:
        return self.run_dir / "checkpoints" / BEST_DIR

    def attach(self, trainer: Any) -> None:
        """Give the callback the trainer (for the model, tokenizer and accelerator)."""
        self.trainer = trainer

    # --- TRL / transformers callback hooks -------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._is_main(state) and self.console.is_terminal:
            self._live = Live(self._table(), console=self.console, refresh_per_second=2, transient=False)
            self._live.start()
        elif self._is_main(state):
            self.console.print(self._header_line(), markup=False)
            for row in self._rows:
                self.console.print(self._row_line(row), markup=False)
        if state.global_step == 0 and not self._rows:
            val, val_tools = self._evaluate_val()
            row = MetricsRow(step=0, epoch=0.0, val_reward=val, val_tool_calls=val_tools)
            self._record(row, state)
            self._maybe_save_best(val, step=0, state=state)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        final = state.max_steps > 0 and step >= state.max_steps
        if step % self.cfg.val_every == 0 or final:
            val, val_tools = self._evaluate_val()
            self._pending_val = (val, val_tools)
            self._maybe_save_best(val, step=step, state=state)
        if final:
            control.should_save = True  # the last step is always resumable / loadable

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" not in logs and "train_loss" in logs:
            return  # the end-of-training summary, not a step
        values = {ours: _float(logs[theirs]) for theirs, ours in _TRL_KEYS.items() if theirs in logs}
        row = MetricsRow(step=state.global_step, epoch=state.epoch, **values)
        if self._pending_val is not None:
            row.val_reward, row.val_tool_calls = self._pending_val
            self._pending_val = None
        reason = self.rules.check(row)
        if reason is not None:
            row.abort = reason
            self.abort_reason, self.abort_step = reason, state.global_step
            control.should_training_stop = True
            control.should_save = False  # a diverged model is not worth a "last" checkpoint
        self._record(row, state)
        self._write_traces(state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # --- pieces ----------------------------------------------------------------------------------

    def _is_main(self, state: Any) -> bool:
        return bool(getattr(state, "is_world_process_zero", True))

    def _record(self, row: MetricsRow, state: Any) -> None:
        self._rows.append(row)
        if not self._is_main(state):
            return
        write_models(self.metrics_path, [row], append=True)
        if self._live is not None:
            self._live.update(self._table())
        else:
            self.console.print(self._row_line(row), markup=False)

    def _evaluate_val(self) -> tuple[float | None, float | None]:
        """Greedy rollouts on the fixed val subset; each process takes a shard, results are gathered."""
        if not self.val_rows or self.trainer is None:
            return None, None
        import torch

        trainer = self.trainer
        accelerator = trainer.accelerator
        shard = self.val_rows[accelerator.process_index :: accelerator.num_processes]
        model = accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                trajectories = self.runner(shard, model, trainer.processing_class, greedy=True, seed=self.cfg.seed)
        finally:
            model.train(was_training)
        by_id = {row.id: row for row in shard}
        grades = [self.rollouts.grader.grade(by_id[t.row_id], t) for t in trajectories]
        local = [(g.reward, t.n_tool_calls) for g, t in zip(grades, trajectories)]
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            local = gather_object(local)
        rewards = [r for r, _ in local if r is not None and math.isfinite(r)]
        tools = [n for _, n in local]
        return (sum(rewards) / len(rewards) if rewards else None), (sum(tools) / len(tools) if tools else None)

    def _maybe_save_best(self, val: float | None, step: int, state: Any) -> None:
        if val is None or (self.best is not None and val <= self.best["val_reward"]):
            return
        self.best = {"step": step, "val_reward": val}
        if not self._is_main(state) or self.trainer is None:
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        self.best_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(self.best_dir)
        self.trainer.processing_class.save_pretrained(self.best_dir)
        (self.best_dir / BEST_INFO).write_text(json.dumps(self.best) + "\n", encoding="utf-8")

    def _write_traces(self, state: Any) -> None:
        last = self.rollouts.last
        if not self._is_main(state) or last is None or not self.cfg.trace_samples or not last.trajectories:
            return
        every = max(1, len(last.trajectories) // self.cfg.trace_samples)
        picked = list(range(0, len(last.trajectories), every))[: self.cfg.trace_samples]
        records = []
        for index in picked:
            grade = last.grades[index] if index < len(last.grades) else None
            records.append(
                TraceRecord(
                    step=state.global_step,
                    reward=grade.reward if grade else None,
                    reason=grade.reason if grade else "",
                    trajectory=last.trajectories[index],
                )
            )
        write_models(self.run_dir / TRACES_DIR / f"step-{state.global_step:04d}.jsonl", records)

    def _table(self) -> Table:
        table = Table(title=f"GRPO · {self.run_dir.name}", show_edge=False)
        for title, _, _ in TABLE_COLUMNS:
            table.add_column(title, justify="right")
        for row in self._rows[-20:]:
            table.add_row(*_cells(row))
        return table

    def _header_line(self) -> str:
        return " ".join(title.rjust(_width(title)) for title, _, _ in TABLE_COLUMNS)

    def _row_line(self, row: MetricsRow) -> str:
        return " ".join(cell.rjust(_width(title)) for cell, (title, _, _) in zip(_cells(row), TABLE_COLUMNS))


def _width(title: str) -> int:
    return max(len(title), 6)


def _cells(row: MetricsRow) -> list[str]:
    cells = []
    for _, attr, fmt in TABLE_COLUMNS:
        value = getattr(row, attr)
        cells.append("—" if value is None else fmt.format(value))
    return cells


def read_metrics(path: Path) -> list[MetricsRow]:
    """The rows of a metrics file (empty when the file does not exist yet).

    A last line that does not parse is a write the run was killed in the middle of, and is left out
    (it is after the last checkpoint, so a resume drops it anyway); a bad line before it is an error.
    """
    if not path.is_file():
        return []
    lines = [(number, text) for number, text in iter_lines(path, "a metrics file") if text.strip()]
    rows = []
    for index, (number, text) in enumerate(lines):
        try:
            rows.append(MetricsRow.model_validate_json(text))
        except ValidationError as exc:
            if index == len(lines) - 1:
                break
            raise UserError(f"{path}:{number}: not a metrics row ({exc.errors()[0]['msg']})") from None
    return rows


def trim_metrics(run_dir: Path, last_step: int) -> int:
    """Drop metric rows and traces after ``last_step`` (the checkpoint a resume starts from).

    Returns how many rows were dropped. Without this, a run killed between a checkpoint and the
    next one would repeat those steps in its metrics after ``--resume``.
    """
    path = run_dir / METRICS_FILE
    rows = read_metrics(path)
    kept = [row for row in rows if row.step <= last_step]
    if len(kept) != len(rows):
        write_models(path, kept)
    for trace in (run_dir / TRACES_DIR).glob("step-*.jsonl"):
        if int(trace.stem.split("-")[1]) > last_step:
            trace.unlink()
    return len(rows) - len(kept)


def _float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


__all__ = ["AbortRules", "MetricsRow", "Monitor", "TraceRecord", "mean_reward", "read_metrics", "trim_metrics"]
