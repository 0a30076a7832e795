"""The running example's tools over a corpus of filings: search, list, read.

(Signatures and docstrings are the schema source; implementations are filled in by the tool step.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class FilingsTools:
    """The three research tools bound to one corpus directory."""

    def __init__(self, corpus_dir: str | Path, read_budget: int = 8000) -> None:
        self.corpus_dir = Path(corpus_dir)
        self.read_budget = read_budget

    def search(self, query: str, top_k: int = 3) -> str:
        """Semantic search over the filings corpus.

        Args:
            query: What to look for, e.g. a company, a period and a metric.
            top_k: How many documents to return (1-10).
        """
        raise NotImplementedError

    def list(self, prefix: str = "") -> str:
        """List the document paths under a prefix.

        Args:
            prefix: A path prefix such as "filings/henderson"; empty lists everything.
        """
        raise NotImplementedError

    def read(self, path: str) -> str:
        """Read a document's text.

        Args:
            path: A document path as returned by search or list, e.g. "filings/henderson-10q-2025-q3.html".
        """
        raise NotImplementedError


def tool_specs() -> list[dict[str, Any]]:
    """OpenAI function specs of the three tools, derived from the signatures above."""
    from transformers.utils import get_json_schema

    probe = FilingsTools.__new__(FilingsTools)
    return [get_json_schema(getattr(probe, name)) for name in ("search", "list", "read")]
