"""Step 6: GRPO training through TRL with agentrft's agent loop (the config, step 5, is ``agentrft.config``).

The trainer, rollout adapter and monitor import torch, transformers and TRL, so they load on first use
and ``agentrft --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "train": ".trainer",
    "TrainResult": ".trainer",
    "last_checkpoint": ".trainer",
    "AgentRollouts": ".rollout",
    "RolloutRunner": ".rollout",
    "agent_loop_runner": ".rollout",
    "check_trl_contract": ".rollout",
    "to_trl_batch": ".rollout",
    "AbortRules": ".abort",
    "Monitor": ".monitor",
    "read_metrics": ".metrics",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
