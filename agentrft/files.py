"""Reading a user's file: every way it can be unreadable becomes one ``UserError`` line naming the
file, and the line where there is one.

Readers of rows, records, traces, metrics, graders, cases and tokens go through here (JSONL through
``agentrft.jsonl``), so a missing file, a directory, a file that is not UTF-8 (a binary file, a
UTF-16 export with its byte-order mark) or a line of tens of megabytes reads the same way in every
command. Text is UTF-8; a UTF-8 byte-order mark (Excel and Notepad write one) is dropped. Lines end at
``\\n`` (``\\r\\n`` too), as JSONL and YAML define them — not at ``str.splitlines``' other breaks
(U+2028, form feed), which JSON strings may hold raw and which would put every later line number off.
Nothing here writes: ``refuse_overwrite`` is the check commands make before writing an output.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import UserError

MAX_LINE_BYTES = 16 * 2**20
"""Longest line (and whole YAML/JSON file) read. A row, a record or a trajectory is kilobytes; a line
of megabytes is a blob pasted in or a file without line breaks, and reading it whole would take
memory without bound before any check could say so."""

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def open_binary(path: Path, what: str = "a file") -> BinaryIO:
    """Open ``path`` for reading bytes; a missing file, a directory or no permission is a UserError."""
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected {what}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc.__class__.__name__})") from None


def decode(path: Path, data: bytes, first_line: int = 1) -> str:
    """``data`` as UTF-8 text; anything else is a UserError at its line and column.

    ``first_line`` is the line number of ``data``'s first byte (1 for a whole file).
    """
    if first_line == 1:
        if data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8) :]
        elif data.startswith(_UTF16_BOMS):
            raise UserError(f"{path}:1: UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); "
            "a binary file, or text in another encoding to save as UTF-8"
        ) from None


def iter_lines(path: Path, what: str = "a JSONL file") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every line, its line break removed, reading one line at a time."""
    with open_binary(path, what) as handle:
        number = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise UserError(
                    f"{path}:{number}: line longer than {_mib(MAX_LINE_BYTES)}; expected {what}, one value a line"
                )
            yield number, decode(path, raw, number).rstrip("\r\n")


def read_text(path: Path, what: str = "a text file", max_bytes: int | None = MAX_LINE_BYTES) -> str:
    """The whole of a small text file (a grader, a config, a token); ``max_bytes=None`` for no limit."""
    with open_binary(path, what) as handle:
        data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise UserError(f"{path}: larger than {_mib(max_bytes)}; expected {what}")
    return decode(path, data)


def split_lines(text: str) -> list[str]:
    """``text``'s lines as ``iter_lines`` numbers them (``lines[n - 1]`` is line ``n``)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the break that ends the last line does not start another
    return [line.removesuffix("\r") for line in lines]


def refuse_overwrite(out: Path, *inputs: Path | None, flag: str = "--out") -> None:
    """A UserError when ``out`` is one of the command's input files: a command never rewrites its input."""
    for source in inputs:
        if source is not None and out.resolve() == source.resolve():
            raise UserError(f"{flag} {out}: is the input file {source}; write the output elsewhere")


__all__ = ["MAX_LINE_BYTES", "decode", "iter_lines", "open_binary", "read_text", "refuse_overwrite", "split_lines"]
