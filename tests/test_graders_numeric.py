"""The numeric grader's rubric, case by case: every format the issue lists, the 0.5 band, hedges."""

from __future__ import annotations

import pytest

from agentrft.graders import NonNumericReference, NumericGrader, default_grader, grade_answer, score_numeric
from agentrft.graders.quantities import parse_quantities

# (reference, answer, tolerance_rel, expected reward)
CASES: list[tuple[str, str, float | None, float]] = [
    # --- equal up to format: percent forms
    ("13.4%", "13.4%", None, 1.0),
    ("13.4%", "0.134", None, 1.0),
    ("13.4%", "13.4", None, 1.0),
    ("13.4%", "13.4 percent", None, 1.0),
    ("13.4%", "13.40%", None, 1.0),
    ("13.4%", "  13.4 %  ", None, 1.0),
    ("13.4%", "13.4 per cent", None, 1.0),
    ("13.4%", "FY2025 operating margin: 13.4 pct", None, 1.0),
    ("7%", "0.07", None, 1.0),
    ("0.5", ".5", None, 1.0),
    # --- an answer sentence, period context, restatement, other-kind context
    ("13.4%", "The operating margin was 13.4%.", None, 1.0),
    ("13.4%", "Q3 2025 operating margin: 13.4%", None, 1.0),
    ("13.4%", "For the three months ended September 30, 2025, the operating margin was 13.4%.", None, 1.0),
    ("13.4%", "Per the 10-Q filed 2025-11-05, margin was 13.4%", None, 1.0),
    ("13.4%", "13.4% (0.134)", None, 1.0),
    ("13.4%", "13.4% on revenue of $842M", None, 1.0),
    # --- currencies, magnitudes, separators, whitespace
    ("$842M", "$842M", None, 1.0),
    ("$842M", "$842 million dollars", None, 1.0),
    ("$842M", "$842,000,000", None, 1.0),
    ("$842M", "USD 842 million", None, 1.0),
    ("$842M", "842 million USD", None, 1.0),
    ("$842M", "$842mm", None, 1.0),
    ("$842M", "$842 MM", None, 1.0),
    ("$842M", "US$842m", None, 1.0),
    ("$842M", "842,000,000 dollars", None, 1.0),
    ("$842M", "842", None, 1.0),
    ("$842M", "\u00a0$842M\n", None, 1.0),
    ("$842M", "$842 mn", None, 1.0),
    ("$1.43B", "$1,430M", None, 1.0),
    ("$1.43B", "$1.43 billion", None, 1.0),
    ("$1.43B", "1.43bn USD", None, 1.0),
    ("$1.43B", "$1,430,000,000", None, 1.0),
    ("€1.2bn", "EUR 1.2 billion", None, 1.0),
    ("€1.2bn", "1,200 million euros", None, 1.0),
    ("£350K", "£350,000", None, 1.0),
    ("£350K", "350 thousand pounds", None, 1.0),
    ("£350K", "GBP 350k", None, 1.0),
    ("$2.1T", "$2.1 trillion", None, 1.0),
    ("1,430", "1430", None, 1.0),
    ("1430", "1\u202f430", None, 1.0),
    ("2025", "2025", None, 1.0),
    ("1,987", "Q3 2025 headcount: 1987", None, 1.0),
    ("-3.6%", "Net income fell 3.6% (-3.6%)", None, 1.0),
    # --- negatives: minus signs, accounting parentheses, direction in words
    ("($3.2M)", "-$3.2M", None, 1.0),
    ("($3.2M)", "\u2212$3.2 million", None, 1.0),
    ("-$3.2M", "$(3.2) million", None, 1.0),
    ("-3.2%", "(3.2%)", None, 1.0),
    ("($3.2M)", "a net loss of $3.2M", None, 1.0),
    ("-3.2%", "revenue declined 3.2%", None, 1.0),
    # --- the row's tolerance
    ("$842M", "$850M", 0.02, 1.0),
    ("13.4%", "13.6%", 0.02, 1.0),
    ("$842M", "$870M", 0.02, 0.0),
    # --- 0.5: a tenth of a percentage point, a tenth of a percent, a true rounding
    ("13.4%", "13.41%", None, 0.5),
    ("13.4%", "13.5%", None, 0.5),
    ("13.4%", "13.3%", None, 0.5),
    ("13.4%", "0.1341", None, 0.5),
    ("13.4%", "13%", None, 0.5),
    ("13.46%", "13.5%", None, 0.5),
    ("12.5%", "13%", None, 0.5),
    ("12.5%", "12%", None, 0.5),
    ("$842M", "$840M", None, 0.5),
    ("$842M", "$842.3M", None, 0.5),
    ("$1.43B", "$1.4B", None, 0.5),
    ("$1.4B", "$1.43B", None, 0.5),
    ("$842M", "$0.84B", None, 0.5),
    # --- 0: wrong values, magnitudes, currency, sign
    ("13.4%", "12.0%", None, 0.0),
    ("13.4%", "13.6%", None, 0.0),
    ("13.4%", "10%", None, 0.0),
    ("13.4%", "1.34%", None, 0.0),
    ("13.4%", "134%", None, 0.0),
    ("13.4%", "0.134%", None, 0.0),
    ("$842M", "$842B", None, 0.0),
    ("$842M", "$842K", None, 0.0),
    ("$842M", "$842", None, 0.0),
    ("$842M", "$843M", None, 0.0),
    ("$842M", "$800M", None, 0.0),
    ("$842M", "€842M", None, 0.0),
    ("($3.2M)", "$3.2M", None, 0.0),
    ("-3.2%", "3.2%", None, 0.0),
    # --- 0: hedges, nothing to grade, the wrong kind of number
    ("13.4%", "13.4% or 13.5%", None, 0.0),
    ("13.4%", "between 13% and 14%", None, 0.0),
    ("13.4%", "13.4%, 12.0%, 14.1%", None, 0.0),
    ("13.4%", "13-14%", None, 0.0),
    ("13.4%", "In 2024 it was 12.0%; in 2025 it was 13.4%", None, 0.0),
    ("$842M", "$842M, or maybe $1.43B", None, 0.0),
    ("13.4%", "", None, 0.0),
    ("13.4%", "I could not find the operating margin.", None, 0.0),
    ("$842M", "13.4%", None, 0.0),
    ("13.4%", "$842M", None, 0.0),
]


def test_there_are_at_least_sixty_cases() -> None:
    assert len(CASES) >= 60
    assert {reward for *_, reward in CASES} == {0.0, 0.5, 1.0}


@pytest.mark.parametrize(("reference", "answer", "tolerance", "expected"), CASES)
def test_numeric_rubric(reference: str, answer: str, tolerance: float | None, expected: float) -> None:
    reward, reason = score_numeric(reference, answer, tolerance)
    assert reward == expected, reason
    assert reason


def test_the_tutorials_four_cases_through_the_default_grader() -> None:
    grader = default_grader()
    got = [grade_answer(grader, "13.4%", a).reward for a in ("13.4%", "0.134", "13.41%", "12.0%")]
    assert got == [1.0, 1.0, 0.5, 0.0]


def test_reasons_explain_the_reward() -> None:
    assert "hedges between 2 different values" in score_numeric("13.4%", "13.4% or 13.5%")[1]
    assert "rounded" in score_numeric("13.4%", "13%")[1]
    assert "0.1 percentage point" in score_numeric("13.4%", "13.41%")[1]
    assert "EUR" in score_numeric("$842M", "€842M")[1]
    assert "opposite sign" in score_numeric("-3.2%", "3.2%")[1]
    assert "no number" in score_numeric("13.4%", "unknown")[1]
    assert "1.4 percentage points" in score_numeric("13.4%", "12.0%")[1]


def test_question_numbers_are_context_not_hedges() -> None:
    question = "What was the combined operating margin of Henderson's top 3 segments in Q3 2025?"
    assert score_numeric("13.4%", "Top 3 segments: 13.4", question=question)[0] == 1.0
    assert score_numeric("13.4%", "Top 3 segments: 13.4")[0] == 0.0  # without the question: a hedge
    row_grade = grade_answer(default_grader(), "13.4%", "Top 3 segments: 13.4", prompt=question)
    assert row_grade.reward == 1.0


def test_rows_tolerance_is_used_by_the_grader() -> None:
    grader = default_grader()
    assert grade_answer(grader, "$842M", "$850M").reward == 0.0
    assert grade_answer(grader, "$842M", "$850M", {"tolerance_rel": 0.01}).reward == 1.0
    assert grade_answer(NumericGrader(tolerance_rel=0.0), "$842M", "$850M", {"tolerance_rel": 0.5}).reward == 0.0


def test_non_numeric_reference_is_a_text_compare_or_no_grade() -> None:
    with pytest.raises(NonNumericReference):
        score_numeric("Henderson Corp", "Henderson")
    with pytest.raises(NonNumericReference, match="several numbers"):
        score_numeric("12% or 13%", "12%")
    question = "In the third quarter of 2024, which reported more net income, Atlas Corp or Meridian Biotech?"
    grader = default_grader()
    for answer, reward in [("Meridian Biotech", 1.0), ("meridian biotech.", 1.0), ("The answer is Meridian Biotech.", 1.0),
                           ("Meridian Biotech in Q3 2024", 1.0), ("Atlas Corp", 0.0), ("Meridian", 0.0),
                           ("Atlas Corp or Meridian Biotech", 0.0), ("", 0.0)]:  # fmt: skip
        grade = grade_answer(grader, "Meridian Biotech", answer, prompt=question)
        assert grade.reward == reward, (answer, grade.reason)
    assert "also 'Atlas Corp'" in grade_answer(grader, "Meridian Biotech", "Atlas Corp or Meridian Biotech",
                                               prompt=question).reason  # fmt: skip
    strict = grade_answer(NumericGrader(fallback="none"), "Meridian Biotech", "Meridian Biotech")
    assert strict.reward is None and "no number" in strict.reason


def test_parsed_quantities_keep_precision_and_units() -> None:
    (q,) = parse_quantities("$1,430M")
    assert q.currency == "USD" and q.magnitude == 6 and q.value == 1430 * 10**6
    assert q.value.as_tuple().exponent == 6  # precision of millions, used by the rounding credit
    (p,) = parse_quantities("(13.4%)")
    assert p.percent and p.parenthesized and str(p.value) == "-0.134"
    assert [q.context for q in parse_quantities("FY2024 Q3 2025 13.4%")] == [True, False]


def test_text_references_read_the_questions_candidates() -> None:
    from agentrft.graders.text_match import question_names, score_text

    question = "Which company had the highest revenue in Q1 2025: Henderson Industries, Atlas Corp or Larkspur Foods?"
    assert question_names(question) == ["Henderson Industries", "Atlas Corp", "Larkspur Foods"]
    assert score_text("Henderson Industries", "Henderson Industries (Q1 2025)", question)[0] == 1.0
    assert score_text("Henderson Industries", "Henderson Industries, then Larkspur Foods", question)[0] == 0.0
    assert score_text("Henderson Industries", "Henderson", question)[0] == 0.0


def test_graders_satisfy_the_protocol() -> None:
    from agentrft.graders import Grader, load_grader

    for spec in ("default", "numeric", "tool_use"):
        assert isinstance(load_grader(spec), Grader)
