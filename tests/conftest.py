"""Shared fixtures: a small generated corpus, the real tool server on loopback, a tiny model, a vLLM server on it.

Each is built once per test session and shared, since the tiny model and the search index take
seconds to build on two cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOOL_TOKEN = "test-token-123"


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated dataset: corpus/filings/*.html plus research_train.jsonl / research_val.jsonl."""
    from agentrft.filings.synth import synth

    out = tmp_path_factory.mktemp("synth")
    synth(out, companies=4, seed=0)
    return out


@pytest.fixture(scope="session")
def corpus_dir(synth_dir: Path) -> Path:
    return synth_dir / "corpus"


@pytest.fixture(scope="session")
def tool_server(corpus_dir: Path):
    """The real filings tool server on a free 127.0.0.1 port; yields its base URL."""
    from agentrft.tools.local_server import running_server

    with running_server(corpus_dir=corpus_dir, token=TOOL_TOKEN) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_model_dir(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly built tiny Qwen2 model with its locally trained tokenizer (a few pretraining steps only)."""
    from agentrft.filings.model.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-model")
    return build_tiny_model(corpus_dir, out, seed=0, induction_steps=20, lookup_steps=10)


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir: Path):
    """A real vLLM server (CPU build, from .venv-vllm) on the tiny model in fp32, like the transformers
    reference; LoRA adapters (rank ≤ 8) and full-weight reloading both on. Yields the ``VLLMServer``."""
    from agentrft.agent.vllm import VLLMServer

    with VLLMServer(tiny_model_dir, dtype="float32", lora_rank=8, dev_mode=True) as server:
        yield server


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``agentrft ARGS`` in this process: (exit code, stdout, stderr)."""
    from agentrft.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
