"""Load test of the tool server: N concurrent clients against ``agentrft tools serve`` on loopback.

Starts the real server in a process of its own (so its memory is its own), warms it up, then keeps
``--clients`` closed-loop clients calling search, read and list for ``--seconds`` and stops by itself.
Every reply is checked: status 200 and no ``Error:``, its call id the one sent, and its content the
answer to its own request (a read names the company of its path, a list stays under its prefix).
Passes when no call failed or came back mismatched and the server's RSS at the end is within
``--rss-growth`` of its RSS after warm-up; prints throughput and latency percentiles either way.

    python scripts/stress.py                      # make stress: 256 clients, 60 s, embeddings on
    python scripts/stress.py --seconds 3 --warmup 1 --no-embeddings --companies 4   # the test suite's form
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from agentrft.filings.synth import synth

METRICS = ["operating margin", "net income", "revenue", "gross margin", "operating income", "free cash flow"]
PERIODS = ["Q1 2024", "Q2 2024", "Q3 2025", "FY2023", "FY2024"]


@dataclass
class Tally:
    """What the clients saw while measuring (calls of the warm-up are checked but not counted)."""

    measuring: bool = False
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"search": [], "read": [], "list": []})
    by_tool: dict[str, int] = field(default_factory=lambda: {"search": 0, "read": 0, "list": 0})
    sent: int = 0
    answered: int = 0
    errors: list[str] = field(default_factory=list)
    mismatched: int = 0
    rss: list[float] = field(default_factory=list)
    """The server's RSS (MiB), sampled every tenth of the measured time."""


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check(name: str, args: dict, output: str) -> str | None:
    """Why a reply does not answer its own request, or None."""
    if name == "read":
        company = args["path"].split("/")[1].split("-")[0]
        return None if company in output.splitlines()[0].lower() else f"read {args['path']} got another document"
    if name == "list":
        lines = output.splitlines()
        return None if lines and all(p.startswith(args["prefix"]) for p in lines) else f"list {args['prefix']!r} strayed"
    return None if "(score " in output else "search returned no hits"


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough to POST JSON (the tutorial contract).

    Not httpx: measured on this 2-core machine, an httpx client saturates near 100 requests/s (see
    bench/tools_server.py) and 256 of them measured the load generator instead of the server.
    """

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, name: str, arguments: dict, call_id: str) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        payload = json.dumps({"arguments": arguments, "call_id": call_id}).encode()
        head = (f"POST /{name} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
        self.writer.write(head.encode() + payload)
        assert self.reader is not None
        headers = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        length = next(int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:"))
        return int(headers[0].split()[1]), json.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def client(index: int, port: int, token: str, paths: list[str], deadline: float, tally: Tally) -> None:
    """One closed-loop client on its own connection: the next call as soon as the last is answered."""
    connection = Connection("127.0.0.1", port, token)
    n = 0
    try:
        while time.monotonic() < deadline:
            n += 1
            kind = (index + n) % 3
            path = paths[(index * 7 + n) % len(paths)]
            if kind == 0:  # every query new, as the rollouts of different rows are
                name, args = "search", {"query": f"{path.split('/')[1].split('-')[0]} {METRICS[n % 6]} "
                                                 f"{PERIODS[index % 5]} #{index}-{n}"}
            elif kind == 1:
                name, args = "read", {"path": path}
            else:
                name, args = "list", {"prefix": path[: 9 + n % 8]}
            call_id = f"c{index}-{n}"
            measuring = tally.measuring
            tally.sent += measuring
            start = time.perf_counter()
            try:
                status, reply = await asyncio.wait_for(connection.call(name, args, call_id), 60)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, StopIteration) as exc:
                tally.errors.append(f"{name}: {exc!r}")
                connection.close()
                connection = Connection("127.0.0.1", port, token)
                continue
            latency = time.perf_counter() - start
            output = reply.get("output", "")
            if reply.get("call_id") != call_id:
                tally.mismatched += 1
            failed = status != 200 or not isinstance(output, str) or output.startswith("Error:")
            problem = f"{name}: HTTP {status}: {str(output)[:120]}" if failed else check(name, args, output)
            if problem:
                tally.errors.append(problem)
            if measuring:
                tally.answered += 1
                tally.by_tool[name] += 1
                tally.latencies[name].append(latency)
    finally:
        connection.close()


async def load(port: int, token: str, clients: int, warmup: float, seconds: float, pid: int) -> tuple[Tally, float, float, float]:
    """Warm up (connections open, caches fill), then measure; returns the tally, the measured
    seconds and the server's RSS after warm-up and at the end."""
    tally = Tally()
    status, listing = await Connection("127.0.0.1", port, token).call("list", {"prefix": ""}, "paths")
    if status != 200:
        raise RuntimeError(f"list answered {status}: {listing}")
    paths = listing["output"].splitlines()
    end = time.monotonic() + warmup + seconds
    workers = asyncio.gather(*(client(i, port, token, paths, end, tally) for i in range(clients)))
    await asyncio.sleep(warmup)
    rss_warm = rss_mib(pid)
    tally.measuring = True
    measured_from = time.monotonic()
    while not workers.done():
        tally.rss.append(rss_mib(pid))
        await asyncio.wait([workers], timeout=seconds / 10)
    await workers
    return tally, time.monotonic() - measured_from, rss_warm, rss_mib(pid)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=60.0, help="Measured time, after the warm-up.")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--corpus", type=Path, help="Corpus to serve (default: a generated one).")
    parser.add_argument("--companies", type=int, default=8, help="Companies in the generated corpus.")
    parser.add_argument("--no-embeddings", action="store_true", help="BM25-only search.")
    parser.add_argument("--rss-growth", type=float, default=0.10, help="Allowed RSS growth after warm-up.")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="agentrft-stress-") as tmp:
        work = Path(tmp)
        corpus = args.corpus
        if corpus is None:
            synth(work / "data", companies=args.companies, seed=0)
            corpus = work / "data" / "corpus"
        token = secrets.token_hex(16)
        (work / "token").write_text(token)
        port = free_port()
        command = [sys.executable, "-m", "agentrft.cli", "tools", "serve", "--corpus", str(corpus),
                   "--port", str(port), "--token-file", str(work / "token")]
        if args.no_embeddings:
            command.append("--no-embeddings")
        log = work / "server.log"
        server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    print(f"the tool server did not start:\n{log.read_text()[-3000:]}", file=sys.stderr)
                    return 1
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            search = "BM25" if args.no_embeddings else "BM25 + embeddings"
            print(f"{args.clients} clients for {args.seconds:g} s after {args.warmup:g} s of warm-up, against "
                  f"agentrft tools serve ({search}) on loopback, pid {server.pid}", flush=True)
            tally, elapsed, rss_warm, rss_end = asyncio.run(
                load(port, token, args.clients, args.warmup, args.seconds, server.pid))
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()

    lost = tally.sent - tally.answered
    growth = rss_end / rss_warm - 1
    tools = " · ".join(f"{name} {count:,}" for name, count in tally.by_tool.items())
    print(f"calls: {tally.answered:,} ({tools}); errors {len(tally.errors)}; call ids lost {lost}, "
          f"mismatched {tally.mismatched}")
    every = [t for times in tally.latencies.values() for t in times]
    print(f"throughput: {tally.answered / elapsed:,.0f} calls/s; latency p50 {percentile(every, 0.5) * 1000:.0f} ms, "
          f"p99 {percentile(every, 0.99) * 1000:.0f} ms, max {max(every, default=0) * 1000:.0f} ms")
    print("  by tool, p50 / p99 ms: " + " · ".join(
        f"{name} {percentile(times, 0.5) * 1000:.0f} / {percentile(times, 0.99) * 1000:.0f}"
        for name, times in tally.latencies.items()))
    print(f"server RSS: {rss_warm:.0f} MiB after warm-up, {rss_end:.0f} MiB at the end ({growth:+.1%}; "
          f"allowed {args.rss_growth:+.0%}); along the way: {' '.join(f'{m:.0f}' for m in tally.rss)}")
    for problem in tally.errors[:5]:
        print(f"  {problem}")
    failed = tally.errors or lost or tally.mismatched or growth > args.rss_growth or not tally.answered
    print("FAILED" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
