"""Public benchmarks of questions over financial reports, read into one neutral form.

Two published layouts:

- **TAT-QA** (Zhu et al., 2021): a JSON array of contexts, each ``{table: {uid, table: [[cell]]},
  paragraphs: [{uid, order, text}], questions: [{uid, question, answer, answer_type, answer_from,
  scale, derivation, ...}]}``; ``answer_type`` is ``arithmetic`` or ``count`` (a number), ``span``
  (one string) or ``multi-span`` (several); ``scale`` is ``""``, ``thousand``, ``million``,
  ``billion`` or ``percent``.
- **FinQA** (Chen et al., 2021): a JSON array of questions, each with its page: ``{id, filename,
  pre_text: [sentence], table: [[cell]], post_text: [sentence], qa: {question, program, exe_ans,
  answer?}}``; ``exe_ans`` is the program's result, a number or ``yes`` / ``no``. Questions on the
  same page share one context.

Either may also come as JSONL, one record a line. A record that is not of its layout is reported
where it is (``file:line``, the line its record starts on) and its questions counted as skipped:
the adapter accounts for every question it was given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from ..errors import UserError
from ..files import read_text
from ..jsonl import describe_json_error

Format = Literal["tatqa", "finqa"]
FORMATS: tuple[Format, ...] = ("tatqa", "finqa")
Scalar = str | int | float | bool


@dataclass(frozen=True)
class Context:
    """One document of the corpus: a table and the text around it."""

    path: str
    """Corpus-relative path, e.g. ``tatqa/context-0001.html``."""
    title: str
    table: tuple[tuple[str, ...], ...]
    paragraphs: tuple[str, ...]
    table_at: int = 0
    """How many paragraphs come before the table (TAT-QA: none; FinQA: its ``pre_text``)."""


@dataclass(frozen=True)
class Question:
    """A benchmark question with its gold answer as published."""

    where: str
    """``file:line`` of its record (and the question's place in it), for reports."""
    source_id: str
    context: Context
    text: str
    answer_type: str
    answer: Any
    """A number, a string, or a list of strings (multi-span), as the benchmark gives it."""
    scale: str = ""
    metadata: dict[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class Unreadable:
    """Questions in a record that is not of the layout; ``count`` of them are accounted as skipped."""

    where: str
    reason: str
    count: int = 1


@dataclass
class Benchmark:
    contexts: list[Context] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)


def iter_records(path: Path, what: str) -> Iterator[tuple[int, Any]]:
    """``(line, value)`` for each element of a top-level JSON array, or each line of a JSONL file.

    The line is where the element starts, so a report can point into a pretty-printed file.
    """
    text = read_text(path, what, max_bytes=None)  # benchmark files run to hundreds of MB
    start = len(text) - len(text.lstrip())
    if not text[start:]:
        raise UserError(f"{path}: empty; expected {what}")
    if text[start] != "[":
        yield from _iter_jsonl(path, text, what)
        return
    decoder = json.JSONDecoder()
    pos, line, counted = start + 1, 1, 0
    while True:
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: {describe_json_error(exc)}") from None
        yield line, value
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            at = text.count("\n", 0, pos) + 1
            raise UserError(f"{path}:{at}: malformed JSON (expected ',' or ']' after an array element)")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _iter_jsonl(path: Path, text: str, what: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: {describe_json_error(exc)}; expected {what}") from None


def _cells(table: Any) -> tuple[tuple[str, ...], ...] | None:
    if not isinstance(table, list) or not all(isinstance(row, list) for row in table):
        return None
    return tuple(tuple("" if cell is None else str(cell) for cell in row) for row in table)


def _scalars(record: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Scalar]:
    out: dict[str, Scalar] = {}
    for key in keys:
        value = record.get(key)
        if isinstance(value, (str, int, float, bool)) and value != "":
            out[key] = value
        elif isinstance(value, list) and value and all(isinstance(v, (str, int)) for v in value):
            out[key] = ",".join(str(v) for v in value)
    return out


def read_tatqa(path: Path) -> Benchmark:
    """TAT-QA contexts and their questions; contexts become ``tatqa/context-NNNN.html``."""
    bench = Benchmark()
    for number, (line, record) in enumerate(iter_records(path, "TAT-QA: a JSON array of contexts"), 1):
        where = f"{path}:{line}"
        if not isinstance(record, dict):
            bench.unreadable.append(Unreadable(where, "a context that is not an object"))
            continue
        questions = record.get("questions")
        count = len(questions) if isinstance(questions, list) else 1
        table = record.get("table")
        cells = _cells(table.get("table") if isinstance(table, dict) else None)
        paragraphs = record.get("paragraphs")
        if not isinstance(questions, list):
            bench.unreadable.append(Unreadable(where, "context without a 'questions' list (is this TAT-QA?)", count))
            continue
        if cells is None or not isinstance(paragraphs, list):
            bench.unreadable.append(Unreadable(where, "context without 'table.table' rows or 'paragraphs'", count))
            continue
        ordered = sorted((p for p in paragraphs if isinstance(p, dict)), key=lambda p: _order(p.get("order")))
        texts = tuple(str(p["text"]).strip() for p in ordered if str(p.get("text") or "").strip())
        context = Context(f"tatqa/context-{number:04d}.html", f"TAT-QA context {number}", cells, texts)
        bench.contexts.append(context)
        for index, item in enumerate(questions):
            here = f"{where}: questions[{index}]"
            if not isinstance(item, dict) or not isinstance(item.get("question"), str) or "answer" not in item:
                bench.unreadable.append(Unreadable(here, "question without 'question' text or 'answer'"))
                continue
            bench.questions.append(Question(
                where=here,
                source_id=str(item.get("uid") or f"{number}-{index}"),
                context=context,
                text=item["question"],
                answer_type=str(item.get("answer_type") or ""),
                answer=item["answer"],
                scale=str(item.get("scale") or ""),
                metadata=_scalars(item, ("answer_from", "derivation", "rel_paragraphs", "req_comparison")),
            ))
    return bench


def _order(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def read_finqa(path: Path) -> Benchmark:
    """FinQA questions; each page (``filename``, else the id without its ``-N``) is one context."""
    bench = Benchmark()
    by_page: dict[tuple[str, tuple], Context] = {}
    used_paths: set[str] = set()
    for line, record in iter_records(path, "FinQA: a JSON array of questions"):
        where = f"{path}:{line}"
        if not isinstance(record, dict):
            bench.unreadable.append(Unreadable(where, "a record that is not an object"))
            continue
        qa = record.get("qa")
        cells = _cells(record.get("table"))
        pre, post = record.get("pre_text"), record.get("post_text")
        if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
            bench.unreadable.append(Unreadable(where, "record without 'qa.question' (is this FinQA?)"))
            continue
        if cells is None or not isinstance(pre, list) or not isinstance(post, list):
            bench.unreadable.append(Unreadable(where, "record without 'pre_text', 'table' and 'post_text'"))
            continue
        source_id = str(record.get("id") or f"line-{line}")
        page = str(record.get("filename") or re.sub(r"-\d+$", "", source_id))
        before = tuple(str(s).strip() for s in pre if str(s).strip())
        after = tuple(str(s).strip() for s in post if str(s).strip())
        key = (page, (cells, before, after))
        context = by_page.get(key)
        if context is None:
            stem = _UNSAFE.sub("-", page.removesuffix(".pdf")).strip("-.") or "page"
            rel = f"finqa/{stem}.html"
            suffix = 2
            while rel in used_paths:  # the same page name with other content: another document
                rel, suffix = f"finqa/{stem}-{suffix}.html", suffix + 1
            used_paths.add(rel)
            context = Context(rel, f"FinQA {page}", cells, before + after, table_at=len(before))
            by_page[key] = context
            bench.contexts.append(context)
        answer, scale = _finqa_answer(qa.get("exe_ans"), qa.get("answer"))
        bench.questions.append(Question(
            where=where,
            source_id=source_id,
            context=context,
            text=qa["question"],
            answer_type="arithmetic",
            answer=answer,
            scale=scale,
            metadata={**_scalars(qa, ("program", "answer")), "page": page},
        ))
    return bench


def _finqa_answer(exe_ans: Any, shown: Any) -> tuple[Any, str]:
    """``(answer, scale)``: ``exe_ans`` as a percent where the annotators' ``answer`` is one.

    FinQA's programs return ratios as fractions (0.08571) while its ``answer`` says ``8.6%``; the
    reference keeps the program's precision and the answer's unit (``8.571%``). Where ``exe_ans``
    already is the percent (a program that multiplies by 100) it is kept as it is.
    """
    if isinstance(exe_ans, bool) or not isinstance(exe_ans, (int, float)):
        return exe_ans, ""
    match = re.fullmatch(r"\s*(-?[0-9][0-9,]*(?:\.([0-9]+))?)\s*%\s*", str(shown or ""))
    if not match:
        return exe_ans, ""
    stated = Decimal(match.group(1).replace(",", ""))
    unit = Decimal(1).scaleb(-len(match.group(2) or ""))  # the answer's last decimal place
    for candidate in (Decimal(str(exe_ans)).scaleb(2), Decimal(str(exe_ans))):
        if abs(candidate - stated) <= unit:
            return candidate, "percent"
    return exe_ans, ""


def read_benchmark(path: Path, fmt: Format) -> Benchmark:
    if fmt == "tatqa":
        return read_tatqa(path)
    if fmt == "finqa":
        return read_finqa(path)
    raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")


__all__ = ["FORMATS", "Benchmark", "Context", "Format", "Question", "Unreadable", "iter_records", "read_benchmark"]
