"""``agentrft data synth``: the running example's corpus of filings and its question rows.

Writes ``out/corpus/filings/*.html`` (10-Qs and 10-Ks), ``out/corpus/press/*.html`` (distractors
quoting other periods) and ``out/research_train.jsonl`` / ``out/research_val.jsonl``. Everything is
a function of ``(companies, seed)``: no clock, no set or dict-order dependence, so the same seed
gives the same bytes.

The ground truth is importable (``facts.METRIC_LABELS``, ``facts.build_filings``, ``facts.filing_facts``)
so other code can use the exact figures without parsing the HTML.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..data.split import Stratum, stratified_split
from ..jsonl import write_models
from ..schema import Expected, Row, RowMetadata, ToolSpec
from ..tools.corpus_tools import row_tool_specs
from .corpus_html import press_path, render_filing, render_press
from .facts import Filing, Period, build_filings
from .questions import ROWS_PER_COMPANY, Question, generate_questions

TRAIN_FILE = "research_train.jsonl"
VAL_FILE = "research_val.jsonl"
VAL_FRAC = 0.2
# Press releases published in these quarters recap the previous quarter's 10-Q.
PRESS_QUARTERS = (Period(2024, 4), Period(2025, 3))


@dataclass(frozen=True)
class SynthSummary:
    out_dir: Path
    documents: int
    train_rows: int
    val_rows: int
    strata: dict[Stratum, tuple[int, int]]

    @property
    def train_path(self) -> Path:
        return self.out_dir / TRAIN_FILE

    @property
    def val_path(self) -> Path:
        return self.out_dir / VAL_FILE


def write_corpus(filings: list[Filing], corpus_dir: Path, seed: int) -> int:
    """Write every filing and press release; remove stale HTML from an earlier, larger run."""
    documents: dict[str, str] = {f.path: render_filing(f, seed) for f in filings}
    by_key = {(f.company.slug, f.period): f for f in filings}
    for published in PRESS_QUARTERS:
        quoted = Period(published.year, published.quarter - 1) if published.quarter > 1 else None
        for company in dict.fromkeys(f.company.slug for f in filings):
            filing = by_key.get((company, quoted))
            if filing is not None:
                documents[press_path(filing, published)] = render_press(filing, published)
    for sub in ("filings", "press"):
        folder = corpus_dir / sub
        folder.mkdir(parents=True, exist_ok=True)
        for old in sorted(folder.glob("*.html")):
            if f"{sub}/{old.name}" not in documents:
                old.unlink()
    for rel, html in documents.items():
        (corpus_dir / rel).write_text(html, encoding="utf-8", newline="\n")
    return len(documents)


def _to_row(question: Question, tools: list[ToolSpec]) -> Row:
    metadata = RowMetadata(
        task_type=question.task_type,
        difficulty=question.difficulty,
        company=question.company,
        period=question.period,
        metric=question.metric,
        source="synth",
        **question.extra,
    )
    return Row(
        id="pending",
        prompt=question.prompt,
        reference_answer=question.answer,
        expected=Expected(
            tolerance_rel=question.tolerance,
            evidence_path=question.evidence_path,
            must_use_tools=list(question.must_use_tools),
        ),
        tools=tools,
        metadata=metadata,
    )


def synth_rows(companies: int = 8, seed: int = 0) -> list[Row]:
    """The generated rows, shuffled, with placeholder ids (``synth`` numbers them per split)."""
    filings = build_filings(companies, seed)
    questions = generate_questions(filings, ROWS_PER_COMPANY * companies, seed)
    random.Random(f"agentrft-order:{seed}").shuffle(questions)
    tools = row_tool_specs()
    return [_to_row(q, tools) for q in questions]


def synth(out_dir: Path, companies: int = 8, seed: int = 0) -> SynthSummary:
    """Generate the corpus and the split rows into ``out_dir``; same arguments, same bytes."""
    out_dir = Path(out_dir)
    filings = build_filings(companies, seed)
    documents = write_corpus(filings, out_dir / "corpus", seed)
    split = stratified_split(synth_rows(companies, seed), VAL_FRAC, seed)
    train = [row.model_copy(update={"id": f"train-{i:04d}"}) for i, row in enumerate(split.train, 1)]
    val = [row.model_copy(update={"id": f"val-{i:04d}"}) for i, row in enumerate(split.val, 1)]
    write_models(out_dir / TRAIN_FILE, train)
    write_models(out_dir / VAL_FILE, val)
    return SynthSummary(out_dir, documents, len(train), len(val), split.counts)


__all__ = ["SynthSummary", "synth", "synth_rows", "write_corpus"]
