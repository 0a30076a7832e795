"""The multi grader: named sub-graders combined by a formula (``0.8 * answer + 0.2 * tools``).

If any sub-grader the formula reads gives "no grade", the multi grade is "no grade" too, naming
which one and why: substituting 0 would teach the policy that a judge timeout is a wrong answer.
The formula's result is clamped to [0, 1] (the reason says when clamping happened); a division by
zero is "no grade". Sub-rewards are kept in ``Grade.sub_rewards`` for the report.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import UserError
from ..schema import Grade, Row, Trajectory
from .base import Grader, clamp01
from .formula import Formula


class MultiGrader:
    def __init__(self, name: str, graders: Mapping[str, Grader], calculate_output: str) -> None:
        self.name = name
        self.graders = dict(graders)
        self.formula = Formula(calculate_output)
        unknown = sorted(self.formula.names - self.graders.keys())
        if unknown:
            raise UserError(
                f"calculate_output: {', '.join(unknown)} not among the graders ({', '.join(self.graders)})"
            )

    def grade(self, row: Row, trajectory: Trajectory) -> Grade:
        grades = {key: grader.grade(row, trajectory) for key, grader in self.graders.items()}
        subs = {key: g.reward for key, g in grades.items()}
        parts = "; ".join(f"{key}={_fmt(g.reward)} ({g.reason})" for key, g in grades.items())
        missing = [key for key in sorted(self.formula.names) if subs[key] is None]
        if missing:
            why = "; ".join(f"{key}: {grades[key].reason}" for key in missing)
            return Grade(reward=None, grader=self.name, reason=f"no grade from {why}", sub_rewards=subs)
        try:
            value = self.formula({key: r for key, r in subs.items() if r is not None})
        except ZeroDivisionError:
            return Grade(reward=None, grader=self.name, reason=f"division by zero in {self.formula.text}; {parts}",
                         sub_rewards=subs)  # fmt: skip
        reward = clamp01(value)
        clamped = "" if reward == value else f" (clamped from {value:.3g})"
        reason = f"{self.formula.text} = {reward:.3g}{clamped}; {parts}"
        return Grade(reward=reward, grader=self.name, reason=reason, sub_rewards=subs)


def _fmt(reward: float | None) -> str:
    return "none" if reward is None else f"{reward:.3g}"


__all__ = ["MultiGrader"]
