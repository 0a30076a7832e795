"""Commands of step 3: ``agentrft tools serve`` and ``agentrft tools smoke``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from ..errors import UserError
from .client import TOKEN_ENV, ToolClient, ToolServerUnavailable, read_token
from .registry import ToolRegistry, load_tools

tools_app = typer.Typer(help="Step 3: serve tools over HTTP; smoke-test a running server.",
                        no_args_is_help=True)
_out = Console(highlight=False, soft_wrap=True)
log = logging.getLogger("agentrft.tools")


def register(app: typer.Typer) -> None:
    """Add this step's commands to the main app."""
    app.add_typer(tools_app, name="tools")


@tools_app.command("serve")
def serve(
    corpus: Annotated[Optional[Path], typer.Option(help="Corpus directory: serves search, list and read.")] = None,
    tools: Annotated[Optional[str], typer.Option(help="Extra tools to serve, as module:attr.")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    token_file: Annotated[Optional[Path], typer.Option(help="File holding the bearer token.")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve without a token (never on a shared network).")] = False,
    read_budget: Annotated[int, typer.Option(help="Characters read returns before truncating.")] = 8000,
    no_embeddings: Annotated[bool, typer.Option("--no-embeddings", help="BM25-only search.")] = False,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")] = False,
    tool_timeout: Annotated[float, typer.Option(help="Seconds a tool may run before its call answers with an error.")] = 60.0,
) -> None:
    """Serve tools as bearer-authenticated HTTP endpoints (POST /<tool>, GET /tools, GET /healthz)."""
    if corpus is None and tools is None:
        raise UserError("nothing to serve: pass --corpus DIR, --tools module:attr, or both")
    if corpus is not None and not corpus.is_dir():
        raise UserError(f"{corpus}: corpus directory not found")
    if read_budget < 1:
        raise UserError(f"--read-budget must be positive, got {read_budget}")
    if not tool_timeout > 0:
        raise UserError(f"--tool-timeout must be positive, got {tool_timeout:g}")
    token = read_token(token_file)
    if token is None and not no_auth:
        raise UserError(f"no bearer token: set {TOKEN_ENV} or pass --token-file (or --no-auth to serve without auth)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if token is None:
        log.warning("auth is OFF (--no-auth): anyone who can reach %s:%d can call these tools", host, port)
    import uvicorn  # with FastAPI, a third of a second: not for --help

    from .local_server import build_registry
    from .server import create_app

    registry = build_registry(corpus, None, read_budget, embed=not no_embeddings) if corpus else ToolRegistry()
    if tools is not None:
        registry.merge(load_tools(tools))
    log.info("serving %s on http://%s:%d", ", ".join(registry.tools), host, port)
    uvicorn.run(create_app(registry, token, tool_timeout_s=tool_timeout), host=host, port=port, access_log=access_log,
                log_level="info", backlog=2048, timeout_keep_alive=30)


def example_arguments(spec: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """Plausible arguments for a tool from its spec (only the required ones, plus known names)."""
    params = spec["function"].get("parameters", {})
    examples: dict[str, Any] = {"query": "operating margin", "prefix": "", "path": paths[0] if paths else ""}
    by_type = {"string": "example", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}
    args: dict[str, Any] = {}
    for name, schema in params.get("properties", {}).items():
        if name in examples:
            args[name] = examples[name]
        elif name in params.get("required", []):
            kind = schema.get("type", "string")
            args[name] = schema["enum"][0] if "enum" in schema else by_type.get(kind if isinstance(kind, str) else kind[0], "")
    return args


async def _smoke(url: str, token: str | None) -> int:
    async with ToolClient(url, token=token, retries=1, timeout_s=30) as client:
        try:
            specs = await client.specs()
        except ToolServerUnavailable as exc:
            raise UserError(f"{exc} (is the server running, and is the token right?)") from None
        names = [s["function"]["name"] for s in specs]
        paths: list[str] = []
        if "list" in names:
            listing = await client.call("list", {"prefix": ""}, call_id="smoke-list-probe")
            paths = [] if listing.is_error else listing.output.splitlines()
        failures = 0
        for i, spec in enumerate(specs):
            name = spec["function"]["name"]
            args = example_arguments(spec, paths)
            reply = await client.call(name, args, call_id=f"smoke-{i:03d}")
            failures += reply.status >= 400
            mark = "ok" if not reply.is_error else "ERROR"
            _out.print(f"── {name}({args})  {reply.status} {mark}  {reply.latency_ms:.1f} ms", markup=False)
            lines = reply.output.splitlines()
            for line in lines[:8]:
                _out.print(f"   {line[:160]}", markup=False)
            if len(lines) > 8:
                _out.print(f"   … {len(lines) - 8} more lines", markup=False)
        _out.print(f"{len(specs) - failures}/{len(specs)} tools answered", markup=False)
        return failures


@tools_app.command("smoke")
def smoke(
    url: Annotated[str, typer.Option(help="Base URL of a running tool server.")],
    token_file: Annotated[Optional[Path], typer.Option(help="File holding the bearer token (else TOOL_BEARER).")] = None,
) -> None:
    """Call every tool of a running server once with example arguments; print outputs and latency."""
    token = read_token(token_file)
    failures = asyncio.run(_smoke(url, token))
    if failures:
        raise UserError(f"{failures} tool(s) answered with an HTTP error")
