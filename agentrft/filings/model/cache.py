"""A cache for the warm-started tiny model, so a second ``agentrft demo`` skips the warm start.

An entry is a directory named by the hash of its key parts (seed, agentrft version, hashes of the
corpus and rows, the warm-start settings, the version of the search ranking its demonstrations were
recorded against) holding the saved model and ``cache_key.json`` with the parts in full. A lookup
returns an entry only when the stored parts equal the requested ones, so a changed seed, version,
corpus or setting never picks up a stale model. Entries are written to a
temporary directory and renamed into place, so an interrupted store leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ... import __version__
from ...tools.search_index import RANKING_VERSION
from .prompts import MAX_NEW_TOKENS, READ_BUDGET_CHARS, SEARCH_TOP_K, SYSTEM_PROMPT

RECIPE = 5
"""Version of the recipe (tokenizer, shape, pretraining, and the warm start's drills); part of the
demo's cache key, so a model built or warm-started by another recipe is never reused."""
KEY_FILE = "cache_key.json"
MODEL_DIR = "model"


def _canonical(key_parts: dict[str, Any]) -> str:
    return json.dumps(key_parts, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(key_parts: dict[str, Any]) -> str:
    """Hex digest naming the cache entry of ``key_parts``."""
    return hashlib.sha256(_canonical(key_parts).encode("utf-8")).hexdigest()[:32]


def hash_paths(*paths: Path) -> str:
    """Content hash of files and directories (every file under a directory, in sorted order)."""
    digest = hashlib.sha256()
    for root in paths:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            digest.update((path.relative_to(root).as_posix() if root.is_dir() else path.name).encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def warm_start_key_parts(
    seed: int, corpus_dir: Path, rows_path: Path, settings: dict[str, Any]
) -> dict[str, Any]:
    """The key parts of a warm-started tiny model: what, if changed, must invalidate it."""
    return {
        "kind": "tiny-warm-start",
        "seed": seed,
        "agentrft_version": __version__,
        "tiny_recipe": RECIPE,
        "corpus_sha256": hash_paths(Path(corpus_dir)),
        "rows_sha256": hash_paths(Path(rows_path)),
        "search_ranking": RANKING_VERSION,
        "sft_settings": settings,
        "prompt": {"system": SYSTEM_PROMPT, "read_budget": READ_BUDGET_CHARS, "top_k": SEARCH_TOP_K,
                   "max_new_tokens": MAX_NEW_TOKENS},
    }


def cached_warm_model(cache_root: Path, key_parts: dict[str, Any]) -> Path | None:
    """The cached model directory for exactly ``key_parts``, or None."""
    entry = Path(cache_root) / cache_key(key_parts)
    try:
        stored = json.loads((entry / KEY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model = entry / MODEL_DIR
    if _canonical(stored) != _canonical(key_parts) or not (model / "config.json").is_file():
        return None
    return model


def store_warm_model(cache_root: Path, key_parts: dict[str, Any], model_dir: Path) -> Path:
    """Copy ``model_dir`` into the cache under ``key_parts``; returns the cached model directory."""
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    entry = cache_root / cache_key(key_parts)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_root))
    try:
        shutil.copytree(model_dir, staging / MODEL_DIR, ignore=shutil.ignore_patterns("trainer", "checkpoint-*"))
        (staging / KEY_FILE).write_text(json.dumps(key_parts, indent=2, sort_keys=True, default=str) + "\n",
                                        encoding="utf-8")
        if entry.exists():
            shutil.rmtree(entry)
        staging.rename(entry)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return entry / MODEL_DIR


__all__ = ["RECIPE", "cache_key", "cached_warm_model", "hash_paths", "store_warm_model", "warm_start_key_parts"]
