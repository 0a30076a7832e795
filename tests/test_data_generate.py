"""``agentrft data generate``: a scripted endpoint for what is kept and dropped, then a real vLLM server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from agentrft.agent.testing import running_chat_server
from agentrft.cli import main
from agentrft.data.generate import GenerateSettings, generate, grounded, parse_pair
from agentrft.data.validate import validate_files
from agentrft.jsonl import read_models
from agentrft.schema import Row


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "filings").mkdir(parents=True)
    (root / "filings" / "acme-10q-2025-q3.html").write_text(
        "<html><head><title>Acme 10-Q Q3 2025</title></head><body><p>Revenue was $842M.</p>"
        "<table><tr><td>Operating margin</td><td>13.4%</td></tr></table><p>Chief executive: Dana Wu.</p></body></html>"
    )
    (root / "filings" / "zenith-10k-2024.html").write_text(
        "<html><head><title>Zenith 10-K 2024</title></head><body><p>Net income was $51 million.</p></body></html>"
    )
    return root


def test_parse_pair_and_grounding() -> None:
    assert parse_pair('```json\n{"question": " What was Acme\'s revenue? ", "answer": 842}\n```') == (
        "What was Acme's revenue?", "842")
    for bad in ("no json here", '{"question": "q"}', '["q", "a"]'):
        with pytest.raises(Exception):
            parse_pair(bad)
    doc = "Revenue was $842M. Operating margin | 13.4%. Chief executive: Dana Wu."
    assert grounded("842 million dollars", doc) and grounded("13.4 percent", doc) and grounded("dana WU", doc)
    assert not grounded("$850M", doc) and not grounded("Dana Smith", doc)


def scripted_teacher():
    """Replies by document and visit: Acme gets a good pair, the same question again, then a second
    good pair; Zenith gets a figure its document does not hold, then prose."""
    visits: dict[str, int] = {}

    def script(messages: list[dict[str, Any]]) -> str:
        prompt = messages[-1]["content"]
        doc = "acme" if "acme-10q" in prompt else "zenith"
        visits[doc] = visit = visits.get(doc, 0) + 1
        if doc == "acme" and visit < 3:
            return json.dumps({"question": "What was Acme's Q3 2025 revenue?", "answer": "$842 million"})
        if doc == "acme":
            return json.dumps({"question": "Who is Acme's chief executive?", "answer": "Dana Wu"})
        if visit == 1:
            return '{"question": "What was Zenith\'s 2024 net income?", "answer": "$57 million"}'
        return "Zenith had a good year."

    return script


def test_pairs_are_kept_only_when_grounded_and_new(corpus: Path, tmp_path: Path) -> None:
    with running_chat_server(scripted_teacher(), model="teacher") as (url, log):
        settings = GenerateSettings(n=2, seed=0, concurrency=1, max_requests=6)
        result = generate(corpus, url, "teacher", settings, tools=[])
    assert result.requests == len(log.requests) == 5  # acme, zenith, acme, zenith, acme: then 2 are kept
    assert [(row.prompt, row.reference_answer, row.expected.evidence_path) for row in result.rows] == [
        ("What was Acme's Q3 2025 revenue?", "$842 million", "filings/acme-10q-2025-q3.html"),
        ("Who is Acme's chief executive?", "Dana Wu", "filings/acme-10q-2025-q3.html"),
    ]
    assert result.dropped == [
        ("filings/zenith-10k-2024.html", "the answer cannot be found in its document"),
        ("filings/acme-10q-2025-q3.html", "a duplicate of an earlier question"),
        ("filings/zenith-10k-2024.html", "the reply is not a JSON object"),
    ]
    second_ask = [body for body in log.requests if "acme-10q" in body["messages"][-1]["content"]][1]
    assert "Do not ask again:\n- What was Acme's Q3 2025 revenue?" in second_ask["messages"][-1]["content"]
    assert log.requests[0]["response_format"]["json_schema"]["schema"]["required"] == ["question", "answer"]


def test_generate_command_writes_rows_that_validate(corpus: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "generated_train.jsonl"
    with running_chat_server(scripted_teacher(), model="teacher") as (url, _):
        main(["data", "generate", "--corpus", str(corpus), "--endpoint", url, "--model", "teacher", "--out", str(out),
              "--n", "2", "--no-json-schema"])
    printed = capsys.readouterr().out
    assert "Kept 2 of 2 pairs asked for" in printed and "Dropped " in printed
    assert validate_files([out]).ok
    assert [row.id for row in read_models(out, Row)] == ["gen-0001", "gen-0002"]


def test_nothing_kept_is_one_line_and_no_file(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.jsonl"
    with running_chat_server(lambda messages: "no idea", model="teacher") as (url, _):
        with pytest.raises(SystemExit) as exit_info:
            main(["data", "generate", "--corpus", str(corpus), "--endpoint", url, "--model", "teacher",
                  "--out", str(out), "--n", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and not out.exists()
    assert re.fullmatch(r"error: .*: no pair kept from 3 requests \(3 the reply is not a JSON object\); nothing written\n",
                        err)


def test_against_a_real_vllm_server(vllm_server: Any, synth_dir: Path) -> None:
    """The tiny model's pairs are nonsense; what is tested is the plumbing: every request answered,
    parsed under the JSON schema vLLM enforces, and accounted for."""
    from agentrft.agent.policy import served_model_name

    model = served_model_name(vllm_server.url)
    settings = GenerateSettings(n=4, seed=0, max_requests=4, doc_chars=600, max_tokens=48, temperature=1.0)
    result = generate(synth_dir / "corpus", vllm_server.url, model, settings, tools=[])
    assert result.requests == 4 and len(result.rows) + len(result.dropped) == 4
    reasons = set(result.reasons())
    assert not any(reason.startswith("endpoint error") for reason in reasons), reasons
    assert reasons <= {"the answer cannot be found in its document", "a duplicate of an earlier question",
                       "the reply has no 'question' and 'answer' text", "the reply is not a JSON object",
                       "the answer is over 120 characters (a reference is a figure or a name)"}
