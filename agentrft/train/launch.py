"""Multi-GPU: re-execute ``agentrft train`` under ``accelerate launch``.

``agentrft train FILE --launcher accelerate --num-processes N`` becomes
``python -m accelerate.commands.launch --num_processes N [--multi_gpu] -m agentrft.cli train FILE``:
accelerate starts N processes with the distributed environment set, and each runs the ordinary
single-process command, which TRL turns into data-parallel GRPO (each process rolls out its share
of the prompts; rewards are gathered so every group is normalised across processes). Extra
``accelerate`` settings (DeepSpeed, FSDP, mixed precision) come from the user's ``accelerate
config`` file as usual, or from ``ACCELERATE_CONFIG_FILE``. Two processes on CPU (gloo) were run
with ``torchrun --nproc_per_node 2 -m agentrft.cli train FILE``: accelerate's own CPU launcher
starts a single process, so ``--launcher accelerate`` asks for one GPU per process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..errors import UserError

LAUNCHED_ENV = "AGENTRFT_LAUNCHED"


def accelerate_command(
    config_file: Path, num_processes: int, resume: bool = False, multi_gpu: bool | None = None
) -> list[str]:
    """The command line that runs this training config under ``accelerate launch``."""
    if num_processes < 1:
        raise UserError(f"--num-processes: must be at least 1, got {num_processes}")
    if multi_gpu is None:
        multi_gpu = num_processes > 1
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if multi_gpu:
        command.append("--multi_gpu")
    command += ["-m", "agentrft.cli", "train", str(config_file)]
    if resume:
        command.append("--resume")
    return command


def relaunch(config_file: Path, num_processes: int, resume: bool = False) -> int:
    """Run the training under accelerate and return its exit code (the child prints its own errors)."""
    if os.environ.get(LAUNCHED_ENV):
        raise UserError("--launcher accelerate: already running under accelerate; drop --launcher")
    import torch

    gpus = torch.cuda.device_count()
    if num_processes > 1 and gpus < num_processes:
        # accelerate's CPU launcher starts one process; a CPU dry run of N processes needs torchrun.
        raise UserError(
            f"--num-processes: {num_processes} processes need {num_processes} GPUs, this machine has {gpus} "
            f"(on CPU try: torchrun --nproc_per_node {num_processes} -m agentrft.cli train {config_file})"
        )
    command = accelerate_command(config_file, num_processes, resume, multi_gpu=num_processes > 1)
    env = dict(os.environ, **{LAUNCHED_ENV: "1"})
    return subprocess.call(command, env=env)


__all__ = ["accelerate_command", "relaunch"]
