"""The numeric grader: the running example's reward, the tutorial's rubric made exact.

Rubric (``score_numeric``):

- **1.0** when the answer's value equals the reference up to format (``0.134`` = ``13.4%``,
  ``$1,430M`` = ``$1.43B``, ``$842 million dollars`` = ``$842M``), or lies within the row's
  ``expected.tolerance_rel`` when the row sets one. Without a tolerance there is none: ``13.41%``
  against ``13.4%`` is not equal.
- **0.5** when it is off by a tenth of a percentage point or less (percent references), by a
  tenth of a percent or less (other references), or by a true rounding: the answer is the
  reference rounded to fewer digits (``13%`` for ``13.4%``, ``$840M`` for ``$842M``), or the
  reference is the answer rounded (``$1.43B`` for ``$1.4B``). A rounding must keep two significant
  digits: ``10%`` is not a rounding of ``13.4%`` that earns credit.
- **0** otherwise, and when the answer hedges: if it holds several *different* candidate values
  (``13.4% or 13.5%``, ``between 13% and 14%``) it gets 0 whatever they are, since a policy
  rewarded for a list learns to list.

What counts as a candidate value. Period context is not an answer: quarters, dates, form names and
bare years are ignored (``Q3 2025 operating margin: 13.4%`` is one value), as are bare integers
that appear in the question — unless they equal the reference (a count of 2,000 written ``2000``). Numbers of a kind that cannot be the answer are supporting context,
not hedges: a money amount in an answer to a percent question (``13.4% on revenue of $842M``).
The same value written twice (``13.4% (0.134)``) is one value.

Format readings. A plain number may stand for a percent (``0.134`` or ``13.4`` for ``13.4%``) or
drop the reference's magnitude (``842`` for ``$842M``); the best reading counts. Signs must agree,
unless the answer states the direction in words (``a net loss of $3.2M`` for ``($3.2M)``).
Currencies must agree when both name one.

A reference with no number (the running example's comparison questions: "Meridian Biotech") is
not a number to compare: ``score_numeric`` raises ``NonNumericReference``. ``NumericGrader`` then
falls back to ``text_match.score_text`` (the answer must name the reference and no other candidate
from the question) — or, with ``fallback="none"``, returns "no grade" with the reason.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from functools import lru_cache
from typing import Literal

from ..schema import Grade, Row, Trajectory
from .quantities import Quantity, parse_quantities, states_direction
from .text_match import score_text

_POINT = Decimal("0.001")  # a tenth of a percentage point, as a fraction; also a tenth of a percent


class NonNumericReference(ValueError):
    """The reference answer holds no single number to compare with."""


@lru_cache(maxsize=4096)
def _reference(reference: str) -> Quantity:
    found = parse_quantities(reference)
    chosen = [q for q in found if not q.context] or found
    if not chosen:
        raise NonNumericReference(f"reference {reference!r} has no number to compare with")
    first = chosen[0]
    if any(_readings(q, first).isdisjoint(_readings(first, first)) for q in chosen[1:]):
        shown = ", ".join(q.text for q in chosen)
        raise NonNumericReference(f"reference {reference!r} holds several numbers ({shown}); expected one")
    return first


def _readings(q: Quantity, ref: Quantity) -> set[Decimal]:
    """The values ``q`` may stand for, in the reference's terms."""
    out = {q.value}
    if q.bare and ref.percent:
        out.add(q.value.scaleb(-2))  # 13.4 for 13.4%
    if q.percent and ref.bare:
        out.add(q.value.scaleb(2))  # 13.4% for a plain 13.4
    if q.bare and ref.magnitude:
        out.add(q.value.scaleb(ref.magnitude))  # 842 for $842M
    if ref.bare and q.magnitude and not q.percent:
        out.add(q.value.scaleb(-q.magnitude))  # $842M for a plain 842
    return out


def _compatible(q: Quantity, ref: Quantity) -> bool:
    """Could ``q`` be an answer to a question whose answer is ``ref``? (percent vs money)"""
    money_ref = bool(ref.currency or ref.magnitude)
    money_q = bool(q.currency or q.magnitude)
    return not (q.percent and money_ref) and not (ref.percent and money_q)


def _rounds_to(precise: Decimal, coarse: Decimal) -> bool:
    """Is ``coarse`` ``precise`` rounded to fewer digits, keeping at least two significant ones?"""
    if precise == coarse or precise.is_zero():
        return False
    low = max(precise.as_tuple().exponent + 1, coarse.as_tuple().exponent)  # type: ignore[operator]
    for exponent in range(low, precise.adjusted()):  # < adjusted(): two significant digits stay
        step = Decimal(1).scaleb(exponent)
        for mode in (ROUND_HALF_UP, ROUND_HALF_EVEN):
            if precise.quantize(step, rounding=mode) == coarse:
                return True
    return False


def _show(value: Decimal, ref: Quantity) -> str:
    if ref.percent:
        return f"{value.scaleb(2).normalize():f} percentage points"
    if ref.value.is_zero():
        return f"{value.normalize():f}"
    return f"{float(value / abs(ref.value)):.2%}"


def _score_reading(value: Decimal, q: Quantity, ref: Quantity, tol: float | None) -> tuple[float, str]:
    r = ref.value
    if value == r:
        return 1.0, f"{q.text} equals the reference {ref.text}" + ("" if q.text == ref.text else " up to format")
    diff = abs(value - r)
    if tol is not None and diff <= Decimal(str(tol)) * abs(r):
        return 1.0, f"{q.text} is within the row's tolerance (±{tol:g} relative) of {ref.text}"
    if ref.percent and diff <= _POINT:
        return 0.5, f"{q.text} is within 0.1 percentage point of the reference {ref.text}"
    if not ref.percent and not r.is_zero() and diff <= _POINT * abs(r):
        return 0.5, f"{q.text} is within 0.1% of the reference {ref.text}"
    if _rounds_to(r, value):
        return 0.5, f"{q.text} is the reference {ref.text} rounded"
    if _rounds_to(value, r):
        return 0.5, f"the reference {ref.text} is {q.text} rounded"
    return 0.0, f"{q.text} is off from the reference {ref.text} by {_show(diff, ref)}"


def _score_quantity(q: Quantity, ref: Quantity, tol: float | None, direction: bool) -> tuple[float, str]:
    if q.currency and ref.currency and q.currency != ref.currency:
        return 0.0, f"{q.text} is in {q.currency}, the reference {ref.text} in {ref.currency}"
    best: tuple[float, str] | None = None
    # Closest reading first, so that among equal rewards the reason names the likeliest one.
    for value in sorted(_readings(q, ref), key=lambda v: abs(abs(v) - abs(ref.value))):
        opposite = value.is_signed() != ref.value.is_signed() and not (value.is_zero() or ref.value.is_zero())
        if opposite and not direction:
            scored = (0.0, f"{q.text} has the opposite sign of the reference {ref.text}")
        elif opposite:  # "a loss of $3.2M": the sign is in the words
            reward, reason = _score_reading(-value, q, ref, tol)
            scored = (reward, f"{reason} (the sign is stated in words)")
        else:
            scored = _score_reading(value, q, ref, tol)
        if best is None or scored[0] > best[0]:
            best = scored
    assert best is not None
    return best


@lru_cache(maxsize=4096)
def _question_integers(question: str) -> frozenset[Decimal]:
    return frozenset(q.value for q in parse_quantities(question) if q.bare and q.is_integer)


def score_numeric(
    reference: str, answer: str, tolerance_rel: float | None = None, *, question: str = ""
) -> tuple[float, str]:
    """Score ``answer`` against a numeric ``reference``: ``(reward, reason)``, reward in {0, 0.5, 1}.

    ``tolerance_rel`` is the row's ``expected.tolerance_rel``; ``question`` (the row's prompt)
    lets bare integers that the question itself mentions be read as context, not as a hedge.
    Raises ``NonNumericReference`` when the reference holds no single number.

    >>> score_numeric("13.4%", "0.134")
    (1.0, '0.134 equals the reference 13.4% up to format')
    """
    ref = _reference(reference)
    if not answer.strip():
        return 0.0, "empty answer"
    asked = _question_integers(question)
    found = parse_quantities(answer)
    context = [q.context or (q.bare and q.value in asked) for q in found]
    candidates = [q for q, c in zip(found, context) if (not c or q.value == ref.value) and _compatible(q, ref)]
    if not candidates:
        others = [q.text for q, c in zip(found, context) if not c]
        if others:
            return 0.0, f"no value of the reference's kind ({ref.text}) in the answer; found {', '.join(others)}"
        return 0.0, "no number in the answer"
    direction = states_direction(answer)

    def meanings(q: Quantity) -> set[Decimal]:  # with the direction in words, -3.6% and 3.6% agree
        return {abs(v) for v in _readings(q, ref)} if direction else _readings(q, ref)

    distinct: list[Quantity] = []
    for q in candidates:
        if all(meanings(q).isdisjoint(meanings(d)) for d in distinct):
            distinct.append(q)
    if len(distinct) > 1:
        shown = ", ".join(q.text for q in distinct[:6])
        return 0.0, f"answer hedges between {len(distinct)} different values ({shown}); expected one"
    return max((_score_quantity(q, ref, tolerance_rel, direction) for q in candidates), key=lambda s: s[0])


class NumericGrader:
    """Grades ``trajectory.output_text`` with ``score_numeric`` against ``row.reference_answer``.

    The tolerance is the row's ``expected.tolerance_rel`` unless ``tolerance_rel`` is set here.
    A non-numeric reference is compared as text (``fallback="text"``) or not graded (``"none"``).
    """

    def __init__(
        self,
        name: str = "numeric",
        tolerance_rel: float | None = None,
        fallback: Literal["text", "none"] = "text",
        use_question: bool = True,
    ) -> None:
        self.name = name
        self.tolerance_rel = tolerance_rel
        self.fallback = fallback
        self.use_question = use_question

    def grade(self, row: Row, trajectory: Trajectory) -> Grade:
        answer = trajectory.output_text
        tol = self.tolerance_rel if self.tolerance_rel is not None else row.expected.tolerance_rel
        question = row.prompt if self.use_question else ""
        try:
            reward, reason = score_numeric(row.reference_answer, answer, tol, question=question)
        except NonNumericReference as exc:
            if self.fallback != "text":
                return Grade(reward=None, grader=self.name, reason=f"{exc} (numeric grader)")
            reward, reason = score_text(row.reference_answer, answer, question)
        return Grade(reward=reward, grader=self.name, reason=reason)


__all__ = ["NonNumericReference", "NumericGrader", "score_numeric"]
