"""/search throughput and latency: agentrft's tool server against a tutorial-style baseline.

Both servers run in their own process on the same synthetic corpus (``agentrft data synth``,
8 companies) with the same hybrid index; the only difference is how a request is served:

- baseline: written like the tutorial's skeleton: the async handler embeds its query inline (on the
  event loop), so requests are served one at a time;
- agentrft: ``agentrft.tools.server`` with the query micro-batcher (embedding in one worker thread
  per core, concurrent queries embedded together).

Every request carries a query no earlier request used (and the query cache is off on both servers),
so the numbers measure serving, not caching. ``--group 8`` sends each query 8 times in a row instead,
as the 8 rollouts of a GRPO group searching for the same thing do, with agentrft's query cache on.
Clients are asyncio tasks that send requests back to back for a fixed time at each concurrency
level, measured after a second of warm-up on the same connections.
Run: ``python bench/tools_server.py [--seconds 4] [--group 8]``.
"""

import argparse
import asyncio
import itertools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from agentrft.filings.synth import synth
from agentrft.tools.corpus import Corpus
from agentrft.tools.corpus_tools import CorpusTools, _format_hits
from agentrft.tools.search_index import SearchIndex

TOKEN = "bench-token"
LEVELS = tuple(int(n) for n in os.environ.get("BENCH_LEVELS", "1,16,64,256").split(","))


def baseline_app(corpus_dir: Path):
    """The tutorial's skeleton around the same index: embedding runs inline in the async handler."""
    import torch
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.security import HTTPBearer  # FastAPI, torch: only in the server processes

    index = SearchIndex.build(Corpus(corpus_dir))
    index.query_cache_size = 0
    # Same single-threaded torch as agentrft's search worker: on a busy 2-core machine a 2-thread
    # OpenMP team made one forward pass 100x slower, which would flatter the ratio, not measure it.
    torch.set_num_threads(1)
    app = FastAPI()
    security = HTTPBearer()

    def auth(creds=Depends(security)):
        if creds.credentials != TOKEN:
            raise HTTPException(401, "bad token")

    @app.post("/search")
    async def search(req: Request, _=Depends(auth)):
        body = await req.json()
        args = body.get("arguments", {})
        query = args.get("query", "").strip()
        if not query:
            return {"output": "Error: query is required", "call_id": body.get("call_id")}
        hits = index.search(query, args.get("top_k", 3))
        return {"output": _format_hits(hits), "call_id": body.get("call_id")}

    return app


def agentrft_app(corpus_dir: Path, cache: bool = False):
    from agentrft.tools.server import create_app  # FastAPI: only in the server processes

    tools = CorpusTools(corpus_dir).prepare()
    if not cache:
        tools._index.query_cache_size = 0  # measure serving, not the cache
    return create_app(tools.registry(), TOKEN)


def serve(kind: str, corpus_dir: Path, port: int) -> None:
    import uvicorn

    app = baseline_app(corpus_dir) if kind == "baseline" else agentrft_app(corpus_dir, cache=kind == "agentrft-cache")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, backlog=4096)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(kind: str, corpus_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--corpus", str(corpus_dir),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            reply = httpx.post(url + "/search", json={"arguments": {"query": "warm up"}, "call_id": "w"},
                               headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        if reply.status_code != 200 or "(score " not in reply.json()["output"]:
            proc.terminate()
            raise RuntimeError(f"{kind} server answered {reply.status_code}: {reply.text[:300]}")
        return proc, url
    raise RuntimeError(f"{kind} server did not start")


def query_stream(seed: int, group: int = 1):
    """Distinct research-style queries (company × metric × period × phrasing, then numbered), each
    ``group`` times in a row."""
    companies = ["Henderson Industries", "Atlas Corp", "Meridian Biotech", "Larkspur Foods", "Brannock Energy",
                 "Ostrander Retail", "Quillon Software", "Tessaly Materials"]
    metrics = ["revenue", "gross margin", "operating margin", "net income", "operating income", "gross profit",
               "operating expenses", "segment revenue"]
    periods = ["Q1 2024", "Q2 2024", "Q3 2024", "Q1 2025", "Q2 2025", "Q3 2025", "FY2023", "FY2024"]
    forms = ["{c} {p} {m}", "{m} of {c} in {p}", "what was {c}'s {m} for {p}", "{c} {m} {p} 10-Q",
             "{p} {m} reported by {c}"]
    combos = list(itertools.product(companies, metrics, periods, forms))
    random.Random(seed).shuffle(combos)
    for round_ in itertools.count():
        for c, m, p, f in combos:
            text = f.format(c=c, m=m, p=p)
            for _ in range(group):
                yield text if round_ == 0 else f"{text} ({round_})"


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough to POST JSON.

    Why not httpx here: measured on this 2-core machine, an httpx client saturated at ~100 req/s
    against a server that does nothing, so it would have measured itself instead of the servers.
    """

    def __init__(self, url: str) -> None:
        host_port = url.split("://", 1)[1]
        self.host, port = host_port.split(":")
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        payload = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
        self.writer.write(head.encode() + payload)
        headers = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(headers[0].split()[1])
        length = next(int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:"))
        return status, json.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(url: str, clients: int, seconds: float, queries, warmup: float = 1.0,
               pid: int | None = None) -> dict[str, float]:
    """``clients`` connections, each sending its next request as soon as the last one is answered.

    The connections open and run for ``warmup`` seconds before anything is recorded, so the numbers
    are the steady state: 64 connections opened at once and their first requests arriving together
    are a start-up transient, and counted in, they alone made the p99.
    """
    latencies: list[float] = []
    errors = 0
    measure_from = time.perf_counter() + warmup
    deadline = measure_from + seconds
    cpu: dict[str, float] = {}

    async def worker(w: int) -> None:
        nonlocal errors
        conn = Connection(url)
        n = 0
        try:
            while time.perf_counter() < deadline:
                body = {"arguments": {"query": next(queries)}, "call_id": f"{w}-{n}"}
                t0 = time.perf_counter()
                status, reply = await asyncio.wait_for(conn.post("/search", body), 120)
                if t0 >= measure_from:
                    latencies.append((time.perf_counter() - t0) * 1000)
                errors += status != 200 or reply.get("call_id") != body["call_id"]
                n += 1
        finally:
            conn.close()

    async def cpu_meter() -> None:
        if pid is not None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            cpu["start"] = cpu_seconds(pid)
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
            cpu["end"] = cpu_seconds(pid)

    await asyncio.gather(cpu_meter(), *(worker(w) for w in range(clients)))
    latencies.sort()
    # Requests started in the window, over its length: the ones still running at the deadline count
    # where they started, as the ones running at its start count nowhere.
    return {"rps": len(latencies) / seconds, "p50": statistics.median(latencies),
            "p90": latencies[int(len(latencies) * 0.9)],
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], "max": latencies[-1],
            "n": len(latencies),
            "errors": errors,
            "cpu_ms": (cpu["end"] - cpu["start"]) * 1000 / max(len(latencies), 1) if cpu else float("nan")}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), so a busy shared machine can be seen through."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def bench(corpus_dir: Path, seconds: float, group: int = 1) -> dict[str, dict[int, dict[str, float]]]:
    results: dict[str, dict[int, dict[str, float]]] = {}
    queries = query_stream(0, group)
    for kind in ("baseline", "agentrft"):
        proc, url = start(kind if kind == "baseline" or group == 1 else "agentrft-cache", corpus_dir)
        try:
            results[kind] = {}
            for clients in LEVELS:
                results[kind][clients] = asyncio.run(load(url, clients, seconds, queries, pid=proc.pid))
        finally:
            proc.kill()  # a graceful stop would wait for hundreds of queued requests
            proc.wait(timeout=30)
    return results


def print_table(results: dict[str, dict[int, dict[str, float]]]) -> None:
    print(f"{'clients':>7} | {'baseline req/s':>14} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>10} | "
          f"{'agentrft req/s':>14} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>10} | {'ratio':>6}")
    for clients in LEVELS:
        b, a = results["baseline"][clients], results["agentrft"][clients]
        print(f"{clients:>7} | {b['rps']:>14.0f} {b['p50']:>8.1f} {b['p99']:>8.1f} {b['cpu_ms']:>10.2f} | "
              f"{a['rps']:>14.0f} {a['p50']:>8.1f} {a['p99']:>8.1f} {a['cpu_ms']:>10.2f} | "
              f"{a['rps'] / b['rps']:>5.1f}x")
    errors = {kind: sum(r["errors"] for r in levels.values()) for kind, levels in results.items()}
    a64 = results["agentrft"][64]
    ratio = a64["rps"] / results["baseline"][64]["rps"]
    print(f"at 64 clients: {ratio:.1f}x baseline throughput (target >= 5x), p99 {a64['p99']:.0f} ms "
          f"(target < 100 ms); failed or mismatched replies: {errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, help="corpus directory (default: synth, 8 companies)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per concurrency level")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--group", type=int, default=1,
                        help="each query sent this many times in a row, as a GRPO group's rollouts do; "
                             "agentrft's query cache on (the baseline has none)")
    parser.add_argument("--serve", choices=["baseline", "agentrft", "agentrft-cache"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.serve:
        serve(args.serve, args.corpus, args.port)
        return
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus
        if corpus is None:
            synth(Path(tmp), companies=8, seed=0)
            corpus = Path(tmp) / "corpus"
        print(f"corpus {corpus}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
              f"{args.seconds:g}s per level" + (f", each query sent {args.group} times" if args.group > 1 else ""))
        results = bench(corpus, args.seconds, args.group)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
