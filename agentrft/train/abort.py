"""Step 6's abort rules: when a run must stop, as a pure function of the metric rows seen so far.

Each rule can be switched off in the config. A non-finite loss or KL stops at once; a KL above
``abort_kl_max``, or ``abort_kl_jump`` times its running mean (once the mean has three points and the
KL is above ``abort_kl_jump_min``, so early noise near zero does not trip it), is a policy running away
from its reference; a val reward below ``abort_val_floor`` after warm-up is a run that unlearned the task.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ..config import TrainConfig
from ..schema import MetricsRow


class AbortRules:
    """The configured abort rules; ``check`` each new row in step order."""

    def __init__(self, cfg: TrainConfig, earlier: Iterable[MetricsRow] = ()) -> None:
        """``earlier``: the rows a resumed run already wrote, so the KL history continues."""
        self.cfg = cfg
        self.kl_history: list[float] = []
        for row in earlier:
            self._remember(row)

    def check(self, row: MetricsRow) -> str | None:
        """Return why the run must stop after ``row``, or None. Records the row's KL either way."""
        reason = self._loss_or_kl(row)
        self._remember(row)
        if reason is None:
            reason = self._val_floor(row)
        return reason

    def _remember(self, row: MetricsRow) -> None:
        if row.kl_to_ref is not None and math.isfinite(row.kl_to_ref):
            self.kl_history.append(row.kl_to_ref)

    def _loss_or_kl(self, row: MetricsRow) -> str | None:
        cfg, kl = self.cfg, row.kl_to_ref
        if cfg.abort_nonfinite_loss and row.loss is not None and not math.isfinite(row.loss):
            return f"loss is {row.loss} (abort_nonfinite_loss)"
        if kl is None:
            return None
        if not math.isfinite(kl):
            return f"kl_to_ref is {kl} (abort_kl_max)"
        if cfg.abort_kl_max is not None and kl > cfg.abort_kl_max:
            return (f"kl_to_ref {kl:.4g} is above the ceiling {cfg.abort_kl_max:g} (abort_kl_max); "
                    "lower learning_rate or raise kl_coef")
        if cfg.abort_kl_jump is not None and len(self.kl_history) >= 3 and kl > cfg.abort_kl_jump_min:
            running = sum(self.kl_history) / len(self.kl_history)
            if kl > cfg.abort_kl_jump * max(running, 1e-12):
                return (f"kl_to_ref {kl:.4g} jumped to {kl / max(running, 1e-12):.0f}× its running mean "
                        f"{running:.3g} (abort_kl_jump {cfg.abort_kl_jump:g})")
        return None

    def _val_floor(self, row: MetricsRow) -> str | None:
        floor = self.cfg.abort_val_floor
        if floor is None or row.val_reward is None or row.step <= self.cfg.warmup_steps or row.val_reward >= floor:
            return None
        return f"val_reward {row.val_reward:.3f} fell below the floor {floor:g} after warm-up (abort_val_floor)"


__all__ = ["AbortRules"]
