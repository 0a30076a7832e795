"""Corpus reading, path safety, chunking, the search index's cache and the query micro-batcher."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from agentrft.tools.corpus import Corpus, PathError, chunk_text, html_to_text, normalize_path
from agentrft.tools.corpus_tools import CorpusTools, cut_to_budget
from agentrft.tools.search_index import QueryBatcher, SearchIndex, terms
from agentrft.tools.local_server import running_server

HTML = """<html><head><title>Acme 10-Q Q3 2025</title><style>p {color: red}</style>
<script>var secret = 1;</script></head><body><h1>Acme Form 10-Q</h1>
<p>Revenue was <b>$842M</b>, up 6%.</p><!-- hidden comment -->
<table><tr><th>Metric</th><th>Q3</th></tr><tr><td>Operating margin</td><td>13.4%</td></tr></table>
<ul><li>Net income: $51M</li></ul></body></html>"""


@pytest.fixture()
def small_corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "filings").mkdir(parents=True)
    (root / "filings" / "acme-10q-2025-q3.html").write_text(HTML)
    (root / "filings" / "zenith-10k-2024.html").write_text(
        "<html><head><title>Zenith 10-K 2024</title></head><body>"
        + "".join(f"<p>Paragraph {i}: Zenith gross margin was {20 + i}.0% in segment {i}.</p>" for i in range(40))
        + "</body></html>"
    )
    (root / "notes.txt").write_text("plain text note about dividends")
    (root / ".hidden.txt").write_text("not served")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET outside the corpus")
    os.symlink(secret, root / "filings" / "escape.txt")
    os.symlink(tmp_path, root / "filings" / "up")
    return root


def test_html_to_text_keeps_readable_text_only() -> None:
    text = html_to_text(HTML)
    assert text.splitlines()[0] == "Acme 10-Q Q3 2025"
    assert "Revenue was $842M , up 6%." in text or "Revenue was $842M, up 6%." in text
    assert "Operating margin | 13.4%" in text and "Net income: $51M" in text
    for junk in ("secret", "color", "hidden comment", "<"):
        assert junk not in text


def test_chunks_stay_under_the_limit_and_cover_the_text() -> None:
    text = "\n\n".join(f"Paragraph {i} " + "word " * (i * 7) for i in range(30))
    chunks = chunk_text("a.html", text, max_chars=200)
    assert all(len(c.text) <= 200 for c in chunks)
    assert "".join(c.text for c in chunks).count("word") == text.count("word")


@pytest.mark.parametrize(
    "path", ["../x", "a/../../x", "/etc/passwd", "%2e%2e/x", "%252e%252e/x", "\uff0e\uff0e/x", "a\\..\\x", "~/x",
             "C:/x", "a/\x00"],
)
def test_normalize_path_refuses_escapes(path: str) -> None:
    with pytest.raises(PathError):
        normalize_path(path)


def test_normalize_path_accepts_harmless_variants() -> None:
    assert normalize_path("./filings//a.html") == "filings/a.html"
    assert normalize_path("filings%2Fa.html") == "filings/a.html"


def test_corpus_skips_hidden_files_and_escaping_symlinks(small_corpus: Path) -> None:
    corpus = Corpus(small_corpus)
    assert corpus.paths() == ["filings/acme-10q-2025-q3.html", "filings/zenith-10k-2024.html", "notes.txt"]
    for path in ("filings/escape.txt", "filings/up/secret.txt", ".hidden.txt"):
        with pytest.raises(PathError):
            corpus.text(path)


def test_read_budget_marks_the_cut() -> None:
    assert cut_to_budget("short", 10) == "short"
    cut = cut_to_budget("x" * 5123, 400)
    assert cut.startswith("x" * 400) and cut.endswith("[… truncated: showing 400 of 5123 characters]")


def test_small_budget_server_and_symlink_escape(small_corpus: Path) -> None:
    with running_server(corpus_dir=small_corpus, token="t", read_budget=120, embed=False) as url:
        def read(path: str) -> str:
            reply = httpx.post(url + "/read", json={"arguments": {"path": path}, "call_id": "r"},
                               headers={"Authorization": "Bearer t"})
            return reply.json()["output"]

        text = read("filings/zenith-10k-2024.html")
        assert text.startswith("Zenith 10-K 2024") and "[… truncated: showing 120 of" in text
        assert len(text.split("\n[…")[0]) == 120
        for path in ("filings/escape.txt", "filings/up/secret.txt"):
            assert read(path).startswith("Error: ") and "SECRET" not in read(path)
        assert read("notes.txt") == "plain text note about dividends"


def test_index_cache_is_keyed_by_corpus_contents(small_corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = SearchIndex.build(Corpus(small_corpus), cache, embed=True)
    files = list(cache.glob("*/embeddings.npy"))
    assert len(files) == 1 and first.embeddings.shape == (len(first.chunks), 384)
    mtime = files[0].stat().st_mtime_ns
    again = SearchIndex.build(Corpus(small_corpus), cache, embed=True)
    assert files[0].stat().st_mtime_ns == mtime  # loaded, not re-embedded
    assert (again.embeddings == first.embeddings).all()
    (small_corpus / "notes.txt").write_text("changed note about buybacks")
    SearchIndex.build(Corpus(small_corpus), cache, embed=True)
    assert len(list(cache.glob("*/embeddings.npy"))) == 2


def test_search_finds_the_best_chunk(small_corpus: Path, tmp_path: Path) -> None:
    tools = CorpusTools(small_corpus, cache_dir=tmp_path / "cache")
    out = tools.search("Acme operating margin", top_k=2)
    first, snippet = out.splitlines()[:2]
    assert first.startswith("filings/acme-10q-2025-q3.html (score ")
    assert "Operating margin | 13.4%" in out and snippet.startswith("  ")
    zenith = tools.search("Zenith gross margin in segment 17", top_k=1)
    assert zenith.splitlines()[0].startswith("filings/zenith-10k-2024.html") and "segment 17" in zenith
    assert tools.search("  ") == "Error: query is required"


def test_concurrent_queries_are_batched_with_unchanged_results(small_corpus: Path, tmp_path: Path) -> None:
    index = SearchIndex.build(Corpus(small_corpus), tmp_path / "cache", embed=True)
    queries = [f"gross margin segment {i}" for i in range(16)]
    solo = [index.search(q, 3) for q in queries]

    for workers in (1, 2):
        index._query_cache.clear()  # embed afresh, so two workers tokenize and embed at the same time
        batcher = QueryBatcher(index, max_batch=64, max_wait_s=0.005, workers=workers)

        async def run():
            return await asyncio.gather(*(batcher.search(q, 3) for q in queries))

        batched = asyncio.run(run())
        assert [[h.path for h in hits] for hits in batched] == [[h.path for h in hits] for hits in solo]
        assert [[h.snippet for h in hits] for hits in batched] == [[h.snippet for h in hits] for hits in solo]
        if workers == 1:  # one worker takes everything waiting
            assert batcher.batches == 1
        else:  # two share it
            assert 2 <= batcher.batches < len(queries) / 2


def test_terms_are_words_without_stopwords_and_their_neighbouring_pairs() -> None:
    assert terms("The Tax credits of 2019") == ["tax", "credits", "2019", "tax credits", "credits 2019"]


def test_a_phrase_outranks_the_same_words_scattered(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    # The same words in both (a tie for single words, which keeps path order); the phrase in the second.
    (root / "1-scattered.txt").write_text("Tax expense rose; customer credits fell.\n\nLeases | 32,289")
    (root / "2-phrase.txt").write_text("Tax credits rose; customer expense fell.\n\nLeases | 32,289")
    index = SearchIndex.build(Corpus(root), embed=False)
    hits = index.search("What were the tax credits?", 2)
    assert [hit.path for hit in hits] == ["2-phrase.txt", "1-scattered.txt"]
    assert hits[0].score == 1.0 > hits[1].score and hits[0].snippet.startswith("Tax credits rose")


def test_embeddings_reorder_and_fill_in_where_no_word_matches(small_corpus: Path, tmp_path: Path) -> None:
    index = SearchIndex.build(Corpus(small_corpus), tmp_path / "cache", embed=True)
    assert index.search("zzqx wibble", 3, ranking="bm25") == []
    filled = index.search("zzqx wibble", 3)  # no shared word: the nearest documents by meaning
    assert len(filled) == 3 and all(0.0 <= hit.score <= 1.0 for hit in filled)
    dense = index.search("dividends paid to shareholders", 1, ranking="embeddings")
    assert dense[0].path == "notes.txt"
    hybrid = index.search("Acme operating margin", 3)
    assert hybrid[0].path == "filings/acme-10q-2025-q3.html" and hybrid[0].score > hybrid[1].score
