"""The string_check grader, as OpenAI defines it: ``eq`` / ``ne`` compare the rendered input and
reference exactly; ``like`` is "input contains reference", ``ilike`` the same ignoring case.
Reward 1.0 on a pass, 0.0 otherwise.

It is exact on purpose and therefore brittle for numbers (``$842 million dollars`` is not
``$842M``): use it for labels and ids, and the numeric grader for values.
"""

from __future__ import annotations

from typing import Literal

from ..schema import Grade, Row, Trajectory
from .base import item_view, render, sample_view

Operation = Literal["eq", "ne", "like", "ilike"]


def check(left: str, right: str, operation: Operation) -> bool:
    if operation == "eq":
        return left == right
    if operation == "ne":
        return left != right
    if operation == "like":
        return right in left
    return right.casefold() in left.casefold()


class StringCheckGrader:
    def __init__(
        self,
        name: str = "string_check",
        input: str = "{{sample.output_text}}",
        reference: str = "{{item.reference_answer}}",
        operation: Operation = "eq",
    ) -> None:
        self.name = name
        self.input = input
        self.reference = reference
        self.operation = operation

    def grade(self, row: Row, trajectory: Trajectory) -> Grade:
        item, sample = item_view(row), sample_view(trajectory)
        left = render(self.input, item, sample)
        right = render(self.reference, item, sample)
        ok = check(left, right, self.operation)
        verdict = "passes" if ok else "fails"
        reason = f"{left[:80]!r} {self.operation} {right[:80]!r}: {verdict}"
        return Grade(reward=1.0 if ok else 0.0, grader=self.name, reason=reason)


__all__ = ["StringCheckGrader", "check"]
