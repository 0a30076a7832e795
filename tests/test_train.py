"""Step 6: GRPO through TRL with agentrft's agent loop, on the tiny model and the real tool server.

The untrained tiny model rarely writes a tool call, so the runner used here opens every rollout with
one scripted ``search`` call (its ids appended as if sampled) and then lets the real LocalPolicy
continue through the real agent loop and tool server. That guarantees tool output inside every
trajectory, which is what the loss-mask assertions need.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentrft.schema import Grade, MetricsRow, Row, ToolCallTurn, ToolResultTurn, Trajectory
from agentrft.config import TrainConfig, config_from_dict
from agentrft.train.abort import AbortRules
from agentrft.train.metrics import read_metrics, trim_metrics
from agentrft.train.rollout import REQUIRED_KEYS, check_trl_contract, to_trl_batch

from conftest import TOOL_TOKEN

COLUMNS = ("step", "val_reward", "tool_calls", "kl_to_ref", "loss", "train_reward", "reward_std",
           "zero_std_groups", "grad_norm", "step_time_s")


# --- a runner that guarantees one tool call per rollout ----------------------------------------


def scripted_runner(tools_url: str, token: str, max_new_tokens: int = 24) -> Any:
    """The real agent loop and LocalPolicy, with the first turn of each rollout scripted as a search."""
    from agentrft.agent import render
    from agentrft.agent.local import LocalPolicy
    from agentrft.agent.loop import RolloutSettings, rollout
    from agentrft.agent.parse import parse_reply

    class FirstCallSearches(LocalPolicy):
        def generate_sync(self, episodes, settings, on_reply=None):  # type: ignore[no-untyped-def]
            # replies come back together at the end (the loop takes those not handed over early)
            first = [e for e in episodes if e.replies == 0]
            rest = [e for e in episodes if e.replies > 0]
            replies = dict(zip(map(id, rest), super().generate_sync(rest, settings) if rest else []))
            for episode in first:
                render.start(episode, self.tokenizer)
                text = '<tool_call>\n{"name": "search", "arguments": {"query": %s}}\n</tool_call>' % json.dumps(
                    episode.row.prompt[:60]
                )
                ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
                prefix = list(episode.token_ids)
                render.append_generated(episode, ids, [-1.0] * len(ids))
                replies[id(episode)] = parse_reply(self.tokenizer, ids, prefix, episode.tools, True)
            return [replies[id(e)] for e in episodes]

    def run(rows, model, tokenizer, greedy, seed):  # type: ignore[no-untyped-def]
        settings = RolloutSettings(
            max_tool_calls=2, max_trajectory_tokens=1024, max_new_tokens=max_new_tokens,
            temperature=0.0 if greedy else 0.7, seed=seed,
        )
        policy = FirstCallSearches(model, tokenizer)
        return rollout(rows, policy, tools_url, token, settings)

    return run


class OddTokenGrader:
    """A grader with spread: the share of odd token ids the policy sampled after its scripted call.

    Sampled text varies within every group, so GRPO always has advantages to follow.
    """

    name = "odd_tokens"

    def grade(self, row: Row, trajectory: Trajectory) -> Grade:
        ids, mask = trajectory.token_ids or [], trajectory.loss_mask or []
        sampled = [tok for tok, m in zip(ids, mask) if m][-24:]
        return Grade(reward=sum(tok % 2 for tok in sampled) / max(1, len(sampled)), grader=self.name)


def _config(tmp: Path, synth_dir: Path, model_dir: Path, url: str, **overrides: Any) -> TrainConfig:
    data = dict(
        train_path=str(synth_dir / "research_train.jsonl"), val_path=str(synth_dir / "research_val.jsonl"),
        base_model=str(model_dir), tools_url=url, group_size=4, batch_size=2, max_steps=3,
        val_every=2, val_subset=4, save_every=2, max_new_tokens=24, max_trajectory_tokens=1024,
        max_tool_calls=2, temperature=0.7, kl_coef=0.03, learning_rate=1e-4, warmup_steps=0, seed=0,
        output_dir=str(tmp / "run"), lora={"rank": 8, "alpha": 16}, trace_samples=2,
    )
    data.update(overrides)
    return config_from_dict(data)


# --- the TRL contract (experimental API) ------------------------------------------------------


def test_trl_rollout_func_contract_is_what_we_build_on() -> None:
    from trl import GRPOTrainer
    from trl.trainer import grpo_trainer

    check_trl_contract()
    assert "rollout_func" in inspect.signature(GRPOTrainer.__init__).parameters
    source = inspect.getsource(grpo_trainer.GRPOTrainer._generate)
    assert 'required_keys = {"prompt_ids", "completion_ids", "logprobs"}' in source
    assert set(REQUIRED_KEYS) == {"prompt_ids", "completion_ids", "logprobs"}
    assert 'extra_fields.pop("env_mask", None)' in source  # our loss mask becomes TRL's tool_mask
    merge = inspect.getsource(grpo_trainer.GRPOTrainer._generate_and_score_completions)
    assert "inp[key] = values[i]" in merge  # extra fields (our trajectories) reach the reward function


def test_to_trl_batch_splits_at_prompt_and_aligns_logprobs() -> None:
    t = Trajectory(row_id="r", token_ids=[1, 2, 3, 10, 11, 20, 21, 12], loss_mask=[0, 0, 0, 1, 1, 0, 0, 1],
                   prompt_length=3, logprobs=[-0.1, -0.2, -0.3])
    batch = to_trl_batch([t], pad_token_id=0)
    assert batch["prompt_ids"] == [[1, 2, 3]]
    assert batch["completion_ids"] == [[10, 11, 20, 21, 12]]
    assert batch["env_mask"] == [[1, 1, 0, 0, 1]]
    assert batch["logprobs"] == [[-0.1, -0.2, 0.0, 0.0, -0.3]]
    empty = Trajectory(row_id="e", token_ids=[1, 2], loss_mask=[0, 0], prompt_length=2, logprobs=[])
    assert to_trl_batch([empty], pad_token_id=9)["completion_ids"] == [[9]]
    with pytest.raises(RuntimeError, match="local policy"):
        to_trl_batch([Trajectory(row_id="x")], pad_token_id=0)


# --- abort rules and metrics trimming (pure) ----------------------------------------------------


def test_the_config_reaches_grpo_config(tmp_path: Path) -> None:
    """Every optimisation knob of the config lands on the TRL field it is documented to set."""
    from agentrft.train.trainer import grpo_args

    cfg = _config(tmp_path, tmp_path, tmp_path, "http://127.0.0.1:1", group_size=8, batch_size=4,
                  micro_batch_size=16, kl_coef=0.05, scale_rewards="none", loss_type="dr_grpo",
                  updates_per_batch=2, entropy_quantile=0.2, lr_scheduler="constant", temperature=0.9)
    args = grpo_args(cfg, use_cuda=False, world_size=1)
    assert (args.num_generations, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 16, 2)
    assert (args.beta, args.scale_rewards, args.loss_type) == (0.05, "none", "dr_grpo")
    assert (args.num_iterations, args.top_entropy_quantile, args.temperature) == (2, 0.2, 0.9)
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "constant_with_warmup"
    assert grpo_args(_config(tmp_path, tmp_path, tmp_path, "http://127.0.0.1:1"), False, 1).top_entropy_quantile == 1.0
    with pytest.raises(Exception, match="entropy_quantile"):
        _config(tmp_path, tmp_path, tmp_path, "http://127.0.0.1:1", entropy_quantile=0)


def test_per_slice_training_reward_reaches_the_metrics_row_and_its_trend() -> None:
    from agentrft.train.metrics import metrics_row, slice_trend
    from agentrft.train.rollout import reward_by_slice

    def row(task: str, difficulty: str) -> Row:
        return Row.model_validate({"id": f"{task}-{difficulty}", "prompt": "q", "reference_answer": "1",
                                   "metadata": {"task_type": task, "difficulty": difficulty}})

    rows = [row("lookup", "easy"), row("lookup", "easy"), row("lookup", "hard"), row("math", "easy")]
    grades = [Grade(reward=r, grader="numeric") for r in (1.0, 0.0, None, 0.25)]
    # an ungraded rollout is left out of its slice's mean, and a slice with nothing graded is left out
    assert reward_by_slice(rows, grades) == {"lookup/easy": 0.5, "math/easy": 0.25}
    logged = metrics_row(3, 0.5, {"loss": 0.1, "reward_by_slice/lookup/easy": 0.5, "reward_by_slice/math/easy": "nan?"})
    assert logged.train_reward_by_slice == {"lookup/easy": 0.5} and logged.loss == 0.1
    assert metrics_row(4, 0.5, {"loss": 0.1}).train_reward_by_slice is None

    history = [MetricsRow(step=s, train_reward_by_slice={"a/x": s / 10, **({"b/y": 1.0} if s == 2 else {})})
               for s in range(1, 9)]
    # a/x over 8 steps: the first 2 against the last 2; b/y was trained in one step only
    assert slice_trend(history) == {"a/x": (pytest.approx(0.15), pytest.approx(0.75), 8)}


def test_abort_rules() -> None:
    cfg = TrainConfig(abort_kl_max=1.0, abort_kl_jump=10.0, abort_kl_jump_min=0.05, abort_val_floor=0.2,
                      warmup_steps=3)
    rules = AbortRules(cfg)
    for step, kl in enumerate([0.0, 0.01, 0.012, 0.011], 1):
        assert rules.check(MetricsRow(step=step, kl_to_ref=kl, loss=0.1)) is None
    jump = rules.check(MetricsRow(step=5, kl_to_ref=0.5, loss=0.1))
    assert jump is not None and "running mean" in jump
    assert "ceiling" in (AbortRules(cfg).check(MetricsRow(step=1, kl_to_ref=3.0)) or "")
    assert "loss is nan" in (AbortRules(cfg).check(MetricsRow(step=1, loss=math.nan)) or "")
    assert AbortRules(cfg).check(MetricsRow(step=2, val_reward=0.1)) is None  # still in warm-up
    assert "floor" in (AbortRules(cfg).check(MetricsRow(step=4, val_reward=0.1)) or "")
    off = TrainConfig(abort_kl_max=None, abort_kl_jump=None, abort_nonfinite_loss=False)
    assert AbortRules(off).check(MetricsRow(step=1, kl_to_ref=50.0, loss=math.inf)) is None


def test_trim_metrics_drops_rows_and_traces_after_checkpoint(tmp_path: Path) -> None:
    from agentrft.jsonl import write_models

    write_models(tmp_path / "metrics.jsonl", [MetricsRow(step=s) for s in range(6)])
    (tmp_path / "traces").mkdir()
    for s in (2, 4, 5):
        (tmp_path / "traces" / f"step-{s:04d}.jsonl").write_text("")
    assert trim_metrics(tmp_path, 4) == 1
    assert [r.step for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "traces").iterdir()) == ["step-0002.jsonl", "step-0004.jsonl"]


# --- end to end on the tiny model ---------------------------------------------------------------


def test_grpo_steps_metrics_mask_and_checkpoint(
    tmp_path: Path, synth_dir: Path, tiny_model_dir: Path, tool_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from trl import GRPOTrainer

    from agentrft.train.trainer import train

    torch.set_num_threads(1)
    reached_trl: list[dict[str, Any]] = []
    original = GRPOTrainer._generate_and_score_completions

    @functools.wraps(original)  # check_trl_contract reads the wrapped method's source
    def spy(self, inputs):  # type: ignore[no-untyped-def]
        prompts = [x["prompt"] for x in inputs]
        groups = [prompts[i : i + self.num_generations] for i in range(0, len(prompts), self.num_generations)]
        assert all(len(set(g)) == 1 for g in groups), "TRL no longer repeats each prompt num_generations times"
        out = original(self, inputs)
        seen = {k: out[k].detach().cpu() for k in ("completion_ids", "completion_mask", "tool_mask")}
        reached_trl.append(seen | {"trajectories": list(self.rollouts.last.trajectories)})
        return out

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", spy)
    cfg = _config(tmp_path, synth_dir, tiny_model_dir, tool_server)
    monkeypatch.setenv("TOOL_BEARER", TOOL_TOKEN)
    result = train(cfg, runner=scripted_runner(tool_server, TOOL_TOKEN))

    assert result.aborted is None and result.steps == 3
    rows = read_metrics(cfg.output_dir / "metrics.jsonl")
    assert [r.step for r in rows] == [0, 1, 2, 3]
    assert rows[0].val_reward is not None  # the base model's val reward, before any update
    for row in rows[1:]:
        for column in COLUMNS:
            if column != "val_reward":
                assert getattr(row, column) is not None, (row.step, column)
        assert row.tool_calls >= 1.0  # every rollout searched at least once
    assert rows[2].val_reward is not None and rows[3].val_reward is not None
    raw = json.loads((cfg.output_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert raw["schema_version"] == 1 and set(COLUMNS) <= raw.keys()
    assert rows[0].train_reward_by_slice is None  # step 0 measures val only

    # Each step's reward by slice is its rollouts' grades averaged within each training row's slice.
    from agentrft.graders import default_grader
    from agentrft.jsonl import read_models
    from agentrft.train.rollout import reward_by_slice

    train_rows = {r.id: r for r in read_models(cfg.train_path, Row)}
    grader = default_grader()
    for row, batch in zip(rows[1:], reached_trl, strict=True):
        graded = [train_rows[t.row_id] for t in batch["trajectories"]]
        grades = [grader.grade(r, t) for r, t in zip(graded, batch["trajectories"])]
        assert row.train_reward_by_slice == pytest.approx(reward_by_slice(graded, grades))

    # The loss mask that reached TRL's loss is 0 on every tool result and 1 on the policy's own turns.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert len(reached_trl) == 3
    for batch in reached_trl:
        loss_mask = (batch["completion_mask"] * batch["tool_mask"]).tolist()
        for ids, mask, trajectory in zip(batch["completion_ids"].tolist(), loss_mask, batch["trajectories"]):
            outputs = [t.output for t in trajectory.turns if isinstance(t, ToolResultTurn)]
            assert outputs, "every trajectory has a tool result"
            masked = tok.decode([i for i, m in zip(ids, mask) if m == 0])
            trained = tok.decode([i for i, m in zip(ids, mask) if m == 1])
            for output in outputs:
                assert output[:40] in masked and output[:40] not in trained
            call = next(t for t in trajectory.turns if isinstance(t, ToolCallTurn))
            assert call.name in trained and mask[0] == 1  # the policy's own call carries the gradient

    traces = sorted((cfg.output_dir / "traces").glob("step-*.jsonl"))
    assert [p.name for p in traces] == ["step-0001.jsonl", "step-0002.jsonl", "step-0003.jsonl"]
    first = json.loads(traces[0].read_text().splitlines()[0])
    assert first["trajectory"]["turns"] and "reward" in first

    # The last checkpoint holds adapters + optimizer state, and the model it holds loads and generates.
    assert result.last_checkpoint is not None and result.last_checkpoint.name == "checkpoint-3"
    assert (result.last_checkpoint / "adapter_model.safetensors").exists()
    assert (result.last_checkpoint / "optimizer.pt").exists()
    assert result.best_dir is not None and (result.best_dir / "best.json").exists()
    from agentrft.agent.local import LocalPolicy
    from agentrft.agent.loop import RolloutSettings, rollout

    policy = LocalPolicy.from_pretrained(result.last_checkpoint)
    row = Row.model_validate_json((synth_dir / "research_val.jsonl").read_text().splitlines()[0])
    [trajectory] = rollout([row], policy, tool_server, TOOL_TOKEN,
                           RolloutSettings(max_new_tokens=16, max_trajectory_tokens=1024, temperature=0.0))
    assert sum(trajectory.loss_mask or []) > 0


def test_kl_explosion_aborts_with_reason(
    tmp_path: Path, synth_dir: Path, tiny_model_dir: Path, tool_server: str
) -> None:
    import torch

    from agentrft.train.trainer import train

    torch.set_num_threads(1)
    cfg = _config(tmp_path, synth_dir, tiny_model_dir, tool_server, learning_rate=0.05, max_steps=6, lora=None,
                  val_every=10, abort_kl_max=0.5, kl_coef=0.01, max_new_tokens=32)
    result = train(cfg, runner=scripted_runner(tool_server, TOOL_TOKEN, max_new_tokens=32), grader=OddTokenGrader())
    assert result.aborted is not None and ("kl_to_ref" in result.aborted or "loss" in result.aborted)
    assert result.steps < 6
    rows = read_metrics(cfg.output_dir / "metrics.jsonl")
    assert rows[-1].abort == result.aborted and rows[-1].step == result.abort_step
    assert all(r.abort is None for r in rows[:-1])
    assert result.best_dir is not None and json.loads((result.best_dir / "best.json").read_text())["step"] == 0
    assert not any(p.name == f"checkpoint-{result.steps}" for p in (cfg.output_dir / "checkpoints").iterdir())


def test_resume_after_kill_has_no_gap_or_duplicate(
    tmp_path: Path, synth_dir: Path, tiny_model_dir: Path, tool_server: str
) -> None:
    config = {
        "train_path": str(synth_dir / "research_train.jsonl"), "val_path": str(synth_dir / "research_val.jsonl"),
        "base_model": str(tiny_model_dir), "tools_url": tool_server, "group_size": 2, "batch_size": 2,
        "max_steps": 4, "save_every": 2, "val_every": 4, "val_subset": 1, "max_new_tokens": 8,
        "max_trajectory_tokens": 1024, "max_tool_calls": 2, "temperature": 0.7, "kl_coef": 0.03,
        "learning_rate": 1.0e-4, "warmup_steps": 0, "seed": 0, "output_dir": "run",
        "lora": {"rank": 8, "alpha": 16},
    }
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    env = dict(os.environ, TOOL_BEARER=TOOL_TOKEN, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "agentrft.cli", "train", str(cfg_file)]
    metrics = tmp_path / "run" / "metrics.jsonl"

    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    try:
        # Step 3's row is written after checkpoint-2 is complete; kill before step 4's checkpoint.
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and any(r.step == 3 for r in read_metrics(metrics)):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        output = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, output
    before = [r.step for r in read_metrics(metrics)]
    assert 3 in before and 4 not in before
    # A kill in the middle of a checkpoint write leaves a folder with weights but no trainer state.
    partial = tmp_path / "run" / "checkpoints" / "checkpoint-4"
    partial.mkdir(exist_ok=True)
    (partial / "model.safetensors").write_bytes(b"cut short")

    # The resumed run also goes through the accelerate launcher (one process on CPU).
    relaunch = command + ["--resume", "--launcher", "accelerate", "--num-processes", "1"]
    done = subprocess.run(relaunch, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resume: continuing from checkpoint-2" in done.stdout
    assert (partial / "trainer_state.json").is_file()  # written again, whole, by the resumed run
    steps = [r.step for r in read_metrics(metrics)]
    assert steps == [0, 1, 2, 3, 4], steps
    assert "done: 4 steps" in done.stdout


def test_train_cli_errors_are_one_line(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("group_size: 8\nkl_coef: lots\n")
    result = subprocess.run([sys.executable, "-m", "agentrft.cli", "train", str(cfg_file)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {cfg_file}:2: kl_coef: Input should be a valid number, unable to parse string as a number"


def test_accelerate_command_line(tmp_path: Path) -> None:
    from agentrft.train.launch import accelerate_command

    command = accelerate_command(tmp_path / "c.yaml", 4, resume=True)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "4" and "--multi_gpu" in command
    assert command[-5:] == ["-m", "agentrft.cli", "train", str(tmp_path / "c.yaml"), "--resume"]


def test_accelerate_launcher_asks_for_one_gpu_per_process(tmp_path: Path) -> None:
    import torch

    from agentrft.errors import UserError
    from agentrft.train.launch import relaunch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs; the refusal only applies without them")
    with pytest.raises(UserError, match="--num-processes: 2 processes need 2 GPUs"):
        relaunch(tmp_path / "c.yaml", 2)


def test_read_metrics_drops_a_cut_last_line_and_names_a_bad_one(tmp_path: Path) -> None:
    from agentrft.errors import UserError

    path = tmp_path / "metrics.jsonl"
    good = [MetricsRow(step=0, val_reward=0.5).model_dump_json(), MetricsRow(step=1, loss=0.1).model_dump_json()]
    path.write_text("\n".join(good) + "\n" + good[1][:17])  # killed in the middle of a write
    assert [row.step for row in read_metrics(path)] == [0, 1]
    path.write_text(good[0] + "\n{\"step\": \"x\"}\n" + good[1] + "\n")
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not a metrics row"):
        read_metrics(path)


def test_files_of_an_older_run_still_read(tmp_path: Path) -> None:
    from agentrft.train.checkpoints import BEST_INFO, best_dir, read_best

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "reward": 0.25, "a_column_since_dropped": 1}\n{"step": 1, "loss": 0.5}\n')
    rows = read_metrics(path)
    assert [(r.step, r.train_reward, r.loss) for r in rows] == [(0, 0.25, None), (1, None, 0.5)]
    assert read_best(tmp_path) is None
    best_dir(tmp_path).mkdir(parents=True)
    (best_dir(tmp_path) / BEST_INFO).write_text('{"step": 3, "val_reward": 0.5}\n')  # written before it had a version
    best = read_best(tmp_path)
    assert best is not None and (best.step, best.val_reward, best.schema_version) == (3, 0.5, 1)


def test_the_live_table_prints_a_value_that_rounds_to_zero_without_its_sign() -> None:
    from agentrft.schema import MetricsRow
    from agentrft.train.live import _row_line

    line = _row_line(MetricsRow(step=1, kl_to_ref=-1e-9, loss=-0.03))
    assert " 0.000 " in f"{line} " and "-0.000" not in line and "-0.03" in line
