"""Async client for tool servers: pooled httpx connections, bearer token, retries, both contracts.

A tool-level problem never raises: the server's error text comes back as ``ToolReply.output`` with
``is_error=True`` so the agent loop can hand it to the model. Connection failures and 5xx replies are
retried with exponential backoff; only a server that stays unreachable raises ToolServerUnavailable.
A call that times out is not retried (the tool may still be running) and comes back as an error reply.
``GET /tools`` is asked once per client: a server's tools do not change while it runs, and a rollout
batch that starts while the server restarts still knows what it may call.

Example::

    async with ToolClient("http://127.0.0.1:8000", token=os.environ["TOOL_BEARER"]) as client:
        reply = await client.call("search", {"query": "Henderson Q3 operating margin"}, call_id="c1")
        print(reply.output, reply.latency_ms)
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from ..errors import UserError
from ..files import read_text

Contract = Literal["tutorial", "function_call"]

TOKEN_ENV = "TOOL_BEARER"
"""The environment variable a tool server's bearer token is read from when no token file is named."""


def read_token(file: Path | None = None, env: str | None = TOKEN_ENV) -> str | None:
    """A tool server's bearer token: the contents of ``file`` when one is named (a file that is missing or
    empty is a UserError naming it), else the environment variable ``env``; None when neither holds one.

    Every command reads the token here: ``tools serve`` and ``tools smoke``, ``eval``, ``serve``, the
    training config (``TrainConfig.tools_token``) and the running example's warm start."""
    if file is not None:
        if not Path(file).exists():
            raise UserError(f"{file}: token file not found")
        token = read_text(Path(file), "a token file").strip()
        if not token:
            raise UserError(f"{file}: token file is empty")
        return token
    return (os.environ.get(env, "").strip() or None) if env else None


class ToolServerUnavailable(RuntimeError):
    """The tool server could not be reached (or kept failing with 5xx) after every retry."""


@dataclass
class ToolReply:
    output: str
    is_error: bool
    latency_ms: float
    status: int
    call_id: str | None = None
    """The call id the server echoed (both contracts carry it)."""


class ToolClient:
    """One pooled connection set to one tool server; share it across all concurrent rollouts."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30, retries: int = 3,
                 max_connections: int = 256, contract: Contract = "tutorial", backoff_s: float = 0.2) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.contract = contract
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._specs: list[dict[str, Any]] | None = None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def __aenter__(self) -> ToolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _body(self, name: str, arguments: dict[str, Any] | str, call_id: str) -> dict[str, Any]:
        if self.contract == "function_call":
            text = arguments if isinstance(arguments, str) else json.dumps(arguments)
            return {"type": "function_call", "call_id": call_id, "name": name, "arguments": text}
        # A model's raw argument string goes as is: the server parses it and explains what is wrong.
        return {"arguments": arguments, "call_id": call_id}

    async def call(self, name: str, arguments: dict[str, Any] | str, call_id: str) -> ToolReply:
        """POST /<name>; returns the tool's output (or its error as output, ``is_error=True``)."""
        body = self._body(name, arguments, call_id)
        start = time.perf_counter()
        response = await self._send("POST", f"/{name}", json=body)
        latency = (time.perf_counter() - start) * 1000
        if response is None:
            return ToolReply(f"Error: tool {name!r} timed out after {self.timeout_s:g}s", True, latency, 0)
        output, echoed = _output_of(response)
        is_error = response.status_code >= 400 or output.startswith("Error:")
        return ToolReply(output, is_error, latency, response.status_code, echoed)

    async def specs(self) -> list[dict[str, Any]]:
        """GET /tools: the OpenAI function specs the server offers (asked once, then remembered)."""
        if self._specs is not None:
            return self._specs
        response = await self._send("GET", "/tools")
        if response is None or response.status_code != 200:
            status = "timeout" if response is None else f"{response.status_code}: {_output_of(response)[0]}"
            raise ToolServerUnavailable(f"GET {self.base_url}/tools failed ({status})")
        self._specs = response.json()
        return self._specs

    async def health(self) -> bool:
        response = await self._send("GET", "/healthz")
        return response is not None and response.status_code == 200

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        """The response (5xx only after the last retry); None on a read timeout."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = await self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError,
                    httpx.ReadError, httpx.WriteError, httpx.PoolTimeout) as exc:
                last = exc
                continue
            except httpx.TimeoutException:
                return None
            if response.status_code >= 500 and attempt < self.retries:
                continue
            return response
        raise ToolServerUnavailable(
            f"tool server {self.base_url} unreachable after {self.retries + 1} attempts: {last!r}"
        )


def _output_of(response: httpx.Response) -> tuple[str, str | None]:
    """(output, echoed call id) of a reply in either contract."""
    try:
        data = response.json()
    except ValueError:
        return f"Error: HTTP {response.status_code}: {response.text[:200]}", None
    if isinstance(data, dict) and isinstance(data.get("output"), str):
        call_id = data.get("call_id")
        return data["output"], call_id if isinstance(call_id, str) else None
    return f"Error: HTTP {response.status_code}: unexpected reply {str(data)[:200]}", None


__all__ = ["TOKEN_ENV", "ToolClient", "ToolReply", "ToolServerUnavailable", "read_token"]
