"""Any ASGI app (a tool server, serve's API) on a free loopback port in a background thread, for the length
of a ``with`` block: the demo's tool server, tests, benches and scripts.

Example::

    with running_server(corpus_dir=Path("data/corpus"), token="secret") as url:
        async with ToolClient(url, token="secret") as client:
            reply = await client.call("list", {"prefix": ""}, call_id="c1")
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from .corpus_tools import CorpusTools
from .registry import ToolRegistry
from .server import create_app


def build_registry(corpus_dir: str | Path | None = None, tools: object = None, read_budget: int = 8000,
                   embed: bool = True, cache_dir: Path | None = None) -> ToolRegistry:
    """The corpus tools over ``corpus_dir`` and/or the given tools, in one registry."""
    registry = ToolRegistry()
    if corpus_dir is not None:
        registry.merge(CorpusTools(corpus_dir, read_budget, embed=embed, cache_dir=cache_dir).registry())
    if tools is not None:
        registry.merge(ToolRegistry.from_tools(tools))
    if not registry.tools:
        raise ValueError("nothing to serve: give corpus_dir, tools or both")
    return registry


@contextlib.contextmanager
def running_server(corpus_dir: str | Path | None = None, tools: object = None, token: str | None = "test-token",
                   read_budget: int = 8000, embed: bool = True, cache_dir: Path | None = None) -> Iterator[str]:
    """Serve the tools with uvicorn on 127.0.0.1:<free port> until the block exits; yields the base URL."""
    registry = build_registry(corpus_dir, tools, read_budget, embed, cache_dir)
    with serve_app(create_app(registry, token)) as url:
        yield url


@contextlib.contextmanager
def serve_app(app: object, startup_timeout_s: float = 60.0) -> Iterator[str]:
    """Run any ASGI app with uvicorn in a background thread on a free loopback port."""
    # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
    # IPPROTO_TCP, and without it every keep-alive reply waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound before uvicorn starts, so no other process can take the port
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=2048, timeout_keep_alive=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="tool-server")
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("tool server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


__all__ = ["build_registry", "running_server", "serve_app"]
