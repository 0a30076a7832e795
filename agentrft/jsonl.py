"""JSONL in and out, with every bad line reported as ``file:line: what is wrong``.

Readers collect all problems before failing (a user fixing a file wants the whole list, not one
error per run) and never skip a bad line silently.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .errors import UserError
from .files import iter_lines

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


def describe_json_error(exc: json.JSONDecodeError) -> str:
    """``malformed JSON (what at column N)``; the line is the caller's to give."""
    return f"malformed JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})"


def json_type(value: object) -> str:
    """A JSON value's kind as a user would name it: "an array", "a number", "a string", ..."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    names = {dict: "an object", list: "an array", str: "a string", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def iter_json_lines(path: Path, what: str = "a JSONL file") -> Iterator[tuple[int, object | None, str | None]]:
    """Yield ``(line_number, value, error)`` for each non-blank line; exactly one of value/error.

    A file that cannot be read at all (missing, a directory, not UTF-8, a line over
    ``MAX_LINE_BYTES``) is one UserError instead: each of its lines would say the same.
    """
    for number, line in iter_lines(path, what):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield number, None, describe_json_error(exc)


def read_numbered_models(path: str | Path, model: type[M], allow_empty: bool = False) -> list[tuple[int, M]]:
    """Read a JSONL file of ``model`` with each item's 1-based line number; one UserError lists every bad line.

    A file without a single JSON line is an error unless ``allow_empty`` (a command's own output,
    created before its first record): an empty dataset is a mistake that would otherwise pass as
    "0 rows".
    """
    path = Path(path)
    items: list[tuple[int, M]] = []
    problems: list[str] = []
    seen_line = False
    for number, value, error in iter_json_lines(path, f"a JSONL file of {model.__name__}"):
        seen_line = True
        if error:
            problems.append(f"{path}:{number}: {error}")
            continue
        if not isinstance(value, dict):
            problems.append(f"{path}:{number}: expected a JSON object ({model.__name__}), got {json_type(value)}")
            continue
        try:
            items.append((number, model.model_validate(value)))
        except ValidationError as exc:
            problems.extend(f"{path}:{number}: {msg}" for msg in describe_validation_error(exc))
    if problems:
        shown = problems[:20]
        more = f"\n… and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UserError("\n".join(shown) + more)
    if not seen_line and not allow_empty:
        raise UserError(f"{path}: empty (no JSON lines); expected JSONL, one {model.__name__} a line")
    return items


def read_models(path: str | Path, model: type[M], allow_empty: bool = False) -> list[M]:
    """Read a JSONL file of ``model``; raise one UserError listing every bad line."""
    return [item for _, item in read_numbered_models(path, model, allow_empty)]


WRITE_CHUNK_BYTES = 1 << 20


def write_models(path: str | Path, items: Iterable[BaseModel], append: bool = False) -> int:
    """Write models as JSONL (compact, keys in field order); returns the number written.

    A write that fails (the disk full, a file-size limit) or is interrupted leaves no partial line:
    the file is cut back to where this write began, so every line before it stays whole and a
    resumed command reads on from there. The failure is one UserError naming the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise UserError(f"{path}: cannot write it ({exc.strerror or exc.__class__.__name__})") from None
    count, begin = 0, 0
    try:
        begin = os.fstat(fd).st_size
        buffer: list[str] = []
        size = 0
        for item in items:
            line = item.model_dump_json(exclude_none=False) + "\n"
            buffer.append(line)
            size += len(line)
            count += 1
            if size >= WRITE_CHUNK_BYTES:
                _write_all(fd, "".join(buffer).encode())
                buffer, size = [], 0
        _write_all(fd, "".join(buffer).encode())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, begin)
        if isinstance(exc, OSError):
            kept = "what it held before this write is kept" if append else "it is left empty"
            raise UserError(f"{path}: cannot write ({exc.strerror or exc}); {kept}") from None
        raise
    finally:
        os.close(fd)
    return count


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (a write may take fewer bytes than it was given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
