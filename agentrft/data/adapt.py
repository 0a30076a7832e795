"""``agentrft data adapt``: a public benchmark (TAT-QA, FinQA) → a corpus, rows and their graders.

Each context becomes one corpus document (its table as an HTML table, its paragraphs as text) that
the filings tools serve as they are; each question becomes a row whose ``evidence_path`` is that
document, graded by what its answer is:

- **numeric** — arithmetic and count answers, and a span that is one number (``$4,203``): the
  benchmark's scale goes into the reference (``-35 million``, ``6.7%``), graded by the numeric
  grader. A number span is a value, not a label: a string check would fail ``4,203 million`` for
  ``$4,203``.
- **span** — a text span (a year such as ``2019`` is a label here), graded by a string check that
  the answer contains it, case ignored.
- **multi_span** — several spans, graded by a multi grader over one string check per span and
  ``min``: every span must be there. The spans are in ``metadata.span_1`` … ``span_N``; a row with
  fewer spans than the grader checks renders the rest empty, which every answer contains.

A question that cannot become a fair row is skipped with its reason, never guessed at: an answer
that is not what its type says, a span its document does not contain (a string check would ask for
words the agent cannot read), a document longer than ``read`` returns, a yes/no answer, and the same
question asked of another context with another answer (the agent has no way to tell which is
meant; with the same answer the later ones are dropped as duplicates). Adapted questions plus
skipped ones always add up to the questions in the file.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..graders.numeric import NonNumericReference, score_numeric
from ..graders.quantities import parse_quantities
from ..jsonl import write_models
from ..schema import Expected, Row, RowMetadata, ToolSpec
from ..tools.corpus import html_to_text
from .benchmarks import Benchmark, Context, Format, Question
from .validate import normalise_prompt

KINDS = ("numeric", "span", "multi_span")
MAGNITUDES = ("thousand", "million", "billion")
_QUOTES = "\"'“”‘’`"


class _Skip(Exception):
    """A question that cannot become a fair row; the message says why."""


@dataclass(frozen=True)
class _Candidate:
    question: Question
    kind: str
    reference: str
    spans: tuple[str, ...] = ()


@dataclass
class Adapted:
    """What ``adapt`` made: documents, rows per grading kind, and every skipped question."""

    documents: dict[str, str] = field(default_factory=dict)
    """Corpus path → HTML."""
    rows: dict[str, list[Row]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    """(where, answer type, reason) for every question that is not a row."""
    made: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(answer type, kind) → rows."""

    @property
    def questions(self) -> int:
        return sum(self.made.values()) + len(self.skipped)

    def reasons(self) -> Counter[str]:
        return Counter(reason for _, _, reason in self.skipped)


def render_context(context: Context) -> str:
    """The context as an HTML page: the paragraphs before the table, the table, the rest."""
    esc = html.escape
    table = "<table>\n" + "".join(
        "<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>\n" for row in context.table
    ) + "</table>"
    body = [f"<p>{esc(text)}</p>" for text in context.paragraphs]
    body.insert(min(context.table_at, len(body)), table)
    head = f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{esc(context.title)}</title></head>\n<body>\n'
    return head + "\n".join(body) + "\n</body></html>\n"


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def _clean_span(value: Any) -> str:
    text = " ".join(str(value).split())
    while len(text) > 1 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text.rstrip(".,;:").strip()


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    text = str(value).strip().replace(",", "")
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _plain(number: Decimal) -> str:
    text = format(number.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _scaled(number_text: str, scale: str) -> str:
    if scale == "percent":
        return f"{number_text}%"
    if scale in MAGNITUDES:
        return f"{number_text} {scale}"
    if scale:
        raise _Skip(f"unknown scale {scale!r}")
    return number_text


def _check_numeric(reference: str) -> str:
    try:
        reward, _ = score_numeric(reference, reference)
    except NonNumericReference as exc:
        raise _Skip(f"the numeric grader cannot read the reference: {exc}") from None
    if reward != 1.0:  # pragma: no cover - a reference always equals itself
        raise _Skip(f"the numeric grader does not accept {reference!r} as its own answer")
    return reference


def _number_span(span: str, scale: str) -> str | None:
    """The span as a numeric reference when it is one number and nothing else (a year is a label)."""
    found = parse_quantities(span)
    if len(found) != 1 or found[0].context:
        return None
    quantity = found[0]
    if re.search(r"\w", span.replace(quantity.text, "", 1)):
        return None
    if scale == "percent" and not quantity.percent:
        return f"{span}%"
    if scale in MAGNITUDES and not (quantity.magnitude or quantity.percent):
        return f"{span} {scale}"
    return span


def _candidate(question: Question, document: str) -> _Candidate:
    kind, answer, scale = question.answer_type, question.answer, question.scale
    if kind in ("arithmetic", "count"):
        if isinstance(answer, str) and answer.strip().lower() in ("yes", "no"):
            raise _Skip("a yes/no answer: a string check cannot tell 'no' from 'not'")
        number = _number(answer[0] if isinstance(answer, list) and len(answer) == 1 else answer)
        if number is None:
            raise _Skip(f"{kind} answer is not a number (got {json.dumps(answer)[:40]})")
        return _Candidate(question, "numeric", _check_numeric(_scaled(_plain(number), scale)))
    if kind not in ("span", "multi-span"):
        raise _Skip(f"unknown answer type {kind!r}")
    values = answer if isinstance(answer, list) else [answer]
    spans = tuple(dict.fromkeys(span for span in map(_clean_span, values) if span))
    if not spans:
        raise _Skip(f"{kind} answer is empty")
    if len(spans) == 1:
        numeric = _number_span(spans[0], scale)
        if numeric is not None:
            return _Candidate(question, "numeric", _check_numeric(numeric))
    folded = _fold(document)
    missing = [span for span in spans if _fold(span) not in folded]
    if missing:
        raise _Skip("a span its document does not contain word for word")
    if len(spans) == 1:
        return _Candidate(question, "span", spans[0], spans)
    return _Candidate(question, "multi_span", "; ".join(spans), spans)


def _row_id(fmt: Format, source_id: str) -> str:
    return f"{fmt}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', source_id).strip('-')}"


def _row(candidate: _Candidate, fmt: Format, tools: list[ToolSpec]) -> Row:
    question = candidate.question
    metadata: dict[str, Any] = {
        "task_type": question.answer_type,
        "difficulty": "unknown",
        "source": fmt,
        "source_id": question.source_id,
        **question.metadata,
    }
    if question.scale:
        metadata["scale"] = question.scale
    if candidate.kind == "multi_span":
        metadata.update({f"span_{i}": span for i, span in enumerate(candidate.spans, 1)})
    return Row(
        id=_row_id(fmt, question.source_id),
        prompt=" ".join(question.text.split()),
        reference_answer=candidate.reference,
        expected=Expected(evidence_path=question.context.path, must_use_tools=["search", "read"]),
        tools=tools,
        metadata=RowMetadata.model_validate(metadata),
    )


def adapt(bench: Benchmark, fmt: Format, read_budget: int, tools: list[ToolSpec]) -> Adapted:
    """Documents for every context and a row or a skip reason for every question."""
    out = Adapted()
    texts: dict[str, str] = {}
    for context in bench.contexts:
        out.documents[context.path] = render_context(context)
        texts[context.path] = html_to_text(out.documents[context.path])
    for unreadable in bench.unreadable:
        out.skipped.extend([(unreadable.where, "unreadable", unreadable.reason)] * unreadable.count)
    candidates: list[_Candidate] = []
    for question in bench.questions:
        text = texts[question.context.path]
        try:
            if len(text) > read_budget:
                raise _Skip(f"its document is longer than read returns (--read-budget {read_budget})")
            candidates.append(_candidate(question, text))
        except _Skip as why:
            out.skipped.append((question.where, question.answer_type, str(why)))
    answers: dict[str, set[tuple[str, str]]] = {}
    for c in candidates:
        answers.setdefault(normalise_prompt(c.question.text), set()).add((c.kind, c.reference))
    seen_prompts: set[str] = set()
    seen_ids: set[str] = set()
    for c in candidates:
        key = normalise_prompt(c.question.text)
        row_id = _row_id(fmt, c.question.source_id)
        if len(answers[key]) > 1:
            out.skipped.append((c.question.where, c.question.answer_type,
                                "the same question has another answer in another context"))
        elif key in seen_prompts or row_id in seen_ids:
            out.skipped.append((c.question.where, c.question.answer_type, "a duplicate of an earlier question"))
        else:
            seen_prompts.add(key)
            seen_ids.add(row_id)
            out.rows[c.kind].append(_row(c, fmt, tools))
            out.made[(c.question.answer_type, c.kind)] += 1
    out.skipped.sort(key=lambda skip: _place(skip[0]))
    return out


def _place(where: str) -> tuple[int, int]:
    """(line, question) of ``file:LINE`` or ``file:LINE: questions[N]``, to list skips in file order."""
    found = re.search(r":(\d+)(?:: questions\[(\d+)\])?$", where)
    return (int(found.group(1)), int(found.group(2) or -1)) if found else (0, 0)


@dataclass(frozen=True)
class Written:
    corpus: Path
    row_files: dict[str, Path]
    grader_files: dict[str, Path]
    skipped_file: Path


def write_adapted(adapted: Adapted, out_dir: Path, name: str, fmt: Format) -> Written:
    """``out/corpus/FMT/*.html``, ``out/NAME_KIND.jsonl`` with ``out/graders/KIND.json`` for each kind
    that has rows, and ``out/NAME_skipped.txt`` (``where: [answer type] reason`` a line). Stale
    documents and row files of an earlier run into the same folder are removed."""
    corpus = out_dir / "corpus"
    folder = corpus / fmt
    folder.mkdir(parents=True, exist_ok=True)
    for old in sorted(folder.glob("*.html")):
        if f"{fmt}/{old.name}" not in adapted.documents:
            old.unlink()
    for rel, page in adapted.documents.items():
        (corpus / rel).write_text(page, encoding="utf-8", newline="\n")
    rows, graders = {}, {}
    for kind in KINDS:
        target = out_dir / f"{name}_{kind}.jsonl"
        if not adapted.rows[kind]:
            target.unlink(missing_ok=True)
            continue
        write_models(target, adapted.rows[kind])
        spans = max(sum(key.startswith("span_") for key in r.metadata.model_extra or {}) for r in adapted.rows[kind])
        grader = out_dir / "graders" / f"{kind}.json"
        grader.parent.mkdir(parents=True, exist_ok=True)
        grader.write_text(json.dumps(grader_spec(kind, spans), indent=2) + "\n", encoding="utf-8")
        rows[kind], graders[kind] = target, grader
    skipped = out_dir / f"{name}_skipped.txt"
    skipped.write_text("".join(f"{where}: [{kind}] {why}\n" for where, kind, why in adapted.skipped), encoding="utf-8")
    return Written(corpus, rows, graders, skipped)


def grader_spec(kind: str, spans: int = 0) -> dict[str, Any]:
    """The grader declaration for one kind of row (``spans``: how many a multi_span row may have)."""
    if kind == "numeric":
        return {"type": "numeric", "name": "numeric"}
    check = {"type": "string_check", "input": "{{sample.output_text}}", "operation": "ilike"}
    if kind == "span":
        return {**check, "name": "span", "reference": "{{item.reference_answer}}"}
    names = [f"span_{i}" for i in range(1, spans + 1)]
    return {
        "type": "multi",
        "name": "multi_span",
        "graders": {name: {**check, "reference": f"{{{{item.metadata.{name}}}}}"} for name in names},
        "calculate_output": f"min({', '.join(names)})",
    }


__all__ = ["KINDS", "Adapted", "Written", "adapt", "grader_spec", "render_context", "write_adapted"]
