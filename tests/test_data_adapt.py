"""``agentrft data adapt`` on small files in TAT-QA's and FinQA's published layouts (tests/data/benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrft.cli import main
from conftest import run_cli
from agentrft.data.validate import validate_files
from agentrft.graders import answer_trajectory, load_grader
from agentrft.jsonl import read_models
from agentrft.schema import Row
from agentrft.tools.corpus import Corpus

SAMPLES = Path(__file__).parent / "data" / "benchmarks"
TATQA = SAMPLES / "tatqa_sample.json"
FINQA = SAMPLES / "finqa_sample.json"


@pytest.fixture(scope="module")
def tatqa_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tatqa")
    main(["data", "adapt", str(TATQA), "--format", "tatqa", "--out", str(out)])
    return out


def _rows(out: Path, kind: str, stem: str = "tatqa_sample") -> dict[str, Row]:
    return {row.metadata.source_id: row for row in read_models(out / f"{stem}_{kind}.jsonl", Row)}  # type: ignore[attr-defined]


def test_tatqa_every_question_is_a_row_or_a_reported_skip(tatqa_out: Path) -> None:
    rows = {**_rows(tatqa_out, "numeric"), **_rows(tatqa_out, "span"), **_rows(tatqa_out, "multi_span")}
    skipped = (tatqa_out / "tatqa_sample_skipped.txt").read_text().splitlines()
    assert len(rows) + len(skipped) == 14  # the sample's questions
    assert sorted(rows) == sorted(["q-arith", "q-pct", "q-numspan", "q-span", "q-multi", "q-year", "q-count", "q-dup-a"])
    assert skipped == [
        f"{TATQA}:2: questions[7]: [span] a span its document does not contain word for word",
        f"{TATQA}:2: questions[8]: [arithmetic] the same question has another answer in another context",
        f"{TATQA}:29: questions[0]: [arithmetic] the same question has another answer in another context",
        f"{TATQA}:29: questions[1]: [arithmetic] arithmetic answer is not a number (got \"n/a\")",
        f"{TATQA}:29: questions[3]: [span] a duplicate of an earlier question",
        f"{TATQA}:29: questions[4]: [unreadable] question without 'question' text or 'answer'",
    ]


def test_tatqa_references_carry_the_scale_and_spans_keep_their_words(tatqa_out: Path) -> None:
    numeric, span, multi = _rows(tatqa_out, "numeric"), _rows(tatqa_out, "span"), _rows(tatqa_out, "multi_span")
    assert {key: row.reference_answer for key, row in numeric.items()} == {
        "q-arith": "-12.6 million", "q-pct": "-22.22%", "q-numspan": "$1,496.5 million", "q-count": "1",
    }
    assert span["q-span"].reference_answer == "maintenance and support contracts"
    assert span["q-year"].reference_answer == "2019"  # a year is a label, checked as a string
    extra = multi["q-multi"].metadata.model_extra or {}
    assert [extra[f"span_{i}"] for i in (1, 2, 3)] == ["hardware products", "software subscriptions", "support contracts"]
    row = numeric["q-arith"]
    assert row.id == "tatqa-q-arith" and row.metadata.task_type == "arithmetic"
    assert row.expected.evidence_path == "tatqa/context-0001.html" and row.expected.must_use_tools == ["search", "read"]
    assert [spec.function.name for spec in row.tools] == ["search", "list", "read"]


def test_tatqa_documents_hold_the_table_and_the_paragraphs_in_order(tatqa_out: Path) -> None:
    corpus = Corpus(tatqa_out / "corpus")
    assert corpus.paths() == ["tatqa/context-0001.html", "tatqa/context-0002.html"]
    text = corpus.text("tatqa/context-0001.html")
    assert "Product revenue | $ 1,452.4 | $ 1,146.2" in text
    assert text.index("Revenue by type") < text.index("Service revenue includes")  # by "order", not file order


def test_adapted_rows_validate_and_their_graders_grade(tatqa_out: Path) -> None:
    files = sorted(tatqa_out.glob("tatqa_sample_*.jsonl"))
    report = validate_files(files)
    assert report.ok, report.problems
    graders = {kind: load_grader(tatqa_out / "graders" / f"{kind}.json") for kind in ("numeric", "span", "multi_span")}
    cases = [
        ("numeric", "q-arith", "Service revenue fell by $12.6 million.", 1.0),
        ("numeric", "q-numspan", "1,496.5 million", 1.0),
        ("numeric", "q-pct", "-22.2%", 0.5),
        ("span", "q-span", "It includes Maintenance and support contracts.", 1.0),
        ("span", "q-span", "support contracts", 0.0),
        ("multi_span", "q-multi", "Hardware products, software subscriptions and support contracts.", 1.0),
        ("multi_span", "q-multi", "Hardware products and software subscriptions.", 0.0),
    ]
    for kind, key, answer, reward in cases:
        row = _rows(tatqa_out, kind)[key]
        grade = graders[kind].grade(row, answer_trajectory(answer, row.id))
        assert grade.reward == reward, (kind, answer, grade.reason)


def test_finqa_pages_are_documents_and_percent_answers_keep_their_unit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["data", "adapt", str(FINQA), "--format", "finqa", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "5 questions: 3 rows + 2 skipped" in out
    rows = read_models(tmp_path / "finqa_sample_numeric.jsonl", Row)
    assert [(r.id, r.reference_answer, r.expected.evidence_path) for r in rows] == [
        ("finqa-ACME-2019-page_42.pdf-1", "8.571%", "finqa/ACME-2019-page_42.html"),
        ("finqa-ACME-2019-page_42.pdf-2", "730", "finqa/ACME-2019-page_42.html"),
        ("finqa-GLBX-2018-page_77.pdf-2", "2100", "finqa/GLBX-2018-page_77.html"),
    ]
    text = Corpus(tmp_path / "corpus").text("finqa/ACME-2019-page_42.html")
    assert text.index("presents interest expense") < text.index("interest expense | $ 380") < text.index("higher average")
    assert (tmp_path / "finqa_sample_skipped.txt").read_text().splitlines() == [
        f"{FINQA}:20: [arithmetic] a yes/no answer: a string check cannot tell 'no' from 'not'",
        f"{FINQA}:36: [unreadable] record without 'qa.question' (is this FinQA?)",
    ]


def test_jsonl_layout_reads_the_same_with_line_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = json.loads(FINQA.read_text())
    lines = tmp_path / "finqa_dev.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in records))
    code, out, err = run_cli(["data", "adapt", str(lines), "--format", "finqa", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert len(read_models(tmp_path / "out" / "finqa_dev_numeric.jsonl", Row)) == 3
    assert f"{lines}:3: [arithmetic] a yes/no" in (tmp_path / "out" / "finqa_dev_skipped.txt").read_text()


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        ('[{"table": 1,\n  "questions": [}]', "tatqa", "bad.json:2: malformed JSON"),
        ("", "tatqa", "bad.json: empty"),
        (None, "finqa", "no question could become a row (first: "),  # TAT-QA given as FinQA
        ("[]", "tatqa", "bad.json: no questions"),
        ("[1, 2]", "hotpot", "--format hotpot: expected one of tatqa, finqa"),
    ],
)
def test_bad_input_ends_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, fmt: str, message: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(TATQA.read_text() if content is None else content)
    code, out, err = run_cli(["data", "adapt", str(bad), "--format", fmt, "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and "Traceback" not in err
    assert message in err and len(err.strip().splitlines()) == 1, err
