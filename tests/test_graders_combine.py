"""string_check, text_similarity, tool_use, and the multi grader's safe formula."""

from __future__ import annotations

import pytest

from agentrft.errors import UserError
from agentrft.graders import grade_answer, load_grader, render
from agentrft.graders.formula import Formula
from agentrft.schema import Expected, Grade, MessageTurn, Row, ToolCallTurn, ToolResultTurn, Trajectory


@pytest.mark.parametrize(
    ("operation", "answer", "reward"),
    [("eq", "$842M", 1.0), ("eq", "$842 million", 0.0), ("ne", "$842 million", 1.0), ("ne", "$842M", 0.0),
     ("like", "Revenue was $842M.", 1.0), ("like", "revenue was $842m", 0.0), ("ilike", "revenue was $842m", 1.0)],
)  # fmt: skip
def test_string_check_operations(operation: str, answer: str, reward: float) -> None:
    grader = load_grader({"type": "string_check", "name": "s", "input": "{{sample.output_text}}",
                          "reference": "{{item.reference_answer}}", "operation": operation})  # fmt: skip
    assert grade_answer(grader, "$842M", answer).reward == reward


def test_templates_reach_any_row_field() -> None:
    item = {"reference_answer": "13.4%", "expected": {"evidence_path": "filings/a.html"}, "metadata": {"k": 1}}
    text = "{{item.reference_answer}} {{ item.expected.evidence_path }} {{item.metadata}} [{{item.nope.x}}]"
    assert render(text, item, {"output_text": "x"}) == '13.4% filings/a.html {"k": 1} []'


def test_text_similarity_metrics_order_answers_sensibly() -> None:
    reference = "Operating margin rose to 13.4 percent on higher revenue"
    close, far = "Operating margin rose to 13.4 percent on strong revenue", "The weather was cold"
    for metric in ("fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_l"):
        grader = load_grader({"type": "text_similarity", "evaluation_metric": metric, "pass_threshold": 0.5})
        hi, lo = grade_answer(grader, reference, close), grade_answer(grader, reference, far)
        assert hi.reward is not None and lo.reward is not None
        assert 0.0 <= lo.reward < hi.reward <= 1.0, metric
        assert grade_answer(grader, reference, reference).reward == pytest.approx(1.0), metric
    assert "pass" in grade_answer(load_grader({"type": "text_similarity", "evaluation_metric": "fuzzy_match",
                                               "pass_threshold": 0.5}), reference, close).reason  # fmt: skip


def _row(**expected: object) -> Row:
    return Row(id="r", prompt="q", reference_answer="$842M", expected=Expected.model_validate(expected))


def _trajectory(calls: list[tuple[str, dict, bool]], answer: str = "$842M") -> Trajectory:
    turns: list = []
    for i, (name, args, failed) in enumerate(calls):
        turns.append(ToolCallTurn(call_id=f"c{i}", name=name, args=args))
        turns.append(ToolResultTurn(call_id=f"c{i}", name=name, output="Error: x" if failed else "ok", is_error=failed))
    turns.append(MessageTurn(role="assistant", content=answer))
    return Trajectory(row_id="r", turns=turns)


def test_tool_use_checks_tools_evidence_and_budget() -> None:
    grader = load_grader({"type": "tool_use", "max_tool_calls": 2})
    row = _row(evidence_path="filings/h-10q.html", must_use_tools=["search", "read"])
    good = _trajectory([("search", {"query": "h"}, False), ("read", {"path": "./filings/h-10q.html"}, False)])
    assert grader.grade(row, good).reward == 1.0
    no_read = grader.grade(row, _trajectory([("search", {"query": "h"}, False)]))
    assert no_read.reward == pytest.approx((0.5 + 0 + 1) / 3)
    assert "never used read" in no_read.reason and "never read filings/h-10q.html" in no_read.reason
    failed_read = _trajectory([("search", {}, False), ("read", {"path": "filings/h-10q.html"}, True)])
    failed = grader.grade(row, failed_read)
    assert failed.sub_rewards["evidence"] == 0.0 and failed.sub_rewards["must_use_tools"] == 0.5
    assert "never used read" in failed.reason  # a read that only returned an error did not use the tool
    over = _trajectory([("search", {}, False)] * 3 + [("read", {"path": "filings/h-10q.html"}, False)])
    graded = grader.grade(row, over)
    assert graded.sub_rewards["budget"] == 0.0 and "2 over" in graded.reason
    assert load_grader("tool_use").grade(_row(), _trajectory([])).reward == 1.0


def test_tool_use_prices_failed_calls_below_not_calling() -> None:
    row = _row(evidence_path="filings/h-10q.html", must_use_tools=["search", "read"])
    hasty = _trajectory([("search", {"query": "h"}, False)])
    made_up = _trajectory([("search", {"query": "h"}, False), ("read", {"path": "filings/h"}, True)])
    plain = load_grader({"type": "tool_use", "max_tool_calls": 12})
    assert plain.grade(row, made_up).reward == plain.grade(row, hasty).reward  # a failed try costs nothing
    priced = load_grader({"type": "tool_use", "max_tool_calls": 12, "price_errors": True})
    graded = priced.grade(row, made_up)
    assert graded.sub_rewards["errors"] == 0.5 and "1 of 2 calls failed" in graded.reason
    assert graded.reward < priced.grade(row, hasty).reward < 1.0
    good = _trajectory([("search", {"query": "h"}, False), ("read", {"path": "filings/h-10q.html"}, False)])
    assert priced.grade(row, good).reward == 1.0
    assert "errors" not in priced.grade(row, _trajectory([])).sub_rewards  # no calls: nothing to price


def test_formula_is_safe_arithmetic() -> None:
    assert Formula("0.8 * answer + 0.2 * tools")({"answer": 1, "tools": 0.5}) == pytest.approx(0.9)
    assert Formula("min(a, b) - -max(a, 0) / 2")({"a": 0.5, "b": 0.25}) == pytest.approx(0.5)
    assert Formula("(a + b) / 2").names == {"a", "b"}
    for bad in ("__import__('os').system('true')", "a.b", "a ** 2", "'x'", "a if b else c", "[a]", "open(a)", "a +"):
        with pytest.raises(UserError, match="calculate_output"):
            Formula(bad)


class _Fixed:
    def __init__(self, name: str, reward: float | None) -> None:
        self.name, self.reward = name, reward

    def grade(self, row: Row, trajectory: Trajectory) -> Grade:
        return Grade(reward=self.reward, grader=self.name, reason="fixed")


def test_multi_combines_and_never_turns_no_grade_into_zero() -> None:
    from agentrft.graders.multi import MultiGrader

    row, trajectory = _row(), _trajectory([])
    assert MultiGrader("m", {"a": _Fixed("a", 1.0), "b": _Fixed("b", 0.5)}, "0.8*a + 0.2*b").grade(
        row, trajectory).reward == pytest.approx(0.9)  # fmt: skip
    missing = MultiGrader("m", {"a": _Fixed("a", 1.0), "b": _Fixed("b", None)}, "0.8*a + 0.2*b").grade(row, trajectory)
    assert missing.reward is None and "no grade from b" in missing.reason and missing.sub_rewards == {"a": 1.0, "b": None}
    clamped = MultiGrader("m", {"a": _Fixed("a", 1.0)}, "a * 2").grade(row, trajectory)
    assert clamped.reward == 1.0 and "clamped" in clamped.reason
    assert MultiGrader("m", {"a": _Fixed("a", 0.0)}, "1 / a").grade(row, trajectory).reward is None
    with pytest.raises(UserError, match="c not among the graders"):
        MultiGrader("m", {"a": _Fixed("a", 1.0)}, "a + c")


def test_example_multi_grader_weights_answer_and_tools() -> None:
    from pathlib import Path

    grader = load_grader(Path(__file__).resolve().parents[1] / "examples" / "graders" / "answer_and_tools.yaml")
    row = _row(evidence_path="filings/h.html", must_use_tools=["search"])
    right_no_tools = grader.grade(row, _trajectory([], "$842 million dollars"))
    assert right_no_tools.reward == pytest.approx(0.8 + 0.2 * (1 / 3))
    full = grader.grade(row, _trajectory([("search", {}, False), ("read", {"path": "filings/h.html"}, False)]))
    assert full.reward == 1.0 and full.sub_rewards == {"answer": 1.0, "tools": 1.0}
    wrong = grader.grade(row, _trajectory([("search", {}, False), ("read", {"path": "filings/h.html"}, False)], "$9M"))
    assert wrong.reward == pytest.approx(0.2)


def test_cosine_similarity_uses_the_offline_embedder() -> None:
    grader = load_grader({"type": "text_similarity", "evaluation_metric": "cosine"})
    reference = "Operating margin was 13.4 percent"
    close = grade_answer(grader, reference, "The operating margin came in at 13.4%")
    far = grade_answer(grader, reference, "A recipe for lemon cake")
    assert close.reward is not None and far.reward is not None and close.reward > far.reward + 0.2
