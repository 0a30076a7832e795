"""Step 6's val curve: greedy rollouts of a fixed subset of the val rows, graded, through the same agent
loop as training.

Greedy, so that two points of the curve differ by what the model learned and not by sampling noise.
Under several processes each takes a shard of the rows and the results are gathered on every process,
so all of them agree on the value (and on whether it is a new best).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..graders import Grader
from ..schema import Row
from .rollout import RolloutRunner


def validate(trainer: Any, runner: RolloutRunner, grader: Grader, rows: Sequence[Row],
             seed: int | None) -> tuple[float | None, float | None]:
    """(mean reward, mean tool calls) of greedy rollouts of ``rows`` with the trainer's current model.

    Rows the grader could not grade stay out of the mean reward ("no grade" is not 0); None when no
    row was graded (or there are no rows)."""
    if not rows:
        return None, None
    accelerator = trainer.accelerator
    shard = list(rows)[accelerator.process_index :: accelerator.num_processes]
    model = accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            trajectories = runner(shard, model, trainer.processing_class, greedy=True, seed=seed)
    finally:
        model.train(was_training)
    by_id = {row.id: row for row in shard}
    grades = [grader.grade(by_id[t.row_id], t) for t in trajectories]
    local = [(g.reward, t.n_tool_calls) for g, t in zip(grades, trajectories)]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        local = gather_object(local)
    rewards = [r for r, _ in local if r is not None and math.isfinite(r)]
    tools = [n for _, n in local]
    return (sum(rewards) / len(rewards) if rewards else None), (sum(tools) / len(tools) if tools else None)


__all__ = ["validate"]
