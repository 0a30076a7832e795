"""Serving any typed Python functions; the client's retries and timeouts; the CLI commands."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from conftest import TOOL_TOKEN
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from agentrft.cli import main
from agentrft.errors import UserError
from agentrft.tools.client import ToolClient, ToolServerUnavailable
from agentrft.tools.registry import ToolRegistry, load_tools
from agentrft.tools.local_server import running_server, serve_app

MODULE = textwrap.dedent(
    '''
    import asyncio


    def add(a: int, b: int = 1) -> str:
        """Add two integers.

        Args:
            a: The first number.
            b: The second number.
        """
        return str(a + b)


    def explode(reason: str) -> str:
        """Always fails.

        Args:
            reason: What to complain about.
        """
        raise RuntimeError(reason)


    async def nap(seconds: float) -> str:
        """Sleep, then answer.

        Args:
            seconds: How long to sleep.
        """
        await asyncio.sleep(seconds)
        return "awake"


    class Weather:
        """An object whose public methods are tools."""

        def forecast(self, city: str, days: int = 1) -> str:
            """Forecast for a city.

            Args:
                city: The city name.
                days: How many days ahead.
            """
            return f"{city}: sunny for {days} day(s)"

        def _private(self) -> str:
            return "hidden"


    TOOLS = [add, explode, nap]
    '''
)


@pytest.fixture(scope="module")
def tool_module(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("custom-tools")
    (folder / "my_tools.py").write_text(MODULE)
    sys.path.insert(0, str(folder))
    yield str(folder)
    sys.path.remove(str(folder))


def test_load_tools_from_module_list_and_object(tool_module: str) -> None:
    listed = load_tools("my_tools:TOOLS")
    assert list(listed.tools) == ["add", "explode", "nap"]
    add = listed.get("add").spec["function"]
    assert add["parameters"]["required"] == ["a"] and add["parameters"]["properties"]["b"]["type"] == "integer"
    assert "return" not in add
    weather = load_tools("my_tools:Weather")  # a class is instantiated; its public methods are the tools
    assert list(weather.tools) == ["forecast"]
    for bad in ("my_tools", "my_tools:missing", "no_such_module_xyz:TOOLS"):
        with pytest.raises(UserError):
            load_tools(bad)


def test_untyped_function_is_a_user_error() -> None:
    def bare(x):  # no hints, no docstring
        return x

    with pytest.raises(UserError, match="type hints"):
        ToolRegistry.from_tools([bare])


def test_custom_tools_over_http(tool_module: str, caplog: pytest.LogCaptureFixture) -> None:
    import my_tools

    with running_server(tools=my_tools.TOOLS + [my_tools.Weather().forecast], token=TOOL_TOKEN) as url:
        headers = {"Authorization": f"Bearer {TOOL_TOKEN}"}
        ok = httpx.post(url + "/add", json={"arguments": {"a": 2, "b": 40}, "call_id": "k1"}, headers=headers)
        assert ok.status_code == 200 and ok.json() == {"output": "42", "call_id": "k1"}
        coerced = httpx.post(url + "/add", json={"arguments": {"a": "2"}, "call_id": "k2"}, headers=headers)
        assert coerced.json()["output"] == "3"  # "2" is an unambiguous integer; the model meant it
        wrong = httpx.post(url + "/add", json={"arguments": {"a": "two"}, "call_id": "k3"}, headers=headers)
        assert wrong.status_code == 422 and wrong.json()["output"].startswith("Error: add: a:")
        with caplog.at_level(logging.ERROR, logger="agentrft.tools"):
            boom = httpx.post(url + "/explode", json={"arguments": {"reason": "disk on fire"}, "call_id": "k4"},
                              headers=headers)
        assert boom.status_code == 200
        assert boom.json()["output"] == "Error: tool 'explode' failed: RuntimeError: disk on fire"
        assert any("k4" in r.getMessage() and "explode" in r.getMessage() for r in caplog.records)
        again = httpx.post(url + "/forecast", json={"arguments": {"city": "Oslo"}, "call_id": "k5"}, headers=headers)
        assert again.json()["output"] == "Oslo: sunny for 1 day(s)"  # the server lives on after a failure


def test_client_timeout_is_an_error_reply_not_an_exception(tool_module: str) -> None:
    import my_tools

    async def run():
        async with ToolClient(url, token=TOOL_TOKEN, timeout_s=0.2) as client:
            return await client.call("nap", {"seconds": 1.0}, call_id="slow")

    with running_server(tools=[my_tools.nap], token=TOOL_TOKEN) as url:
        reply = asyncio.run(run())
    assert reply.is_error and reply.status == 0 and "timed out" in reply.output


def test_client_retries_5xx_then_succeeds() -> None:
    app = FastAPI()
    seen: list[int] = []

    @app.post("/flaky")
    async def flaky() -> JSONResponse:
        seen.append(1)
        if len(seen) < 3:
            return JSONResponse({"output": "Error: overloaded", "call_id": None}, status_code=503)
        return JSONResponse({"output": "fine", "call_id": "f1"})

    async def run():
        async with ToolClient(url, retries=3, backoff_s=0.01) as client:
            return await client.call("flaky", {}, call_id="f1")

    with serve_app(app) as url:
        reply = asyncio.run(run())
    assert len(seen) == 3 and reply.output == "fine" and reply.status == 200 and not reply.is_error


def test_client_raises_only_when_unreachable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def run():
        async with ToolClient(f"http://127.0.0.1:{port}", retries=2, backoff_s=0.01, timeout_s=2) as client:
            await client.call("search", {"query": "x"}, call_id="u1")

    with pytest.raises(ToolServerUnavailable, match="unreachable after 3 attempts"):
        asyncio.run(run())


def _cli(args: list[str], capsys: pytest.CaptureFixture, env: dict | None = None) -> tuple[int, str, str]:
    old = dict(os.environ)
    os.environ.pop("TOOL_BEARER", None)
    os.environ.update(env or {})
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        os.environ.clear()
        os.environ.update(old)
    out, err = capsys.readouterr()
    return code, out, err


def test_serve_refuses_to_start_without_a_token(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, _, err = _cli(["tools", "serve", "--corpus", str(tmp_path)], capsys)
    assert code == 1 and err.strip().count("\n") == 0
    assert err.startswith("error: no bearer token") and "--no-auth" in err
    code, _, err = _cli(["tools", "serve", "--corpus", str(tmp_path), "--token-file", str(tmp_path / "nope")], capsys)
    assert code == 1 and err.strip() == f"error: {tmp_path / 'nope'}: token file not found"
    code, _, err = _cli(["tools", "serve", "--corpus", str(tmp_path / "missing")], capsys, {"TOOL_BEARER": "t"})
    assert code == 1 and "corpus directory not found" in err
    code, _, err = _cli(["tools", "serve", "--tools", "nocolon"], capsys, {"TOOL_BEARER": "t"})
    assert code == 1 and "expected module:attr" in err


def test_smoke_calls_every_tool(tool_server: str, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _cli(["tools", "smoke", "--url", tool_server], capsys, {"TOOL_BEARER": TOOL_TOKEN})
    assert code == 0
    for name in ("search", "list", "read"):
        assert f"── {name}(" in out
    assert out.count(" ms") == 3 and "3/3 tools answered" in out
    code, _, err = _cli(["tools", "smoke", "--url", tool_server], capsys, {"TOOL_BEARER": "wrong"})
    assert code == 1 and "401" in err and err.count("\n") == 1


def test_serve_command_with_custom_tools_and_no_auth(tool_module: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "TOOL_BEARER"}
    env["PYTHONPATH"] = tool_module + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "agentrft.cli", "tools", "serve", "--tools", "my_tools:TOOLS", "--no-auth",
           "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        reply = httpx.post(url + "/add", json={"arguments": {"a": 1}, "call_id": "n1"})
        assert reply.json() == {"output": "2", "call_id": "n1"}
    finally:
        proc.terminate()
        log = proc.communicate(timeout=20)[0]
    assert "auth is OFF" in log
