"""Numeric-grader throughput (grades/s) against a naive float() comparison, in the same run.

The naive baseline strips ``$``, ``%`` and commas and compares floats: it is what a first grader
looks like, and it is both faster and wrong on most format variants — the script prints how many
of the unit-test cases each one gets right, so the speed is read next to the accuracy it buys.

    .venv/bin/python bench/graders.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from agentrft.graders import NonNumericReference, default_grader, score_numeric  # noqa: E402
from agentrft.graders.base import answer_trajectory  # noqa: E402
from agentrft.schema import Row  # noqa: E402
from test_graders_numeric import CASES  # noqa: E402


def naive(reference: str, answer: str, tolerance_rel: float | None = None) -> tuple[float, str]:
    def number(text: str) -> float:
        return float(text.strip().replace("$", "").replace("%", "").replace(",", ""))

    try:
        return (1.0 if number(answer) == number(reference) else 0.0), ""
    except ValueError:
        return 0.0, "unparseable"


def throughput(fn, pairs, seconds: float) -> float:  # type: ignore[no-untyped-def]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for args in pairs:
            fn(*args)
        done += len(pairs)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0, help="Time per measurement.")
    seconds = parser.parse_args().seconds
    pairs = [(ref, ans, tol) for ref, ans, tol, _ in CASES]
    right = {name: sum(fn(r, a, t)[0] == want for r, a, t, want in CASES) for name, fn in
             (("numeric", score_numeric), ("naive", naive))}  # fmt: skip

    grader = default_grader()
    graded = [(Row(id=str(i), prompt="What was it in Q3 2025?", reference_answer=r), answer_trajectory(a))
              for i, (r, a, _) in enumerate(pairs)]  # fmt: skip

    def grade(row: Row, trajectory) -> None:  # type: ignore[no-untyped-def]
        try:
            grader.grade(row, trajectory)
        except NonNumericReference:  # pragma: no cover - every case has a number
            pass

    numeric = throughput(score_numeric, pairs, seconds)
    full = throughput(grade, graded, seconds)
    baseline = throughput(naive, pairs, seconds)
    n = len(CASES)
    print(f"cases: {n} (every format in tests/test_graders_numeric.py)")
    print(f"naive float() compare : {baseline:>10,.0f} grades/s   {right['naive']:>3}/{n} cases right")
    print(f"score_numeric         : {numeric:>10,.0f} grades/s   {right['numeric']:>3}/{n} cases right")
    print(f"NumericGrader.grade   : {full:>10,.0f} grades/s   (Row + Trajectory, question context)")
    print(f"ratio score_numeric / naive: {numeric / baseline:.3f}")
    print(f"one GRPO step of 16 prompts x 8 samples grades in {128 / full * 1000:.1f} ms")


if __name__ == "__main__":
    main()
