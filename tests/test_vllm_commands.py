"""The commands that take a model, with ``--engine vllm``: eval, prior-check and serve through a real vLLM server.

They share the session's server (tests/conftest.py ``vllm_server``) through ``--vllm-url``; a LoRA adapter
folder is served on its base model with the adapter loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from agentrft.cli import main
from agentrft.jsonl import read_models
from agentrft.schema import EvalRecord

from conftest import TOOL_TOKEN

pytestmark = pytest.mark.timeout(600)


def run(argv: list[str]) -> None:
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None), argv


def test_eval_and_prior_check_roll_out_through_vllm(
    tmp_path: Path, synth_dir: Path, tiny_model_dir: Path, tool_server: str, vllm_server, monkeypatch
) -> None:
    monkeypatch.setenv("TOOL_BEARER", TOOL_TOKEN)
    val = synth_dir / "research_val.jsonl"
    out = tmp_path / "eval.jsonl"
    run(["eval", "--model", str(tiny_model_dir), "--engine", "vllm", "--vllm-url", vllm_server.url, "--data",
         str(val), "--out", str(out), "--tools-url", tool_server, "--limit", "3", "--samples", "2",
         "--temperature", "0.7"])
    records = read_models(out, EvalRecord)
    assert len(records) == 6 and all(r.reward is not None for r in records)
    traces = [json.loads(line) for line in (tmp_path / "eval.traces.jsonl").read_text().splitlines()]
    assert all(t["token_ids"] and sum(t["loss_mask"]) > 0 for t in traces)  # token-in / token-out

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(dict(
        base_model=str(tiny_model_dir), val_path=str(val), train_path=str(synth_dir / "research_train.jsonl"),
        tools_url=tool_server, max_new_tokens=24, max_trajectory_tokens=1024, temperature=0.7,
        output_dir=str(tmp_path / "run"),
    )))
    run(["prior-check", str(config), "--engine", "vllm", "--vllm-url", vllm_server.url, "--n", "3",
         "--rollouts", "2", "--out", str(tmp_path / "prior.jsonl")])
    assert len((tmp_path / "prior.jsonl").read_text().splitlines()) == 3


def test_serve_puts_a_lora_adapter_behind_vllm_and_streams(
    tmp_path: Path, tiny_model_dir: Path, corpus_dir: Path, vllm_server
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from agentrft.agent.settings import RolloutSettings
    from agentrft.agent.vllm import vllm_policy
    from agentrft.serve import create_app
    from agentrft.tools.local_server import running_server, serve_app

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tuned = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))
    tuned.save_pretrained(tmp_path / "adapter")  # records the base model's folder in adapter_config.json
    with vllm_policy(tmp_path / "adapter", vllm_server.url) as policy, \
            running_server(corpus_dir=corpus_dir, token=TOOL_TOKEN, embed=False) as tools_url:
        assert policy.adapter_path == (tmp_path / "adapter").resolve() and policy.model == "policy"
        app = create_app(policy, tools_url, TOOL_TOKEN, RolloutSettings(temperature=0, max_new_tokens=16),
                         tmp_path / "traces", api_key="k", concurrent=True)
        with serve_app(app) as url:
            headers = {"Authorization": "Bearer k"}
            body = {"messages": [{"role": "user", "content": "Atlas revenue?"}], "stream": True, "max_tokens": 8}
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120) as reply:
                assert reply.headers["content-type"].startswith("text/event-stream")
                events = [line for line in reply.iter_lines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
            assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
            agent = httpx.post(f"{url}/v1/agent", json={"prompt": "Atlas revenue in FY2023?"}, headers=headers,
                               timeout=120)
            assert agent.status_code == 200, agent.text
    policy.use_base_model()
