"""Text answers for the numeric grader's non-numeric references (``fallback: text``).

The running example has comparison questions ("which reported more net income, Atlas Corp or
Meridian Biotech?") whose reference is a name. ``score_text`` gives:

- 1.0 when the answer is the reference, ignoring case, spacing and punctuation;
- 1.0 when the answer names the reference (whole words) and none of the question's other
  candidates — the capitalised names in the question ("Atlas Corp") that are not the reference;
- 0 when it names another candidate too (a hedge: "Atlas Corp or Meridian Biotech"), and 0 when
  it does not name the reference at all.

Naming a rival in a full sentence ("Meridian Biotech, ahead of Atlas Corp") also scores 0: like
the tutorial's rubric, the answer should hold only the final answer.
"""

from __future__ import annotations

import re

# A capitalised phrase: one or more capitalised words without digits (Q3 and 10-Q are not names).
_WORD = r"[A-Z][A-Za-z&'.-]*(?![\w])"
_NAME = re.compile(rf"(?<![\w']){_WORD}(?:\s+(?:&\s+)?{_WORD})*")
_SENTENCE_START = re.compile(r"(?:^|[.?!]\s+)$")


def normal_text(text: str) -> str:
    """Lower case, punctuation to spaces, runs of spaces to one."""
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def _contains(haystack: str, needle: str) -> bool:
    return bool(needle) and f" {needle} " in f" {haystack} "


def question_names(question: str) -> list[str]:
    """Capitalised names in the question, leaving out a sentence's first word ("In the third ...")."""
    names = []
    for match in _NAME.finditer(question):
        words = match.group(0).split()
        if _SENTENCE_START.search(question[: match.start()]):
            words = words[1:]
        if words:
            names.append(" ".join(words).rstrip(".'"))
    return names


def score_text(reference: str, answer: str, question: str = "") -> tuple[float, str]:
    """``(reward, reason)`` for a text reference; reward in {0, 1}."""
    ref, got = normal_text(reference), normal_text(answer)
    if not got:
        return 0.0, "empty answer"
    if got == ref:
        return 1.0, f"answer is the reference {reference!r}"
    if not _contains(got, ref):
        return 0.0, f"answer does not name the reference {reference!r}"
    rivals = {n for n in question_names(question) if not _contains(ref, normal_text(n)) and not _contains(normal_text(n), ref)}
    named = sorted(r for r in rivals if _contains(got, normal_text(r)))
    if named:
        return 0.0, f"answer names {reference!r} but also {', '.join(map(repr, named))}; expected one answer"
    return 1.0, f"answer names the reference {reference!r}"


__all__ = ["normal_text", "question_names", "score_text"]
