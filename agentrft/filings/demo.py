"""``agentrft demo``: the nine steps end to end on the embedded tiny model, as a user would type them.

Every step runs the real command (printed first, with ``$``), in the order the work happens: the
dataset and the tools come first because the prior check needs both, and the tiny model is
warm-started before its prior check ("fix the prior first", since no model can be downloaded here).
The tool server runs in this process on a free loopback port with a fresh token for the length of the
demo. The warm-started model is cached under ``--cache`` keyed by seed, version and settings, and so are
the prior check's and the base evaluations' output files, keyed by that model, their rows, config and
grader, the package's source and the CPU: a second demo skips the warm start and those rollouts (the
same inputs on the same machine give the same files) and trains and evaluates the tuned model afresh;
a key that differs never reuses an entry.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import typer
import yaml
from rich.console import Console

from ..errors import UserError
from ..train.cli import ABORT_EXIT_CODE
from .model.cache import (
    cache_key,
    cached_warm_model,
    hash_paths,
    restore_files,
    rollout_code_parts,
    store_files,
    store_warm_model,
    warm_start_key_parts,
)
from .model.measure import strategy_line
from .model.prompts import READ_BUDGET_CHARS

console = Console(highlight=False)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"  # the repository's examples/
GRADER = EXAMPLES / "graders" / "answer_and_tools.yaml"
"""0.8 × the numeric answer + 0.2 × tool use with the evidence read: the answer, and a little the way
it was found; with a real model the numeric grader alone is the tutorial's choice."""
ANSWER_RIGHT = 0.8
"""The success line of the prior check and of step 7's comparisons: the numeric part in full, i.e. the
right figure, whatever the tool use scored. A row can regress by tool use alone (0.2 → 0.133 when the
evidence file goes unread); the comparison tells those apart from rows answered right less often."""


PRIOR_ROWS, PRIOR_ROLLOUTS = 320, 4
"""The prior check runs on every training row, so it can choose what GRPO trains on: every row of each
slice (task type and difficulty) where at least a tenth of the rows are in the signal band. A slice's
other rows are the same kind of question, and four failed tries in the check do not make them
unlearnable; the band's few rows alone would come back many times per run, to be fit as prompts
(``bench/RESULTS.md`` compares the two)."""
EVAL_SAMPLES = 4
"""Sampled rollouts per val row in step 7, beside the greedy one."""
MEASURE_ROWS = 16
"""Training rows the warm start samples (4 rollouts each) before and after, for its strategy shares."""


class StepFailed(Exception):
    """A demo step's command exited non-zero (``code``)."""

    def __init__(self, message: str, code: object = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Demo:
    """Paths and settings shared by the steps."""

    out: Path
    seed: int
    cache: Path
    train_steps: int
    baseline: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    tools_url: str = ""
    base_key: str = ""
    """The cache key of the warm-started model the steps after it run on."""

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def token_file(self) -> Path:
        return self.out / "tool_token"

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / "tiny-rft"

    @property
    def config(self) -> Path:
        return self.out / "config.yaml"


def echo(argv: list[str]) -> None:
    console.print(f"\n[bold cyan]$ agentrft {shlex.join(argv)}[/]")


def agentrft(*args: str | Path) -> None:
    """Run one agentrft command in this process, echoing it the way a user would type it."""
    from ..cli import main  # the CLI registers this module's command: imported when the demo runs

    argv = [str(a) for a in args]
    echo(argv)
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise StepFailed(f"agentrft {argv[0]} exited with {exc.code}", exc.code) from None


@contextmanager
def step(demo: Demo, title: str) -> Iterator[None]:
    console.rule(f"[bold]{title}")
    started = time.perf_counter()
    yield
    demo.timings[title] = time.perf_counter() - started


@contextmanager
def tool_server(demo: Demo) -> Iterator[str]:
    """Step 3: the real tool server, with the read budget the tiny model was built for."""
    from ..tools.local_server import build_registry, serve_app  # FastAPI and uvicorn: not for --help
    from ..tools.server import create_app

    token = secrets.token_urlsafe(24)
    demo.token_file.write_text(token + "\n")
    demo.token_file.chmod(0o600)
    console.print(
        f"[bold cyan]$ agentrft tools serve --corpus {demo.data / 'corpus'} --read-budget {READ_BUDGET_CHARS} "
        f"--token-file {demo.token_file} &[/]"
    )
    registry = build_registry(demo.data / "corpus", read_budget=READ_BUDGET_CHARS, cache_dir=demo.out / ".index")
    with serve_app(create_app(registry, token)) as url:
        console.print(f"serving {', '.join(registry.tools)} on {url}")
        yield url


def write_config(demo: Demo, base_model: Path) -> None:
    """Step 5: the tiny model's config, from the shipped example, pointed at this demo's files."""
    cfg = yaml.safe_load((EXAMPLES / "tiny_config.yaml").read_text())
    cfg.update(
        train_path=str((demo.data / "research_train.jsonl").resolve()),
        val_path=str((demo.data / "research_val.jsonl").resolve()),
        base_model=str(base_model.resolve()),
        tools_url=demo.tools_url,
        tools_token_env=None,
        tools_token_file=str(demo.token_file.resolve()),
        output_dir=str(demo.run_dir.resolve()),
        seed=demo.seed,
        max_steps=demo.train_steps,
        grader=str(GRADER),
    )
    demo.config.write_text(yaml.safe_dump(cfg, sort_keys=False))


def train_on(demo: Demo, rows: Path) -> None:
    """Point the config's train_path at ``rows`` (the learnable slices), as a user would edit it."""
    cfg = yaml.safe_load(demo.config.read_text())
    cfg["train_path"] = str(rows.resolve())
    demo.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    console.print(f"config: train_path → {rows} (the kinds of question where the group rewards can differ)")


def warm_model(demo: Demo) -> Path:
    """The embedded default: build the tiny model and warm-start it, or reuse the cached one."""
    from .model.warm_start import WarmStartResult, WarmStartSettings  # torch, TRL

    rows = demo.data / "research_train.jsonl"
    settings = WarmStartSettings(seed=demo.seed).model_dump()
    key = warm_start_key_parts(demo.seed, demo.data / "corpus", rows, settings)
    demo.base_key = cache_key(key)
    cached = cached_warm_model(demo.cache, key)
    if cached is not None:
        console.print(f"warm-started model found in the cache ({cached}); skipping build and warm start")
        record = cached / "warm_start.json"
        result = WarmStartResult.model_validate_json(record.read_text()) if record.is_file() else None
        if result is not None and result.strategies_after:
            console.print(f"Strategies in {result.measured_rollouts} sampled rollouts at its warm start, before → after:")
            console.print(strategy_line(result.strategies_before or {}, result.strategies_after))
        return cached
    tiny = demo.out / "models" / "tiny"
    warm = demo.out / "models" / "tiny-warm"
    agentrft("model", "tiny", "--corpus", demo.data / "corpus", "--out", tiny, "--seed", demo.seed)
    agentrft("model", "warm-start", "--model", tiny, "--rows", rows, "--tools-url", demo.tools_url,
             "--token-file", demo.token_file, "--out", warm, "--seed", demo.seed, "--measure", MEASURE_ROWS)
    return store_warm_model(demo.cache, key, warm)


RUN_KEYS = ("train_path", "val_path", "base_model", "tools_url", "tools_token_env", "tools_token_file",
            "output_dir", "max_steps")
"""Config keys that name this run's files, port and length: not part of what a rollout step's result
depends on (the rows and the model are keyed by content instead)."""


def rollouts_key(demo: Demo, kind: str, rows: Path, **args: object) -> dict[str, object]:
    """The cache key of a rollout step of the warm-started model: what decides its output files."""
    cfg = yaml.safe_load(demo.config.read_text())
    return {
        "kind": kind,
        "model": demo.base_key,
        "rows_sha256": hash_paths(rows),
        "config": {k: v for k, v in cfg.items() if k not in RUN_KEYS},
        "grader_sha256": hash_paths(GRADER),
        "args": args,
        **rollout_code_parts(),
    }


def cached_command(demo: Demo, key: dict[str, object], files: list[Path], argv: list[str | Path]) -> bool:
    """Put the output ``files`` the command ``argv`` left in the cache under ``key`` in place (True), or run
    it and store them there (False)."""
    if not restore_files(demo.cache, key, files):
        agentrft(*argv)
        store_files(demo.cache, key, files)
        return False
    echo([str(a) for a in argv])
    console.print(f"the same command on the same model, rows, config and code ran before: its "
                  f"{', '.join(f.name for f in files)} from the cache ({demo.cache / cache_key(key)})")
    return True


def prior_check(demo: Demo, train: Path, learnable: Path) -> None:
    """Step 1 on every training row; writes the learnable slices' rows to ``learnable``."""
    from ..jsonl import read_models
    from ..prior import PriorSummary, print_summary
    from ..schema import PriorResult, Row

    results = demo.out / "prior.jsonl"
    argv: list[str | Path] = ["prior-check", demo.config, "--data", train, "--n", PRIOR_ROWS, "--rollouts",
                              PRIOR_ROLLOUTS, "--threshold", ANSWER_RIGHT, "--out", results,
                              "--write-filtered", learnable, "--filter", "slices"]
    key = rollouts_key(demo, "demo-prior-check", train, n=PRIOR_ROWS, rollouts=PRIOR_ROLLOUTS,
                       threshold=ANSWER_RIGHT, filter="slices")
    if cached_command(demo, key, [results, learnable], argv):  # what the command would have printed
        rows = read_models(train, Row)[:PRIOR_ROWS]
        print_summary(rows, PriorSummary.of_results(read_models(results, PriorResult), PRIOR_ROLLOUTS))
        console.print(f"{learnable}: {len(read_models(learnable, Row))} rows to train on")


def run_demo(demo: Demo) -> None:
    demo.out.mkdir(parents=True, exist_ok=True)
    train, val = demo.data / "research_train.jsonl", demo.data / "research_val.jsonl"
    with step(demo, "Step 2 · dataset"):
        agentrft("data", "synth", "--out", demo.data, "--seed", demo.seed)
        agentrft("data", "validate", train, val)
    with ExitStack() as stack:
        with step(demo, "Step 3 · tool servers"):
            demo.tools_url = stack.enter_context(tool_server(demo))
            agentrft("tools", "smoke", "--url", demo.tools_url, "--token-file", demo.token_file)
        _after_tools(demo, train, val)


def _after_tools(demo: Demo, train: Path, val: Path) -> None:
    with step(demo, "Step 4 · grader, tested alone"):
        agentrft("grade", "test", EXAMPLES / "grader_cases.jsonl")
    with step(demo, "Embedded model · build and warm start (fix the prior first)"):
        base = warm_model(demo)
    with step(demo, "Step 5 · config"):
        write_config(demo, base)
        agentrft("config", "check", demo.config)
    with step(demo, "Step 1 · prior check"):
        learnable = demo.data / "train_learnable.jsonl"
        prior_check(demo, train, learnable)
        train_on(demo, learnable)
    with step(demo, "Step 6 · train"):
        if demo.run_dir.exists():  # the demo's own run from an earlier `make demo`: start afresh
            console.print(f"removing the previous demo run in {demo.run_dir}")
            shutil.rmtree(demo.run_dir)
        train_step(demo)
    evaluate(demo, base, val)
    if demo.baseline:
        sft_baseline(demo, base, train, val)
    evals = demo.run_dir / "eval"
    with step(demo, "Step 8 · inspect and report"):
        agentrft("inspect", evals / "base.jsonl", evals / "tuned.jsonl", "--rows", val, "--top", 3)
        agentrft("report", demo.run_dir, "--rows", val)
    with step(demo, "Step 9 · plan"):
        agentrft("plan", "--model", base, "--group-size", 8,
                 "--prompts", 8, "--tokens", 1024, "--gpu-gib", 24)
        agentrft("plan", "--model", "Qwen/Qwen2.5-7B-Instruct")


def train_step(demo: Demo) -> bool:
    """Step 6; False when an abort rule stopped the run. An abort is part of what the demo shows (the run
    stopped before it could wreck the model), and the last checkpoint written before it is still worth
    comparing; any other failure stops the demo."""
    try:
        agentrft("train", demo.config)
    except StepFailed as exc:
        if exc.code != ABORT_EXIT_CODE:
            raise
        console.print("[bold yellow]training stopped on an abort rule (above); step 7 compares the last "
                      "checkpoint written before it[/]")
        return False
    return True


def evaluate(demo: Demo, base: Path, val: Path) -> None:
    """Step 7: base against the last checkpoint, greedy and sampled at the training temperature.

    The last checkpoint, not the best by val reward: the val subset that picks the best checkpoint is
    drawn from the rows compared here, and choosing on them would flatter the tuned model.
    """
    from ..evaluate.records import traces_path_for
    from ..train.trainer import last_checkpoint  # torch, TRL

    temperature = float(yaml.safe_load(demo.config.read_text())["temperature"])  # training's
    tuned = last_checkpoint(demo.run_dir)
    if tuned is None:
        raise StepFailed(f"training left no checkpoint in {demo.run_dir}")
    evals = demo.run_dir / "eval"
    with step(demo, "Step 7 · evaluate base vs tuned"):
        for name, model in (("base", base), ("tuned", tuned)):
            for suffix, sampling in (("", []), ("-sampled", ["--samples", EVAL_SAMPLES, "--temperature", temperature])):
                out = evals / f"{name}{suffix}.jsonl"
                argv = ["eval", "--model", model, "--data", val, "--out", out, "--config", demo.config,
                        "--grader", GRADER, *sampling]
                if name == "tuned":
                    agentrft(*argv)
                else:  # records point at their trajectories by file name: both files are kept
                    key = rollouts_key(demo, "demo-base-eval", val, sampling=[str(a) for a in sampling])
                    cached_command(demo, key, [out, traces_path_for(out)], argv)
        console.print("\n[bold]Greedy, one rollout per row:[/]")
        agentrft("compare", evals / "base.jsonl", evals / "tuned.jsonl", "--rows", val, "--threshold", ANSWER_RIGHT)
        console.print(f"\n[bold]Sampled at the training temperature {temperature:g}, {EVAL_SAMPLES} rollouts per row:[/]")
        agentrft("compare", evals / "base-sampled.jsonl", evals / "tuned-sampled.jsonl", "--rows", val,
                 "--threshold", ANSWER_RIGHT)


def sft_baseline(demo: Demo, base: Path, train: Path, val: Path) -> None:
    """``--baseline``: the warm start's SFT continued for as long as GRPO trained, then evaluated the same way.

    The same demonstrations and drills, the same seed and the same wall time: what RL is compared
    against is what that time would have bought by doing more of what came before it.
    """
    seconds = demo.timings["Step 6 · train"]
    evals = demo.run_dir / "eval"
    more = demo.out / "models" / "tiny-sft-more"
    temperature = float(yaml.safe_load(demo.config.read_text())["temperature"])
    with step(demo, "Baseline · the same time spent on more SFT"):
        agentrft("model", "warm-start", "--model", base, "--rows", train, "--tools-url", demo.tools_url, "--token-file",
                 demo.token_file, "--out", more, "--seed", demo.seed, "--max-seconds", f"{seconds:.0f}")
        agentrft("eval", "--model", more, "--data", val, "--out", evals / "sft-more-sampled.jsonl",
                 "--config", demo.config, "--grader", GRADER, "--samples", EVAL_SAMPLES, "--temperature", temperature)
        console.print(f"\n[bold]More SFT ({seconds:.0f} s) against the warm start, sampled:[/]")
        agentrft("compare", evals / "base-sampled.jsonl", evals / "sft-more-sampled.jsonl", "--rows", val)
        console.print(f"\n[bold]GRPO ({seconds:.0f} s) against more SFT ({seconds:.0f} s), sampled:[/]")
        agentrft("compare", evals / "sft-more-sampled.jsonl", evals / "tuned-sampled.jsonl", "--rows", val)


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Path = typer.Option(Path("demo-out"), help="Directory for the corpus, models, runs and report."),
        seed: int = typer.Option(0, help="Seed for the corpus, the model and training."),
        cache: Path = typer.Option(Path(os.environ.get("AGENTRFT_CACHE", ".cache/agentrft")),
                                   help="Cache of warm-started tiny models (keyed by seed and version)."),
        train_steps: int = typer.Option(30, min=1, help="GRPO steps to run."),
        baseline: bool = typer.Option(False, "--baseline", help="Also continue the warm start's SFT for as long "
                                      "as GRPO trained, and compare the two."),
    ) -> None:
        """Run the nine steps end to end on the embedded tiny model and write a report."""
        demo_state = Demo(out=out, seed=seed, cache=cache, train_steps=train_steps, baseline=baseline)
        started = time.perf_counter()
        try:
            run_demo(demo_state)
        except StepFailed as exc:
            raise UserError(f"demo stopped: {exc}") from None
        console.rule("[bold]done")
        for title, seconds in demo_state.timings.items():
            console.print(f"{seconds:7.1f} s  {title}")
        console.print(f"{time.perf_counter() - started:7.1f} s  in all · report: {demo_state.run_dir / 'report.html'}")
