"""agentrft compare on hand-made evaluation files whose every number was worked out by hand.

tests/data/eval/{base,tuned}.jsonl: ten rows in both files, val-0011 only in base, val-0012 only
in tuned, val-0013 graded in base but "no grade" in tuned. Per row (base → tuned reward, tools):

    0001 num/easy   0 → 1    6 → 2      0006 num/hard   .5 → .5  5 → 5
    0002 num/easy  .5 → 1    5 → 3      0007 lookup/easy  1 → .5  4 → 1
    0003 num/med    1 → 1    4 → 2      0008 lookup/med   1 → 0   1 → 3
    0004 num/med    0 → 0    8 → 4      0009 lookup/med   1 → 1   2 → 2
    0005 num/hard   0 → 1    7 → 3      0010 lookup/hard  0 → .5  6 → 4

Σ Δreward = 1.5 over 10 rows → +0.150; Σ Δtools = -19 → -1.90.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrft.cli import main
from agentrft.evaluate.compare import bootstrap_ci, compare_runs, format_comparison, shift_p_value
from agentrft.evaluate.records import load_eval
from agentrft.jsonl import write_models
from agentrft.schema import EvalRecord

DATA = Path(__file__).parent / "data" / "eval"
BASE, TUNED, ROWS = DATA / "base.jsonl", DATA / "tuned.jsonl", DATA / "rows.jsonl"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    main(list(argv))
    return capsys.readouterr().out


def run_cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err


def test_compare_prints_the_tutorial_lines_and_more(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(capsys, "compare", str(BASE), str(TUNED), "--by", "task_type")
    lines = out.splitlines()
    assert lines[:8] == [
        "mean Δreward: +0.150",
        "mean Δtools:  -1.90",
        "improved:  4/10",
        "regressed: 2/10",
        "unchanged: 4/10",
        "  already solved: 2",
        "  still unsolved: 1",
        "  partial:        1",
    ]
    assert lines[8] == "95% CI of mean Δreward: [-0.200, +0.500] (paired bootstrap, 10000 resamples, seed 0)"
    assert lines[9:12] == [
        "only in base:  1 (val-0011)",
        "only in tuned: 1 (val-0012)",
        "no grade in base or tuned: 1 (val-0013)",
    ]


def test_a_success_line_splits_the_regressions(capsys: pytest.CaptureFixture[str]) -> None:
    """0007 (1 → .5) and 0008 (1 → 0) regressed: at 0.5 only 0008 fell below the line, 0007 lost partial credit."""
    out = run_cli(capsys, "compare", str(BASE), str(TUNED), "--threshold", "0.5")
    assert out.splitlines()[3:6] == ["regressed: 2/10", "  reaching 0.5 less often: 1",
                                     "  only partial credit lost:  1"]
    both = compare_runs(load_eval(BASE), load_eval(TUNED), threshold=1.0)
    assert both.fewer_successes == 2 and both.to_dict()["regressed_fewer_successes"] == 2
    assert compare_runs(load_eval(BASE), load_eval(TUNED)).fewer_successes is None


def test_slice_tables_carry_every_number_and_flag_slices_that_went_down(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run_cli(capsys, "compare", str(BASE), str(TUNED), "--by", "task_type,difficulty")
    tables = out.split("\n\n")[1:]
    assert [t.splitlines() for t in tables] == [
        [
            "by task_type      n    base   tuned       Δ  improved  regressed",
            "numerical_qa      6   0.333   0.750  +0.417         3          0",
            "lookup            4   0.750   0.500  -0.250         1          2  ▼ mean down",
        ],
        [
            "by difficulty      n    base   tuned       Δ  improved  regressed",
            "medium             4   0.750   0.500  -0.250         0          1  ▼ mean down",
            "easy               3   0.500   0.833  +0.333         2          1",
            "hard               3   0.167   0.667  +0.500         2          0",
        ],
    ]


def test_slicing_by_a_dataset_metadata_key_needs_the_rows(capsys: pytest.CaptureFixture[str]) -> None:
    err = run_cli_error(capsys, "compare", str(BASE), str(TUNED), "--by", "company")
    assert err.count("\n") == 1 and "--rows" in err
    out = run_cli(capsys, "compare", str(BASE), str(TUNED), "--by", "company", "--rows", str(ROWS))
    table = out.split("\n\n")[1].splitlines()
    assert table[1:] == [
        "atlas           4   0.750   0.750  +0.000         1          1",
        "henderson       3   0.333   0.667  +0.333         2          1",
        "cobalt          2   0.000   0.250  +0.250         1          0",
        "borealis        1   1.000   1.000  +0.000         0          0",
    ]


def test_json_output_for_machines(capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(run_cli(capsys, "compare", str(BASE), str(TUNED), "--json"))
    assert data["n"] == 10
    assert data["mean_d_reward"] == pytest.approx(0.15)
    assert data["mean_d_tools"] == pytest.approx(-1.9)
    assert (data["improved"], data["regressed"], data["unchanged"]) == (4, 2, 4)
    assert data["unchanged_split"] == {"solved": 2, "unsolved": 1, "partial": 1}
    assert data["only_in_base"] == ["val-0011"] and data["only_in_tuned"] == ["val-0012"]
    assert data["ungraded"] == ["val-0013"]
    lookup = next(s for s in data["slices"]["task_type"] if s["value"] == "lookup")
    assert lookup == {
        "value": "lookup", "n": 4, "base": 0.75, "tuned": 0.5, "delta": -0.25,
        "improved": 1, "regressed": 2, "went_down": True,
    }
    buckets = {row["id"]: row["bucket"] for row in data["rows"]}
    assert buckets["val-0007"] == "regressed" and buckets["val-0006"] == "partial"


def test_k_samples_compare_each_row_on_its_mean(tmp_path: Path) -> None:
    def records(model: str, rewards: dict[str, list[float]]) -> list[EvalRecord]:
        return [
            EvalRecord(id=rid, sample_index=k, model=model, reward=r, tool_calls=k + 1)
            for rid, rs in rewards.items()
            for k, r in enumerate(rs)
        ]

    base, tuned = tmp_path / "base.jsonl", tmp_path / "tuned.jsonl"
    write_models(base, records("b", {"a": [1.0, 0.0], "b": [1.0, 1.0], "c": [0.5, 0.5, 0.5]}))
    write_models(tuned, records("t", {"a": [1.0, 1.0], "b": [0.0, 1.0], "c": [1.0, 0.0]}))
    c = compare_runs(load_eval(base), load_eval(tuned))
    by_id = {d.id: d for d in c.diffs}
    assert by_id["a"].d_reward == pytest.approx(0.5) and by_id["a"].bucket == "improved"
    assert by_id["b"].d_reward == pytest.approx(-0.5) and by_id["b"].bucket == "regressed"
    # c: mean 0.5 in both even with 3 vs 2 samples → unchanged, partial.
    assert by_id["c"].bucket == "partial"
    assert by_id["c"].d_tools == pytest.approx(1.5 - 2.0)
    assert c.n == 3 and c.count("improved") == 1 and c.count("regressed") == 1


def test_shift_p_value_counts_the_relabellings_at_least_as_extreme() -> None:
    assert shift_p_value([1, 1, 1, 1], [0, 0, 0, 0], lower=True) == pytest.approx(1 / 70)
    assert shift_p_value([1, 1, 1, 1], [0, 0, 0, 0], lower=False) == 1.0
    assert shift_p_value([1, 1, 1, 1], [1, 0, 1, 1], lower=True) == pytest.approx(35 / 70)  # the 0 among the 4
    assert shift_p_value([1.0], [0.0], lower=True) == 1.0  # one sample a side: nothing to tell
    many = shift_p_value([1.0] * 10, [0.0] * 10, lower=True)  # 184,756 relabellings: a seeded draw
    assert many == shift_p_value([1.0] * 10, [0.0] * 10, lower=True) and many < 1e-3


def test_sampled_rows_are_counted_beyond_noise_only_when_their_samples_separate(tmp_path: Path) -> None:
    def write(path: Path, rewards: dict[str, list[float]]) -> Path:
        write_models(path, [EvalRecord(id=rid, sample_index=k, model=path.stem, reward=r, tool_calls=1)
                            for rid, rs in rewards.items() for k, r in enumerate(rs)])  # fmt: skip
        return path

    base = write(tmp_path / "base.jsonl", {"drop": [1, 1, 1, 1], "dip": [1, 1, 1, 1], "rise": [0, 0, 0, 0],
                                            "same": [0.5, 0.5, 0, 1]})  # fmt: skip
    tuned = write(tmp_path / "tuned.jsonl", {"drop": [0, 0, 0, 0], "dip": [1, 0, 1, 1], "rise": [1, 1, 1, 1],
                                              "same": [1, 0, 0.5, 0.5]})  # fmt: skip
    c = compare_runs(load_eval(base), load_eval(tuned))
    assert (c.count("regressed"), c.count("improved")) == (2, 1)
    assert (c.beyond_noise("regressed"), c.beyond_noise("improved")) == (1, 1)  # "dip" is one sample's chance
    text = format_comparison(c).splitlines()
    assert text[2:5] == ["improved:  1/4", "  beyond sampling noise: 1 (per-row permutation test, p < 0.05)",
                         "regressed: 2/4"]  # fmt: skip
    assert c.to_dict()["beyond_noise"] == {"alpha": 0.05, "improved": 1, "regressed": 1}
    greedy = compare_runs(load_eval(BASE), load_eval(TUNED))  # one sample a row: no such count
    assert greedy.beyond_noise("regressed") is None and "noise" not in format_comparison(greedy)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    diffs = [1.0, 0.5, 0.0, 0.0, 1.0, 0.0, -0.5, -1.0, 0.0, 0.5]
    low, high = bootstrap_ci(diffs, resamples=4000, seed=3)
    assert (low, high) == bootstrap_ci(diffs, resamples=4000, seed=3)
    assert low < 0.15 < high and -1.0 <= low and high <= 1.0
    assert bootstrap_ci([0.25] * 7) == pytest.approx((0.25, 0.25))
    # More rows with the same spread → a narrower interval.
    wide = high - low
    low10, high10 = bootstrap_ci(diffs * 10, resamples=4000, seed=3)
    assert high10 - low10 < wide / 2


def test_bad_eval_file_is_one_error_line_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(BASE.read_text().splitlines()[0] + "\n" + '{"id": "val-0002", "reward": 1.7}\n')
    err = run_cli_error(capsys, "compare", str(bad), str(TUNED))
    assert err.startswith(f"error: {bad}:2: reward") and err.count("\n") == 1


def test_files_with_no_common_row_are_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.jsonl"
    write_models(other, [EvalRecord(id="x-1", reward=1.0)])
    err = run_cli_error(capsys, "compare", str(BASE), str(other))
    assert "share no graded row id" in err


def test_duplicate_samples_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dup = tmp_path / "dup.jsonl"
    write_models(dup, [EvalRecord(id="val-0001", reward=1.0), EvalRecord(id="val-0001", reward=0.0)])
    err = run_cli_error(capsys, "compare", str(dup), str(TUNED))
    assert "val-0001 sample 0 appears twice" in err
