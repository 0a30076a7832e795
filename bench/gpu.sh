#!/usr/bin/env bash
# The prepared check for a lent GPU machine (torch, transformers, peft, accelerate; no TRL, no vLLM, no
# downloads): agentrft plan's memory items against a measured LoRA training step, at two model sizes.
# Runs in a few minutes; everything it prints is also written to $OUT (when set) as gpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python - <<'PY'
import importlib
for name in ("torch", "transformers", "peft", "accelerate", "trl", "vllm", "pydantic", "typer", "rich"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as exc:  # what is missing decides what can be measured
        print(f"{name} missing ({type(exc).__name__})")
PY
python bench/gpu.py --models "${MODELS:-Qwen/Qwen2.5-0.5B-Instruct,Qwen/Qwen2.5-7B-Instruct}" --micro "${MICRO:-2}" \
  --tokens "${TOKENS:-4096}" 2>&1 | tee "${OUT:-/tmp}/gpu.txt"
