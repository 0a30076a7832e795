"""``agentrft data validate``: every problem in a set of row files, as ``file:line: what is wrong``.

Beyond the tutorial's checks (required fields, duplicate ids across files) it catches malformed
JSON, wrong field types, blank reference answers, tool specs that are not function schemas, and
leakage: the same prompt (case, spacing and punctuation folded) in a train file and a val file,
which would make the val score measure memory instead of skill.

Which side a row is on comes from its file name (``train`` or ``val``/``valid``/``dev``/``eval``/``test`` as
a word in it) and, for a file named neither way, from the id prefix (``train-…`` / ``val-…``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..jsonl import iter_json_lines, json_type
from ..schema import Row

REQUIRED = ("id", "prompt", "reference_answer")
_TRAIN_WORDS = {"train", "training"}
_VAL_WORDS = {"val", "valid", "validation", "dev", "eval", "test", "heldout"}


def normalise_prompt(prompt: str) -> str:
    """Case, whitespace and punctuation folded: the key for duplicate and leakage checks."""
    kept = "".join(ch.lower() if ch.isalnum() else " " for ch in prompt)
    return " ".join(kept.split())


@dataclass
class ValidationReport:
    rows: list[tuple[Path, int, Row]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    sides: dict[str, str] = field(default_factory=dict)  # row id → "train" | "val"
    side_source: dict[Path, str] = field(default_factory=dict)  # file → "file name" | "id prefix"

    @property
    def ok(self) -> bool:
        return not self.problems


def side_from_name(path: Path) -> str | None:
    words = set(re.split(r"[^a-z]+", path.stem.lower()))
    if words & _TRAIN_WORDS and not words & _VAL_WORDS:
        return "train"
    if words & _VAL_WORDS and not words & _TRAIN_WORDS:
        return "val"
    return None


def side_from_id(row_id: str) -> str | None:
    head = re.split(r"[^a-z]+", row_id.lower(), maxsplit=1)[0]
    if head in _TRAIN_WORDS:
        return "train"
    if head in _VAL_WORDS:
        return "val"
    return None


def _describe(err: ValidationError) -> list[str]:
    """Pydantic errors as short phrases a dataset author can act on."""
    out = []
    for item in err.errors():
        loc = ".".join(str(part) for part in item["loc"]) or "(row)"
        kind, msg = item["type"], item["msg"].removeprefix("Value error, ")
        if loc.startswith("tools"):
            out.append(f"invalid tool spec at {loc}: {msg}")
        elif kind == "missing":
            out.append(f"missing required field '{loc}'")
        elif kind == "extra_forbidden":
            out.append(f"unknown field '{loc}' (a typo? extra keys belong in metadata)")
        else:
            shown = repr(item.get("input"))
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            out.append(f"{loc}: {msg} (got {shown})")
    return out


def _check_line(path: Path, number: int, value: Any, report: ValidationReport) -> Row | None:
    where = f"{path}:{number}"
    if not isinstance(value, dict):
        report.problems.append(f"{where}: expected a JSON object, got {json_type(value)}")
        return None
    problems = [f"missing required field '{name}'" for name in REQUIRED if name not in value]
    try:
        row = Row.model_validate(value)
    except ValidationError as exc:
        problems += [p for p in _describe(exc) if p not in problems]
        row = None
    report.problems.extend(f"{where}: {p}" for p in problems)
    return row


def validate_files(paths: list[Path]) -> ValidationReport:
    """Check every line of every file; collect all problems rather than stopping at the first."""
    report = ValidationReport()
    first_id: dict[str, str] = {}
    for path in paths:
        by_name = side_from_name(path)
        report.side_source[path] = "file name" if by_name else "id prefix"
        seen_line = False
        for number, value, error in iter_json_lines(path, "a JSONL file of rows"):
            seen_line = True
            if error:
                report.problems.append(f"{path}:{number}: {error}")
                continue
            row = _check_line(path, number, value, report)
            if row is None:
                continue
            if row.id in first_id:
                report.problems.append(f"{path}:{number}: duplicate id '{row.id}' (first at {first_id[row.id]})")
                continue
            first_id[row.id] = f"{path}:{number}"
            side = by_name or side_from_id(row.id)
            if side:
                report.sides[row.id] = side
            report.rows.append((path, number, row))
        if not seen_line:
            report.problems.append(f"{path}: empty (no JSON lines); expected rows, one JSON object a line")
    _check_leakage(report)
    order = {str(path): i for i, path in enumerate(paths)}
    report.problems.sort(key=lambda p: _location_key(p, order))
    return report


def _location_key(problem: str, order: dict[str, int]) -> tuple[int, int]:
    """Sort problems by file (in argument order), then line."""
    match = re.match(r"(.*?):(\d+): ", problem)
    if not match:
        return (len(order), 0)
    return (order.get(match.group(1), len(order)), int(match.group(2)))


def _check_leakage(report: ValidationReport) -> None:
    train_prompts: dict[str, str] = {}
    for path, number, row in report.rows:
        if report.sides.get(row.id) == "train":
            train_prompts.setdefault(normalise_prompt(row.prompt), f"{path}:{number}")
    for path, number, row in report.rows:
        if report.sides.get(row.id) != "val":
            continue
        seen = train_prompts.get(normalise_prompt(row.prompt))
        if seen:
            report.problems.append(f"{path}:{number}: leakage: the same prompt is in train at {seen}")


def distribution(values: list[str]) -> dict[str, int]:
    """Counts in order of first appearance (as the tutorial's Counter prints them)."""
    return dict(Counter(values))


def summary_lines(report: ValidationReport) -> list[str]:
    """The tutorial's success output, plus task types and where train/val came from."""
    rows = [row for _, _, row in report.rows]
    n_train = sum(1 for row in rows if report.sides.get(row.id) == "train")
    n_val = sum(1 for row in rows if report.sides.get(row.id) == "val")
    sources = sorted(set(report.side_source.values()))
    lines = [
        f"Total rows: {len(rows)}",
        f"Train/val: {n_train} / {n_val}",
        f"Difficulty distribution: {distribution([r.metadata.difficulty for r in rows])}",
        f"Task types: {distribution([r.metadata.task_type for r in rows])}",
        f"(train/val decided by {' and '.join(sources)})",
    ]
    unassigned = len(rows) - n_train - n_val
    if unassigned:
        lines.append(f"{unassigned} row(s) are neither train nor val: name the file *_train/*_val or prefix ids train-/val-")
    return lines
