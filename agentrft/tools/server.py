"""The tool server: ``POST /<tool>`` per tool, ``GET /tools``, ``GET /healthz``; FastAPI + uvicorn.

Two request contracts are accepted on the same route and answered in kind:

- the tutorial's: ``{"arguments": {...}, "call_id": "c1"}`` → ``{"output": "...", "call_id": "c1"}``;
- managed agent-RFT style: ``{"type": "function_call", "call_id": "c1", "name": "search",
  "arguments": "<JSON string>", "item": {...}}`` → ``{"type": "function_call_output",
  "call_id": "c1", "output": "..."}``.

Errors are data: every reply has the contract's shape and an ``output`` starting ``Error: ``.
Status codes:

- 200: the tool ran. Its answer may still be an error the model should read (empty query, unknown
  document path, path outside the corpus, a tool that raised: ``Error: tool 'read' failed: ...``,
  logged with the call id).
- 400: the body is not JSON, not an object, or ``arguments`` is not an object / a JSON object string.
- 400: the body is not JSON, not an object, nests deeper than the JSON parser goes, or ``arguments``
  is not an object / a JSON object string.
- 401: missing or wrong bearer token (every route except ``/healthz``, ``GET /tools`` and
  ``GET /openapi.json`` included; an unknown path or a wrong method too, so nothing is probed).
- 404: no tool of that name. 405: wrong HTTP method. 413: body over ``max_body_bytes`` (1 MB).
- 422: the arguments do not fit the tool's signature (missing, wrong type, unexpected name).

A tool that runs past ``tool_timeout_s`` answers ``Error: tool ... did not answer within ...`` (a
sync tool's thread cannot be stopped and finishes in the background; the caller is not kept
waiting). ``GET /openapi.json`` is the document of all this, derived from the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .openapi import tools_openapi
from .registry import ToolArgumentError, ToolRegistry

log = logging.getLogger("agentrft.tools")

MAX_BODY_BYTES = 1_000_000
TOOL_TIMEOUT_S = 60.0


class BadRequest(Exception):
    def __init__(self, status: int, message: str, call_id: Any = None, managed: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.call_id, self.managed = status, message, call_id, managed


def _reply(output: str, call_id: Any, managed: bool, status: int = 200) -> Response:
    body: dict[str, Any] = {"output": output, "call_id": call_id}
    if managed:
        body = {"type": "function_call_output", "call_id": call_id, "output": output}
    # json.dumps by hand: FastAPI's encoder walks the dict for nothing on this hot path.
    text = json.dumps(body, ensure_ascii=False)
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate (a call_id of "\ud800") has no UTF-8 form; escape it
        data = json.dumps(body).encode()
    return Response(data, status_code=status, media_type="application/json")


def _parse(raw: bytes) -> tuple[dict[str, Any], Any, bool, Any]:
    """(arguments, call_id, managed, name) from a request body of either contract."""
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(400, f"body is not valid JSON ({exc.__class__.__name__}: {exc})") from None
    except RecursionError:
        raise BadRequest(400, "body nests too deep; send a flat JSON object with arguments and call_id") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "body must be a JSON object with arguments and call_id")
    call_id = body.get("call_id")
    managed = body.get("type") == "function_call"
    arguments = body.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise BadRequest(400, f"arguments is not valid JSON: {exc}", call_id, managed) from None
        except RecursionError:
            raise BadRequest(400, "arguments nest too deep", call_id, managed) from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise BadRequest(400, "arguments must be a JSON object", call_id, managed)
    return arguments, call_id, managed, body.get("name") if managed else None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    # What is loaded by now (the index, the embedding model, the libraries) lives as long as the
    # server. Frozen, it is not walked by the garbage collector, whose full collections of it otherwise
    # hold the GIL long enough to stall every search worker and set the p99 (``bench/RESULTS.md``).
    gc.collect()
    gc.freeze()
    yield


def create_app(registry: ToolRegistry, token: str | None, max_body_bytes: int = MAX_BODY_BYTES,
               tool_timeout_s: float = TOOL_TIMEOUT_S) -> FastAPI:
    """The ASGI app serving ``registry``; ``token=None`` serves without auth (say so in the log)."""
    app = FastAPI(title="agentrft tools", docs_url=None, redoc_url=None, openapi_url=None, lifespan=_lifespan)
    expected = token.encode() if token else None
    specs_body = json.dumps(registry.specs(), ensure_ascii=False)
    openapi_body = json.dumps(tools_openapi(registry, secured=expected is not None), ensure_ascii=False)

    def authorized(request: Request) -> bool:
        if expected is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest) -> Response:
        return _reply(f"Error: {exc.message}", exc.call_id, exc.managed, exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if not authorized(request):  # an unknown path or method says nothing to a caller without the token
            return _reply("Error: missing or invalid bearer token", None, False, 401)
        return _reply(f"Error: {exc.detail}", None, False, exc.status_code)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(json.dumps({"status": "ok", "tools": list(registry.tools)}), media_type="application/json")

    @app.get("/tools")
    async def tools(request: Request) -> Response:
        if not authorized(request):
            raise BadRequest(401, "missing or invalid bearer token")
        return Response(specs_body, media_type="application/json")

    @app.get("/openapi.json")
    async def openapi(request: Request) -> Response:
        if not authorized(request):
            raise BadRequest(401, "missing or invalid bearer token")
        return Response(openapi_body, media_type="application/json")

    @app.post("/{tool_name}")
    async def call(tool_name: str, request: Request) -> Response:
        if not authorized(request):
            raise BadRequest(401, "missing or invalid bearer token")
        raw = await _read_body(request, max_body_bytes)
        arguments, call_id, managed, name = _parse(raw)
        tool = registry.get(tool_name)
        if tool is None:
            known = ", ".join(registry.tools)
            raise BadRequest(404, f"unknown tool {tool_name!r}; tools: {known}", call_id, managed)
        if name is not None and name != tool_name:
            raise BadRequest(400, f"function_call names {name!r} but was sent to /{tool_name}", call_id, managed)
        try:
            checked = tool.validate(arguments)
        except ToolArgumentError as exc:
            raise BadRequest(422, f"{tool_name}: {exc}", call_id, managed) from None
        try:
            output = await asyncio.wait_for(tool.run(checked), tool_timeout_s)
        except TimeoutError:
            log.warning("tool %r did not answer within %gs (call_id=%s)", tool_name, tool_timeout_s, call_id)
            output = f"Error: tool {tool_name!r} did not answer within {tool_timeout_s:g}s"
        except Exception as exc:  # a broken tool answers with an error; it never takes the server down
            log.exception("tool %r failed (call_id=%s)", tool_name, call_id)
            output = f"Error: tool {tool_name!r} failed: {exc.__class__.__name__}: {exc}"
        return _reply(output, call_id, managed)

    return app
