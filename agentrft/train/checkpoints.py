"""Step 6's best checkpoint: ``RUN/checkpoints/best``, the model at the step with the best greedy val
reward so far, rewritten whenever val improves so that an aborted run never loses it.

``best.json`` beside it (a ``BestCheckpoint``) says which step and reward it holds; a resumed run reads
it back, so only a better step replaces the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..schema import BestCheckpoint

BEST_DIR = "best"
BEST_INFO = "best.json"


def best_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / BEST_DIR


def read_best(run_dir: Path) -> BestCheckpoint | None:
    """The run's best checkpoint so far; None when there is none yet or its ``best.json`` cannot be
    read (a file cut short by a kill: the next val that improves rewrites it)."""
    try:
        return BestCheckpoint.model_validate_json((best_dir(run_dir) / BEST_INFO).read_bytes())
    except (OSError, ValidationError):
        return None


def save_best(run_dir: Path, best: BestCheckpoint, model: Any, tokenizer: Any) -> Path:
    """Save ``model`` and ``tokenizer`` as the run's best checkpoint, then its ``best.json`` (written last,
    so it never names a model that is not there)."""
    folder = best_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / BEST_INFO).write_text(best.model_dump_json() + "\n", encoding="utf-8")
    return folder


__all__ = ["BEST_DIR", "BEST_INFO", "best_dir", "read_best", "save_best"]
