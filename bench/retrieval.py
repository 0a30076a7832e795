"""Retrieval quality and cost of the ``search`` tool: BM25 alone, embeddings alone and the shipped
search side by side, on real reports (TAT-QA's dev set, adapted) and on the generated filings.

A query is a row's prompt and its gold document the row's ``expected.evidence_path``: TAT-QA's dev
set goes through ``agentrft data adapt`` (the questions it skips are not queries), and the filings
are ``agentrft data synth`` (8 companies, seed 0; every row with an evidence path, train and val).
Recall@k is the share of queries whose gold document is among the first k hits of
``search(query, top_k=5)``. Cost is wall time per query of ``SearchIndex.search_batch`` on one
thread (as one search worker of the tool server runs), with the query-embedding cache emptied
first: batch 1 sends the queries one at a time, batch 32 in batches of 32 (the server batches
concurrent searches). Building the index (and embedding the corpus once; it is cached on disk) is
not counted.

    .venv/bin/python bench/retrieval.py --tatqa ../shared/data/tatqa/tatqa_dataset_dev.json

``--tatqa`` defaults to that path beside the repository; where the file is missing only the filings
are measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentrft.data.adapt import adapt, write_adapted  # noqa: E402
from agentrft.data.benchmarks import read_benchmark  # noqa: E402
from agentrft.filings.synth import synth  # noqa: E402
from agentrft.jsonl import read_models  # noqa: E402
from agentrft.schema import Row  # noqa: E402
from agentrft.tools.corpus import Corpus  # noqa: E402
from agentrft.tools.search_index import SearchIndex  # noqa: E402

DEFAULT_TATQA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatqa" / "tatqa_dataset_dev.json"
RANKINGS = (("BM25 alone", "bm25"), ("embeddings alone", "embeddings"), ("shipped search", "hybrid"))
TOP_K = 5


@dataclass(frozen=True)
class Result:
    corpus: str
    method: str
    queries: int
    recall_1: float
    recall_5: float
    ms_batch_1: float
    ms_batch_32: float


def tatqa_queries(path: Path, work: Path) -> tuple[Path, list[Row]]:
    bench = read_benchmark(path, "tatqa")
    adapted = adapt(bench, "tatqa", read_budget=8000, tools=[])
    written = write_adapted(adapted, work, "tatqa", "tatqa")
    rows = [row for file in written.row_files.values() for row in read_models(file, Row)]
    return written.corpus, rows


def filings_queries(work: Path, companies: int) -> tuple[Path, list[Row]]:
    summary = synth(work, companies=companies, seed=0)
    rows = read_models(summary.train_path, Row) + read_models(summary.val_path, Row)
    return work / "corpus", [row for row in rows if row.expected.evidence_path]


def timed(index: SearchIndex, queries: list[str], batch: int, ranking: str) -> tuple[list, float]:
    index.search_batch([f"warm-up {i}" for i in range(batch)], [TOP_K] * batch, ranking)  # type: ignore[arg-type]
    index._query_cache.clear()
    hits: list = []
    start = time.perf_counter()
    for i in range(0, len(queries), batch):
        part = queries[i : i + batch]
        hits += index.search_batch(part, [TOP_K] * len(part), ranking)  # type: ignore[arg-type]
    return hits, (time.perf_counter() - start) * 1000 / len(queries)


def measure(name: str, corpus_dir: Path, rows: list[Row]) -> list[Result]:
    index = SearchIndex.build(Corpus(corpus_dir))
    queries = [row.prompt for row in rows]
    results = []
    for method, ranking in RANKINGS:
        _, ms_1 = timed(index, queries, 1, ranking)
        hits, ms_32 = timed(index, queries, 32, ranking)
        paths = [[hit.path for hit in found] for found in hits]
        gold = [row.expected.evidence_path for row in rows]
        recall_1 = sum(p[:1] == [g] for p, g in zip(paths, gold)) / len(rows)
        recall_5 = sum(g in p[:5] for p, g in zip(paths, gold)) / len(rows)
        results.append(Result(name, method, len(rows), recall_1, recall_5, ms_1, ms_32))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tatqa", type=Path, default=DEFAULT_TATQA,
                        help="tatqa_dataset_dev.json (TAT-QA's published layout); default ../shared/data/tatqa/")
    parser.add_argument("--companies", type=int, default=8, help="Companies in the generated filings corpus.")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # one search worker's thread, as the tool server runs it
    with tempfile.TemporaryDirectory(prefix="agentrft-retrieval-") as tmp:
        work = Path(tmp)
        results = []
        if args.tatqa.is_file():
            results += measure("TAT-QA dev", *tatqa_queries(args.tatqa, work / "tatqa"))
        else:
            print(f"{args.tatqa}: no such file; measuring the filings only (pass --tatqa PATH)")
        results += measure("filings", *filings_queries(work / "filings", args.companies))
    print(f"{'corpus':<11} {'method':<17} {'queries':>7} {'recall@1':>8} {'recall@5':>8} "
          f"{'ms/query b1':>11} {'ms/query b32':>12}")
    for r in results:
        print(f"{r.corpus:<11} {r.method:<17} {r.queries:>7} {r.recall_1:>8.3f} {r.recall_5:>8.3f} "
              f"{r.ms_batch_1:>11.2f} {r.ms_batch_32:>12.2f}")
    for corpus in dict.fromkeys(r.corpus for r in results):
        mine = {r.method: r for r in results if r.corpus == corpus}
        shipped = mine["shipped search"]
        best = all(shipped.recall_1 >= r.recall_1 and shipped.recall_5 >= r.recall_5 for r in mine.values())
        print(f"{corpus}: the shipped search is {'' if best else 'NOT '}the best on both recall@1 and recall@5")


if __name__ == "__main__":
    main()
