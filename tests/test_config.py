"""Step 5: the config loads the tutorial's YAML as written, names bad fields, and warns usefully."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentrft.errors import UserError
from agentrft.config import TrainConfig, check_config, load_config

REPO = Path(__file__).resolve().parents[1]
TUTORIAL_YAML = REPO / "examples" / "step5_config.yaml"
TINY_YAML = REPO / "examples" / "tiny_config.yaml"


def _rows(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for row_id in ids:
            handle.write(json.dumps({"id": row_id, "prompt": f"question {row_id}?", "reference_answer": "1"}) + "\n")


@pytest.fixture
def tutorial_dir(tmp_path: Path) -> Path:
    """The tutorial's YAML next to a data/ folder with disjoint train and val rows."""
    shutil.copy(TUTORIAL_YAML, tmp_path / "step5_config.yaml")
    _rows(tmp_path / "data" / "research_train.jsonl", [f"train-{i}" for i in range(40)])
    _rows(tmp_path / "data" / "research_val.jsonl", [f"val-{i}" for i in range(8)])
    return tmp_path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentrft.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_tutorial_yaml_loads_as_written(tutorial_dir: Path) -> None:
    cfg = load_config(tutorial_dir / "step5_config.yaml")
    assert (cfg.algorithm, cfg.group_size, cfg.kl_coef, cfg.learning_rate, cfg.epochs) == ("grpo", 8, 0.01, 1e-5, 2)
    assert (cfg.batch_size, cfg.max_trajectory_tokens, cfg.max_tool_calls, cfg.warmup_steps, cfg.seed) == (
        16, 4096, 12, 5, 42,
    )
    assert cfg.base_model == "Qwen/Qwen2.5-7B-Instruct"
    assert cfg.lora is not None and (cfg.lora.rank, cfg.lora.alpha) == (32, 64)
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    # relative paths follow the YAML file, not the working directory
    assert cfg.train_path == (tutorial_dir / "data" / "research_train.jsonl").resolve()
    assert cfg.output_dir.is_absolute() and cfg.output_dir.is_relative_to(tutorial_dir.resolve())
    assert cfg.trajectories_per_step == 128
    assert check_config(cfg) == []


def test_every_field_is_documented() -> None:
    from agentrft.config import LoraBlock

    for model in (TrainConfig, LoraBlock):
        missing = [name for name, field in model.model_fields.items() if not field.description]
        assert not missing, f"{model.__name__} fields without a description: {missing}"


def test_config_check_cli_passes_on_tutorial_yaml(tutorial_dir: Path) -> None:
    result = _cli("config", "check", str(tutorial_dir / "step5_config.yaml"))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "warning:" not in result.stdout and "(0 warnings)" in result.stdout
    assert "error" not in result.stderr


def test_config_check_cli_names_the_bad_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm: grpo\ngroup_size: eight\nlora:\n  rnk: 8\n")
    result = _cli("config", "check", str(bad))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert any(f"{bad}:2: group_size" in line for line in lines), lines
    assert any(f"{bad}:4: lora.rnk" in line for line in lines), lines
    assert all(line.startswith("error: ") for line in lines)


def test_unknown_algorithm_and_missing_file_are_errors(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("algorithm: ppo\n")
    with pytest.raises(UserError, match=r"c.yaml:1: algorithm"):
        load_config(cfg_file)
    cfg_file.write_text("train_path: nowhere.jsonl\n")
    with pytest.raises(UserError, match=r"train_path: no such file"):
        check_config(load_config(cfg_file))
    with pytest.raises(UserError, match="no such file"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")


def test_warnings_teach(tutorial_dir: Path) -> None:
    cfg_file = tutorial_dir / "risky.yaml"
    cfg_file.write_text(
        "group_size: 2\nkl_coef: 0.2\nlearning_rate: 2.0e-4\nepochs: 5\nbatch_size: 4\n"
        "train_path: data/research_train.jsonl\nval_path: data/overlap.jsonl\n"
    )
    _rows(tutorial_dir / "data" / "overlap.jsonl", ["train-1", "val-x"])
    warnings = check_config(load_config(cfg_file))
    text = "\n".join(warnings)
    for field in ("group_size", "kl_coef", "learning_rate", "epochs", "val_path"):
        assert any(w.startswith(field + ":") for w in warnings), (field, text)
    assert "disjoint" in text and "train-1" in text
    result = _cli("config", "check", str(cfg_file))
    assert result.returncode == 0 and result.stdout.count("warning:") == 5


def test_sizes_must_divide(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("batch_size: 3\ngroup_size: 5\nmicro_batch_size: 4\n")
    with pytest.raises(UserError, match="micro_batch_size"):
        load_config(cfg_file)


def test_token_from_env_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token.txt").write_text("from-file\n")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("tools_token_env: MY_TOKEN\ntools_token_file: token.txt\n")
    cfg = load_config(cfg_file)
    monkeypatch.delenv("MY_TOKEN", raising=False)
    assert cfg.tools_token() == "from-file"
    monkeypatch.setenv("MY_TOKEN", "from-env")
    assert cfg.tools_token() == "from-env"


def test_tiny_config_loads() -> None:
    if not TINY_YAML.exists():
        pytest.fail("examples/tiny_config.yaml is missing")
    cfg = load_config(TINY_YAML)
    assert (cfg.temperature, cfg.kl_coef, cfg.learning_rate, cfg.batch_size, cfg.group_size) == (
        0.7, 0.03, 3e-4, 8, 8,
    )
    assert cfg.lora is None and cfg.micro_batch_size == 64
