"""A corpus directory as the tools see it: safe relative paths, readable text, search chunks.

The corpus is snapshotted when the server starts: every regular file under the directory (hidden
files and symlinks that leave the directory are skipped) is read once, HTML is turned into text with
selectolax, and the text is cut into chunks (a paragraph, a heading, a table) for search. A path a
caller gives is accepted only if, after URL-decoding and unicode normalisation, it names one of those
files, so ``..``, absolute paths and escaping symlinks cannot reach anything outside.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from selectolax.lexbor import LexborHTMLParser

log = logging.getLogger("agentrft.tools")

TEXT_SUFFIXES = {".html", ".htm", ".txt", ".md", ".json", ".csv", ".xml", ".jsonl", ".yaml", ".yml"}
_LEAF_BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "pre", "caption", "dt", "dd", "blockquote", "title"}
_SKIP = {"script", "style", "noscript", "template", "head"}
_SPACE = re.compile(r"\s+")
CHUNK_CHARS = 400
"""Longest chunk; longer blocks (big tables) are split at line boundaries."""


class PathError(ValueError):
    """A caller's path is unsafe or names no document; the message is model-readable."""


@dataclass(frozen=True)
class Chunk:
    path: str
    text: str


def html_to_text(html: str) -> str:
    """Readable text: one block per line group, table rows as ``cell | cell``."""
    tree = LexborHTMLParser(html)
    blocks: list[str] = []
    title = tree.css_first("title")
    if title is not None and title.text(strip=True):
        blocks.append(_clean(title.text()))
    root = tree.body
    if root is not None:
        loose: list[str] = []
        _walk(root, blocks, loose)
        _flush(loose, blocks)
    return "\n\n".join(b for b in blocks if b)


def _clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _flush(loose: list[str], blocks: list[str]) -> None:
    text = _clean(" ".join(loose))
    if text:
        blocks.append(text)
    loose.clear()


def _walk(node, blocks: list[str], loose: list[str]) -> None:
    for child in node.iter(include_text=True):
        tag = child.tag
        if tag == "-text":
            loose.append(child.text(deep=False))
        elif tag in _SKIP or tag == "-comment":
            continue
        elif tag == "table":
            _flush(loose, blocks)
            rows = []
            for tr in child.css("tr"):
                cells = [_clean(c.text(separator=" ")) for c in tr.iter() if c.tag in ("td", "th")]
                if any(cells):
                    rows.append(" | ".join(cells))
            caption = child.css_first("caption")
            if caption is not None:
                rows.insert(0, _clean(caption.text(separator=" ")))
            blocks.append("\n".join(rows))
        elif tag in _LEAF_BLOCKS:
            _flush(loose, blocks)
            blocks.append(_clean(child.text(separator=" ")))
        elif tag in ("br",):
            loose.append(" ")
        elif tag in ("span", "b", "i", "em", "strong", "a", "small", "sup", "sub", "u", "code", "abbr"):
            loose.append(child.text(separator=" "))
        else:
            _flush(loose, blocks)
            _walk(child, blocks, loose)
            _flush(loose, blocks)


def chunk_text(path: str, text: str, max_chars: int = CHUNK_CHARS) -> list[Chunk]:
    """Paragraph-level chunks; a long block is split at line (table row) or word boundaries."""
    chunks: list[Chunk] = []
    for block in _pack(text.split("\n\n"), max_chars):
        piece: list[str] = []
        size = 0
        for line in _split_long(block.split("\n"), max_chars):
            if piece and size + len(line) + 1 > max_chars:
                chunks.append(Chunk(path, "\n".join(piece)))
                piece, size = [], 0
            piece.append(line)
            size += len(line) + 1
        if piece:
            chunks.append(Chunk(path, "\n".join(piece)))
    return chunks


def _pack(blocks: list[str], max_chars: int) -> list[str]:
    """Join short neighbouring blocks (a heading and its paragraph) so a chunk carries its context."""
    packed: list[str] = []
    for block in (b.strip() for b in blocks):
        if not block:
            continue
        if packed and len(packed[-1]) + len(block) + 2 <= max_chars // 2:
            packed[-1] = f"{packed[-1]}\n{block}"
        else:
            packed.append(block)
    return packed


def _split_long(lines: list[str], max_chars: int) -> list[str]:
    out = []
    for line in lines:
        while len(line) > max_chars:
            cut = line.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            out.append(line[:cut])
            line = line[cut:].lstrip()
        out.append(line)
    return out


def normalize_path(path: str) -> str:
    """Decode and normalise a caller's path; raise PathError for anything that could escape."""
    text = path
    for _ in range(3):  # %252e%252e decodes twice; stop once stable
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    text = unicodedata.normalize("NFKC", text).strip()
    if "\x00" in text or "\\" in text:
        raise PathError(f"invalid path {path!r}")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or text.startswith("~"):
        raise PathError(f"path {path!r} must be relative to the corpus, e.g. filings/<name>.html")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathError(f"path {path!r} leaves the corpus")
    return "/".join(parts)


class Corpus:
    """The documents under one directory, read once."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"corpus directory {self.root} does not exist")
        self.texts: dict[str, str] = {}
        self._fingerprint = hashlib.sha256()
        real_root = self.root.resolve()
        for rel, full in sorted(_walk_files(self.root)):
            if not full.resolve().is_relative_to(real_root):
                log.warning("skipping %s: it links outside the corpus", rel)
                continue
            data = full.read_bytes()
            self._fingerprint.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
            raw = data.decode("utf-8", errors="replace")
            self.texts[rel] = html_to_text(raw) if full.suffix.lower() in (".html", ".htm") else raw
        if not self.texts:
            raise FileNotFoundError(f"corpus directory {self.root} holds no readable documents")

    @property
    def fingerprint(self) -> str:
        """A hash of every path and its bytes: the search cache's key."""
        return self._fingerprint.hexdigest()

    def paths(self, prefix: str = "") -> list[str]:
        return [p for p in self.texts if p.startswith(prefix)]

    def text(self, path: str) -> str:
        rel = normalize_path(path)
        if rel not in self.texts:
            raise PathError(f"no document at {path!r}; use list to see the available paths")
        return self.texts[rel]

    def chunks(self, max_chars: int = CHUNK_CHARS) -> list[Chunk]:
        return [c for path, text in self.texts.items() for c in chunk_text(path, text, max_chars)]


def _walk_files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            full = Path(dirpath) / name
            if name.startswith(".") or full.suffix.lower() not in TEXT_SUFFIXES or not full.is_file():
                continue
            yield full.relative_to(root).as_posix(), full
