"""agentrft report: a self-contained report.html, checked as text and rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from agentrft.cli import main

DATA = Path(__file__).parent / "data" / "eval"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A run directory laid out as training leaves it, with the hand-made evaluations in eval/."""
    run = tmp_path / "runs" / "research-rft-v1"
    (run / "eval").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(DATA / "run" / name, run / name)
    for name in ("base.jsonl", "base.traces.jsonl", "tuned.jsonl", "tuned.traces.jsonl"):
        shutil.copy(DATA / name, run / "eval" / name)
    return run


def write(run: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    main(["report", str(run), *extra])
    out = capsys.readouterr().out
    assert out.startswith("wrote ")
    return (run / "report.html").read_text(encoding="utf-8")


def test_report_holds_curves_slices_comparison_traces_and_config(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html = write(run_dir, capsys, "--rows", str(DATA / "rows.jsonl"))
    # Four learning curves (val reward, tool calls, KL, loss) plus the train reward, and two slice charts.
    assert html.count('<figure class="curve"><svg') == 5
    assert html.count('<figure class="slices"><svg') == 2
    assert "mean Δreward: +0.150" in html and "regressed: 2/10" in html
    assert html.count("▼ mean down</span>") == 2  # lookup and medium
    # Regressions worst first, then every other paired row, each with its traces.
    order = re.findall(r'<details class="row (\w+)" id="row-(val-\d+)"', html)
    assert order[:2] == [("regressed", "val-0008"), ("regressed", "val-0007")]
    assert len(order) == 10
    assert "$842 million dollars" in html and "What was Henderson&#39;s revenue in Q3 2024?" in html
    assert "kl_coef: 0.01" in html
    # Self-contained: no script, no stylesheet or image fetched from anywhere.
    assert "<script" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_report_plots_the_training_reward_of_each_slice(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows[1:]:  # step 0 is the val measure before training: no rollouts, no slices
        row["train_reward_by_slice"] = {"lookup/easy": 0.5 + row["step"] / 100}
        if row["step"] % 2:
            row["train_reward_by_slice"]["lookup/medium"] = 0.2
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    html = write(run_dir, capsys)
    assert html.count('<figure class="curve"><svg') == 7  # the five of the run, and one per slice
    assert "train reward, lookup/easy (5-step mean)" in html and "train reward, lookup/medium (5-step mean)" in html


def test_report_without_evaluations_or_metrics_says_how_to_make_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "empty-run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"step": 0, "loss": 0.5, "train_reward": 0.1}\nnot json\n'
        '{"step": 1, "loss": 0.4, "train_reward": 0.2, "abort": "kl_to_ref 1.30 above abort_kl_max 1.0"}\n'
    )
    html = write(run, capsys)
    assert html.count('<figure class="curve"><svg') == 2  # loss and train reward
    assert "The run was aborted at step 1: kl_to_ref 1.30 above abort_kl_max 1.0" in html
    for key in ("val_reward", "tool_calls", "kl_to_ref"):
        assert f"No values of <code>{key}</code>" in html
    assert "metrics.jsonl:2: malformed JSON" in html
    assert "No evaluation files" in html and "No config.yaml" in html


def test_report_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no such run directory" in err
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path), "--base", str(tmp_path / "b.jsonl"), "--tuned", str(tmp_path / "t.jsonl")])
    assert "--base" in capsys.readouterr().err


def test_report_renders_in_headless_chromium(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-chromium.sh (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    write(run_dir, capsys)
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
        )
        try:
            page = browser.new_page()
            page.on("request", lambda req: requests.append(req.url))
            page.goto((run_dir / "report.html").as_uri())
            page.wait_for_load_state("load")

            plots = page.locator("figure svg")
            assert plots.count() == 7
            for i in range(plots.count()):
                box = plots.nth(i).bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 50
            # The curve itself is drawn: a path with many points inside the val-reward plot.
            assert page.locator("figure.curve").first.locator("path").count() > 5

            row = page.locator("#row-val-0008")
            trace_turn = row.locator(".trace.tuned .turn.assistant")
            assert not trace_turn.is_visible()
            row.locator("summary").click()
            assert trace_turn.is_visible()
            assert trace_turn.inner_text().strip().endswith("$842 million dollars")
            assert row.locator(".trace.tuned .turn.call").count() == 3
        finally:
            browser.close()
    assert all(url.startswith("file://") for url in requests), requests
