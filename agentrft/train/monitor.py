"""Step 6's eyes: the TRL callback that, at each step, writes the run's files, shows them, measures val,
keeps the best checkpoint and applies the abort rules.

Each job is its own module; this one decides when each runs. ``val_reward`` is measured every
``val_every`` steps, at the last step, and at step 0 before any update (``validation``); the best
checkpoint is saved whenever it improves (``checkpoints``); every logging step appends a metrics row
and sampled traces (``metrics``) and shows the row (``live``). An abort rule that fires (``abort``)
stops the run through ``control.should_training_stop``; its reason goes into the metrics row and into
``Monitor.abort_reason`` for the command's one-line message.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from transformers import TrainerCallback

from ..config import TrainConfig
from ..jsonl import write_models
from ..schema import BestCheckpoint, MetricsRow, Row
from .abort import AbortRules
from .checkpoints import best_dir, read_best, save_best
from .live import LiveTable
from .metrics import METRICS_FILE, metrics_row, read_metrics, write_traces
from .rollout import AgentRollouts, RolloutRunner
from .validation import validate


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
        self.trainer: Any = None
        self.abort_reason: str | None = None
        self.abort_step: int | None = None
        self.best: BestCheckpoint | None = read_best(self.run_dir)
        self._pending_val: tuple[float | None, float | None] | None = None
        earlier = read_metrics(self.metrics_path)  # a resumed run continues its KL history and its table
        self.rules = AbortRules(cfg, earlier)
        self.table = LiveTable(f"GRPO · {self.run_dir.name}", console or Console(highlight=False, soft_wrap=True),
                               earlier)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    @property
    def best_dir(self) -> Path:
        return best_dir(self.run_dir)

    def attach(self, trainer: Any) -> None:
        """Give the callback the trainer (for the model, tokenizer and accelerator)."""
        self.trainer = trainer

    # --- TRL / transformers callback hooks -------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if _is_main(state):
            self.table.start()
        if state.global_step == 0 and not self.table.rows:
            val, val_tools = self._validate()
            self._record(MetricsRow(step=0, epoch=0.0, val_reward=val, val_tool_calls=val_tools), state)
            self._maybe_save_best(val, step=0, state=state)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        final = state.max_steps > 0 and step >= state.max_steps
        if step % self.cfg.val_every == 0 or final:
            val, val_tools = self._validate()
            self._pending_val = (val, val_tools)
            self._maybe_save_best(val, step=step, state=state)
        if final:
            control.should_save = True  # the last step is always resumable / loadable

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" not in logs and "train_loss" in logs:
            return  # the end-of-training summary, not a step
        row = metrics_row(state.global_step, state.epoch, logs)
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
        last = self.rollouts.last
        if _is_main(state) and last is not None:
            write_traces(self.run_dir, state.global_step, last.trajectories, last.grades, self.cfg.trace_samples)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        self.table.stop()

    # --- pieces ----------------------------------------------------------------------------------

    def _record(self, row: MetricsRow, state: Any) -> None:
        if _is_main(state):
            write_models(self.metrics_path, [row], append=True)
        self.table.add(row, show=_is_main(state))

    def _validate(self) -> tuple[float | None, float | None]:
        if self.trainer is None:
            return None, None
        return validate(self.trainer, self.runner, self.rollouts.grader, self.val_rows, self.cfg.seed)

    def _maybe_save_best(self, val: float | None, step: int, state: Any) -> None:
        if val is None or (self.best is not None and val <= self.best.val_reward):
            return
        self.best = BestCheckpoint(step=step, val_reward=val)
        if not _is_main(state) or self.trainer is None:
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        save_best(self.run_dir, self.best, model, self.trainer.processing_class)


def _is_main(state: Any) -> bool:
    return bool(getattr(state, "is_world_process_zero", True))


__all__ = ["Monitor"]
