"""JSONL in and out, with every bad line reported as ``file:line: what is wrong``.

Readers collect all problems before failing (a user fixing a file wants the whole list, not one
error per run) and never skip a bad line silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .errors import UserError

M = TypeVar("M", bound=BaseModel)


def describe_validation_error(err: ValidationError) -> list[str]:
    """Turn a pydantic error into short ``field: message`` strings."""
    out = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(row)"
        msg = item["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        out.append(f"{loc}: {msg}")
    return out


def iter_json_lines(path: Path) -> Iterator[tuple[int, object | None, str | None]]:
    """Yield ``(line_number, value, error)`` for each non-blank line; exactly one of value/error."""
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a JSONL file") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield number, None, f"malformed JSON ({exc.msg} at column {exc.colno})"


def read_numbered_models(path: str | Path, model: type[M]) -> list[tuple[int, M]]:
    """Read a JSONL file of ``model`` with each item's 1-based line number; one UserError lists every bad line."""
    path = Path(path)
    items: list[tuple[int, M]] = []
    problems: list[str] = []
    for number, value, error in iter_json_lines(path):
        if error:
            problems.append(f"{path}:{number}: {error}")
            continue
        try:
            items.append((number, model.model_validate(value)))
        except ValidationError as exc:
            problems.extend(f"{path}:{number}: {msg}" for msg in describe_validation_error(exc))
    if problems:
        shown = problems[:20]
        more = f"\n… and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UserError("\n".join(shown) + more)
    return items


def read_models(path: str | Path, model: type[M]) -> list[M]:
    """Read a JSONL file of ``model``; raise one UserError listing every bad line."""
    return [item for _, item in read_numbered_models(path, model)]


def write_models(path: str | Path, items: Iterable[BaseModel], append: bool = False) -> int:
    """Write models as JSONL (compact, keys in field order); returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("a" if append else "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(item.model_dump_json(exclude_none=False) + "\n")
            count += 1
    return count
