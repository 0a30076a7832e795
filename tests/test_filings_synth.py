"""The generated corpus and rows: determinism, shape, highlights up front, facts that match."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from selectolax.lexbor import LexborHTMLParser

from agentrft.filings.facts import build_filings, filing_facts, format_money
from agentrft.data.validate import normalise_prompt
from agentrft.data.split import stratified_split
from agentrft.filings.synth import synth
from agentrft.filings.facts import METRIC_LABELS
from agentrft.data.validate import validate_files
from agentrft.jsonl import read_models
from agentrft.tools.corpus import html_to_text
from agentrft.schema import Row


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(synth_dir: Path) -> list[Row]:
    return read_models(synth_dir / "research_train.jsonl", Row) + read_models(synth_dir / "research_val.jsonl", Row)


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path, synth_dir: Path) -> None:
    synth(tmp_path / "a", companies=4, seed=0)
    first = _files(tmp_path / "a")
    assert first == _files(synth_dir)
    synth(tmp_path / "b", companies=4, seed=1)
    other = _files(tmp_path / "b")
    assert first.keys() == other.keys()
    assert first["research_train.jsonl"] != other["research_train.jsonl"]


def test_layout_and_row_counts(synth_dir: Path) -> None:
    filings = sorted(p.name for p in (synth_dir / "corpus" / "filings").glob("*.html"))
    assert "henderson-10q-2025-q3.html" in filings
    assert "henderson-10k-2024.html" in filings
    assert all(re.fullmatch(r"[a-z]+-(10q-\d{4}-q[1-4]|10k-\d{4})\.html", name) for name in filings)
    assert len({name.split("-")[0] for name in filings}) == 4
    press = list((synth_dir / "corpus" / "press").glob("*-press-*.html"))
    assert press, "distractor press releases are missing"
    rows = _rows(synth_dir)
    assert 100 <= len(rows) <= 1000
    assert len({r.id for r in rows}) == len(rows)
    assert all(re.fullmatch(r"(train|val)-\d{4}", r.id) for r in rows)


def test_rows_validate_and_are_complete(synth_dir: Path) -> None:
    report = validate_files([synth_dir / "research_train.jsonl", synth_dir / "research_val.jsonl"])
    assert report.ok, report.problems
    rows = _rows(synth_dir)
    types = Counter(r.metadata.task_type for r in rows)
    assert set(types) == {"numerical_qa", "computation", "comparison"}
    assert 0.5 <= types["numerical_qa"] / len(rows) <= 0.7
    assert set(Counter(r.metadata.difficulty for r in rows)) == {"easy", "medium", "hard"}
    for row in rows:
        assert row.tool_names() == ["search", "list", "read"]
        assert (synth_dir / "corpus" / row.expected.evidence_path).is_file()
        assert row.expected.must_use_tools
        extra = row.metadata.model_extra or {}
        assert extra["source"] == "synth" and extra["company"] and extra["period"] and extra["metric"]
        assert all("return" not in spec.function.model_extra for spec in row.tools)


def test_no_prompt_in_both_train_and_val(synth_dir: Path) -> None:
    train = {normalise_prompt(r.prompt) for r in read_models(synth_dir / "research_train.jsonl", Row)}
    val = {normalise_prompt(r.prompt) for r in read_models(synth_dir / "research_val.jsonl", Row)}
    assert not train & val


def _text(path: Path) -> str:
    return LexborHTMLParser(path.read_text(encoding="utf-8")).body.text(separator="\n", strip=True)


def test_highlights_in_first_400_characters_of_every_filing(synth_dir: Path) -> None:
    facts = filing_facts(companies=4, seed=0)
    assert len(facts) == len(list((synth_dir / "corpus" / "filings").glob("*.html")))
    for rel, figures in facts.items():
        head = _text(synth_dir / "corpus" / rel)[:400]
        lines = {line.strip() for line in head.splitlines()}
        # ... and in the text the read tool returns (title first, then the body).
        tool_head = html_to_text((synth_dir / "corpus" / rel).read_text(encoding="utf-8"))[:400]
        for metric, label in METRIC_LABELS.items():
            assert f"{label}: {figures[metric]}" in lines, (rel, metric)
            assert f"\n{label}: {figures[metric]}\n" in tool_head, (rel, metric)


def test_lookup_answers_are_printed_in_their_evidence_document(synth_dir: Path) -> None:
    rows = [r for r in _rows(synth_dir) if r.metadata.task_type == "numerical_qa"]
    for row in rows:
        text = _text(synth_dir / "corpus" / row.expected.evidence_path)
        answer = row.reference_answer
        if answer.startswith("$") and answer.endswith("M"):
            # Body-only figures appear in the statement tables as plain millions.
            assert answer in text or answer[1:-1] in text.split("\n"), (row.id, answer)
        else:
            assert answer in text, (row.id, answer)


def test_facts_are_consistent() -> None:
    for filing in build_filings(companies=12, seed=3):
        s = filing.statement
        assert s.revenue > s.gross_profit > s.operating_income > 0 < s.net_income
        assert sum(s.segments.values()) == s.revenue
        assert filing.facts["revenue"] == format_money(s.revenue)
        assert filing.facts["operating_margin"] == f"{100 * s.operating_income / s.revenue:.1f}%"


def test_figures_do_not_depend_on_how_many_companies() -> None:
    four = filing_facts(companies=4, seed=0)
    twelve = filing_facts(companies=12, seed=0)
    assert all(twelve[path] == figures for path, figures in four.items())


def test_money_format() -> None:
    assert format_money(842) == "$842M"
    assert format_money(1432) == "$1.43B"


@pytest.mark.parametrize("frac", [0.1, 0.2, 0.35, 0.5])
def test_split_keeps_every_stratum_within_one_row(synth_dir: Path, frac: float) -> None:
    rows = _rows(synth_dir)
    result = stratified_split(rows, frac, seed=7)
    assert len(result.train) + len(result.val) == len(rows)
    assert {r.id for r in result.train}.isdisjoint(r.id for r in result.val)
    for (task, difficulty), (n_train, n_val) in result.counts.items():
        assert abs(n_val - (n_train + n_val) * frac) <= 1, (task, difficulty)
        assert n_val == sum(1 for r in result.val if (r.metadata.task_type, r.metadata.difficulty) == (task, difficulty))
    again = stratified_split(rows, frac, seed=7)
    assert [r.id for r in again.val] == [r.id for r in result.val]


def test_synth_rows_are_the_tutorial_shape(synth_dir: Path) -> None:
    line = (synth_dir / "research_val.jsonl").read_text(encoding="utf-8").splitlines()[0]
    raw = json.loads(line)
    assert {"id", "prompt", "reference_answer", "expected", "tools", "metadata"} <= raw.keys()
    assert set(raw["expected"]) == {"tolerance_rel", "evidence_path", "must_use_tools"}
