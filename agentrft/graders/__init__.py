"""Step 4: graders — turn a rollout into a reward in [0, 1] (or "no grade" with the reason).

``default_grader()`` is the running example's numeric grader; ``load_grader(path)`` reads any
grader declared in the OpenAI RFT JSON/YAML shapes (string_check, text_similarity, python,
score_model, multi) or our own (numeric, tool_use). Heavy libraries (rapidfuzz, sacrebleu,
rouge-score, sentence-transformers, openai) are imported only when a grader needs them.

>>> from agentrft.graders import score_numeric
>>> score_numeric("$842M", "$842 million dollars")[0]
1.0
"""

from __future__ import annotations

from .base import Grader, answer_trajectory, grade_all, grade_answer, item_view, render, sample_view
from .loader import default_grader, load_grader, parse_spec
from .multi import MultiGrader
from .numeric import NonNumericReference, NumericGrader, score_numeric
from .python_grader import PythonGrader
from .score_model import ScoreModelGrader
from .similarity import TextSimilarityGrader
from .string_check import StringCheckGrader
from .tool_use import ToolUseGrader

__all__ = [
    "Grader",
    "MultiGrader",
    "NonNumericReference",
    "NumericGrader",
    "PythonGrader",
    "ScoreModelGrader",
    "StringCheckGrader",
    "TextSimilarityGrader",
    "ToolUseGrader",
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
