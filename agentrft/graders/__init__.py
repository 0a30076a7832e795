"""Step 4: graders — turn a rollout into a reward in [0, 1] (or "no grade" with the reason).

``default_grader()`` is the running example's numeric grader; ``load_grader(path)`` reads any
grader declared in the OpenAI RFT JSON/YAML shapes (string_check, text_similarity, python,
score_model, multi) or our own (numeric, tool_use).

>>> from agentrft.graders import score_numeric
>>> score_numeric("$842M", "$842 million dollars")[0]
1.0
"""

from __future__ import annotations

from .base import Grader, answer_trajectory, grade_all, grade_answer, item_view, render, sample_view
from .loader import default_grader, load_grader, parse_spec
from .numeric import NonNumericReference, NumericGrader, score_numeric

__all__ = [
    "Grader",
    "NonNumericReference",
    "NumericGrader",
    "answer_trajectory",
    "default_grader",
    "grade_all",
    "grade_answer",
    "item_view",
    "load_grader",
    "parse_spec",
    "render",
    "sample_view",
    "score_numeric",
]
