"""What the CPU can do fast, for the choices that depend on it."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


SMALL_MODEL_PARAMETERS = 50_000_000
"""Below this many parameters a decoding step's matrix products (a batch of rollouts × a hidden size of a
few hundred) are too small for a second CPU thread to pay for its synchronisation."""


def decoding_threads(model: object) -> int | None:
    """Torch CPU threads for decoding ``model``: 1 for a small model on a CPU, None (torch's setting) otherwise."""
    parameters = list(model.parameters())  # type: ignore[attr-defined]
    if not parameters or parameters[0].device.type != "cpu":
        return None
    return 1 if sum(p.numel() for p in parameters) < SMALL_MODEL_PARAMETERS else None


def decoding_workers(threads: int | None) -> int:
    """Batches decoded at the same time: one per CPU core where each decodes on ``threads`` = 1 (a small
    model on a CPU, whose steps leave the other cores idle), else one."""
    if threads != 1:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Torch's CPU threads set to ``threads`` in the calling thread for the block (None: unchanged), then restored."""
    import torch

    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
