"""The corpus tools: search, list and read over a folder of documents (``agentrft tools serve --corpus``).

The signatures and docstrings below are the only place the tools' schema is written: ``tool_specs()``
and the server both derive it from them, and every row ``data synth``, ``data adapt`` and ``data
generate`` write carries it, so its wording is data (the running example's warm-start cache is keyed
by its rows). Tool-level problems (an empty query, an unknown path) come back as text starting
``Error: `` so the model can read them and try again.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ..schema import ToolSpec
from .corpus import Corpus, PathError
from .registry import ToolRegistry, make_tool
from .search_index import QueryBatcher, SearchIndex

MAX_TOP_K = 10
SNIPPET_CHARS = 300


class CorpusTools:
    """The three research tools bound to one corpus directory."""

    def __init__(self, corpus_dir: str | Path, read_budget: int = 8000, *, embed: bool = True,
                 cache_dir: Path | None = None) -> None:
        self.corpus_dir = Path(corpus_dir)
        self.read_budget = read_budget
        self.embed = embed
        self.cache_dir = cache_dir
        self._corpus: Corpus | None = None
        self._index = None
        self._batcher = None
        self._lock = threading.Lock()

    def prepare(self) -> CorpusTools:
        """Read the corpus and build (or load) the search index; servers call this before serving."""
        with self._lock:
            if self._index is None:
                self._corpus = Corpus(self.corpus_dir)
                self._index = SearchIndex.build(self._corpus, self.cache_dir, embed=self.embed)
                self._batcher = QueryBatcher(self._index)
        return self

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            self.prepare()
        assert self._corpus is not None
        return self._corpus

    def registry(self) -> ToolRegistry:
        """The three tools for a server; search goes through the micro-batcher."""
        self.prepare()
        return ToolRegistry([make_tool(self.search, impl=self._search_batched), make_tool(self.list),
                             make_tool(self.read)])

    def search(self, query: str, top_k: int = 3) -> str:
        """Semantic search over the filings corpus.

        Args:
            query: What to look for, e.g. a company, a period and a metric.
            top_k: How many documents to return (1-10).
        """
        problem = _check_search(query, top_k)
        if problem:
            return problem
        self.prepare()
        return _format_hits(self._index.search(query.strip(), top_k))

    async def _search_batched(self, query: str, top_k: int = 3) -> str:
        problem = _check_search(query, top_k)
        if problem:
            return problem
        return _format_hits(await self._batcher.search(query.strip(), top_k))

    def list(self, prefix: str = "") -> str:
        """List the document paths under a prefix.

        Args:
            prefix: A path prefix such as "filings/henderson"; empty lists everything.
        """
        clean = prefix.strip().lstrip("./")
        paths = self.corpus.paths(clean)
        if not paths:
            return f"Error: no documents under {prefix!r}; list with an empty prefix shows every path"
        return "\n".join(paths)

    def read(self, path: str) -> str:
        """Read a document's text.

        Args:
            path: A document path as returned by search or list, e.g. "filings/henderson-10q-2025-q3.html".
        """
        if not path.strip():
            return "Error: path is required"
        try:
            text = self.corpus.text(path)
        except PathError as exc:
            return f"Error: {exc}"
        return cut_to_budget(text, self.read_budget)


def cut_to_budget(text: str, budget: int) -> str:
    """The text, or its first part with a marker saying how much was left out."""
    if len(text) <= budget:
        return text
    marker = f"\n[… truncated: showing {budget} of {len(text)} characters]"
    return text[:budget] + marker


def _check_search(query: str, top_k: int) -> str | None:
    if not query.strip():
        return "Error: query is required"
    if not 1 <= top_k <= MAX_TOP_K:
        return f"Error: top_k must be between 1 and {MAX_TOP_K}, got {top_k}"
    return None


def _format_hits(hits: list) -> str:
    if not hits:
        return "No matching documents; try other words or list to browse the paths."
    lines = []
    for hit in hits:
        snippet = hit.snippet if len(hit.snippet) <= SNIPPET_CHARS else hit.snippet[:SNIPPET_CHARS] + " ..."
        lines.append(f"{hit.path} (score {hit.score:.2f})")
        lines.extend("  " + line for line in snippet.split("\n"))
    return "\n".join(lines)


def tool_specs() -> list[dict[str, Any]]:
    """OpenAI function specs of the three tools, derived from the signatures above."""
    from transformers.utils import get_json_schema  # heavy: transformers

    probe = CorpusTools.__new__(CorpusTools)
    specs = [get_json_schema(getattr(probe, name)) for name in ("search", "list", "read")]
    for spec in specs:
        spec["function"].pop("return", None)
    return specs


def row_tool_specs() -> list[ToolSpec]:
    """The three tools' specs as a row's ``tools`` list carries them."""
    return [ToolSpec.model_validate(spec) for spec in tool_specs()]


__all__ = ["CorpusTools", "cut_to_budget", "row_tool_specs", "tool_specs"]
