"""A cache for the demo's deterministic heavy steps, so a second ``agentrft demo`` skips them: the
warm-started tiny model, and the prior check and base evaluations of that model.

An entry is a directory named by the hash of its key parts holding what the step produced (the saved
model, or its output files) and ``cache_key.json`` with the parts in full. A lookup returns an entry
only when the stored parts equal the requested ones, so a changed input never picks up a stale result.
The warm start's key names its inputs and a recipe version (seed, agentrft version, hashes of the corpus
and rows, the settings, the version of the search ranking its demonstrations were recorded against);
the rollout steps' keys also carry a hash of the package's source and the torch build and CPU they ran
on (``rollout_code_parts``), since any change to the agent loop, the tools or the graders changes their
results. Entries are written to a temporary directory and renamed into place, so an interrupted store
leaves nothing half-written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
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


def _entry(cache_root: Path, key_parts: dict[str, Any]) -> Path | None:
    """The entry directory stored under exactly ``key_parts``, or None."""
    entry = Path(cache_root) / cache_key(key_parts)
    try:
        stored = json.loads((entry / KEY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return entry if _canonical(stored) == _canonical(key_parts) else None


def _store(cache_root: Path, key_parts: dict[str, Any], fill: Callable[[Path], None]) -> Path:
    """Store an entry whose contents ``fill`` writes into a staging directory; returns the entry."""
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    entry = cache_root / cache_key(key_parts)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_root))
    try:
        fill(staging)
        (staging / KEY_FILE).write_text(json.dumps(key_parts, indent=2, sort_keys=True, default=str) + "\n",
                                        encoding="utf-8")
        if entry.exists():
            shutil.rmtree(entry)
        staging.rename(entry)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return entry


def cached_warm_model(cache_root: Path, key_parts: dict[str, Any]) -> Path | None:
    """The cached model directory for exactly ``key_parts``, or None."""
    entry = _entry(cache_root, key_parts)
    if entry is None or not (entry / MODEL_DIR / "config.json").is_file():
        return None
    return entry / MODEL_DIR


def store_warm_model(cache_root: Path, key_parts: dict[str, Any], model_dir: Path) -> Path:
    """Copy ``model_dir`` into the cache under ``key_parts``; returns the cached model directory."""
    ignore = shutil.ignore_patterns("trainer", "checkpoint-*")
    entry = _store(cache_root, key_parts, lambda staging: shutil.copytree(model_dir, staging / MODEL_DIR, ignore=ignore))
    return entry / MODEL_DIR


def restore_files(cache_root: Path, key_parts: dict[str, Any], files: Sequence[Path]) -> bool:
    """Copy the cached ``files`` (stored by name) for exactly ``key_parts`` into place; False, and
    nothing written, when there is no such entry or it lacks one of them."""
    entry = _entry(cache_root, key_parts)
    if entry is None or not all((entry / Path(f).name).is_file() for f in files):
        return False
    for f in files:
        Path(f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(entry / Path(f).name, f)
    return True


def store_files(cache_root: Path, key_parts: dict[str, Any], files: Sequence[Path]) -> None:
    """Copy ``files`` (distinct names) into the cache under ``key_parts``."""

    def fill(staging: Path) -> None:
        for f in files:
            shutil.copyfile(f, staging / Path(f).name)

    _store(cache_root, key_parts, fill)


@functools.cache
def source_sha256() -> str:
    """Hash of the package's Python source (every ``.py`` under ``agentrft/``, by relative path)."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def rollout_code_parts() -> dict[str, Any]:
    """What, beside their inputs, decides the rollouts and grades a step produces: the package's source,
    the versions of the libraries that decode and embed, and the CPU's kernels and core count (the same
    weights sample other tokens on an AVX-512 build than on an AVX2 one)."""
    from importlib.metadata import version

    import torch

    return {
        "agentrft_source_sha256": source_sha256(),
        "libraries": {name: version(name) for name in ("torch", "transformers", "sentence-transformers")},
        "cpu": {"capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
                "threads": torch.get_num_threads()},
    }


__all__ = ["RECIPE", "cache_key", "cached_warm_model", "hash_paths", "restore_files", "rollout_code_parts",
           "source_sha256", "store_files", "store_warm_model", "warm_start_key_parts"]
