"""The filings tool server over loopback: both contracts, auth, every error, path escapes, load."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from conftest import TOOL_TOKEN

from agentrft.tools.client import ToolClient
from agentrft.tools.corpus_tools import tool_specs

AUTH = {"Authorization": f"Bearer {TOOL_TOKEN}"}
ROUTES = [("GET", "/tools"), ("POST", "/search"), ("POST", "/list"), ("POST", "/read"), ("POST", "/nope")]


def post(url: str, route: str, body: object, headers: dict | None = None) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + route, content=content, headers=AUTH if headers is None else headers, timeout=30)


def test_healthz_needs_no_token(tool_server: str) -> None:
    reply = httpx.get(tool_server + "/healthz")
    assert reply.status_code == 200
    assert reply.json()["tools"] == ["search", "list", "read"]


@pytest.mark.parametrize("method,route", ROUTES)
def test_every_tool_route_refuses_missing_and_wrong_tokens(tool_server: str, method: str, route: str) -> None:
    body = json.dumps({"arguments": {"prefix": ""}, "call_id": "a1"})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOOL_TOKEN}):
        reply = httpx.request(method, tool_server + route, content=body, headers=headers)
        assert reply.status_code == 401, (route, headers)
        assert reply.json()["output"].startswith("Error: missing or invalid bearer token")
    reply = httpx.request(method, tool_server + route, content=body, headers=AUTH)
    assert reply.status_code != 401


def test_specs_are_the_ones_rows_carry(tool_server: str) -> None:
    reply = httpx.get(tool_server + "/tools", headers=AUTH)
    assert reply.status_code == 200
    assert reply.json() == tool_specs()


def test_tutorial_contract_search(tool_server: str) -> None:
    reply = post(tool_server, "/search", {"arguments": {"query": "Henderson Industries Q3 2025 operating margin"},
                                          "call_id": "test-001"})
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"output", "call_id"} and body["call_id"] == "test-001"
    lines = body["output"].splitlines()
    heads = [line for line in lines if not line.startswith("  ")]
    assert len(heads) == 3
    for head in heads:
        path, _, score = head.partition(" (score ")
        assert path.endswith(".html") and 0.0 <= float(score.rstrip(")")) <= 1.0
    assert any("henderson" in head for head in heads)
    assert lines[1].startswith("  ") and lines[1].strip()


def test_managed_function_call_contract(tool_server: str) -> None:
    request = {"type": "function_call", "call_id": "call_9", "name": "list",
               "arguments": json.dumps({"prefix": "filings/henderson"}), "item": {"id": "row-1"}}
    reply = post(tool_server, "/list", request)
    assert reply.status_code == 200
    body = reply.json()
    assert body["type"] == "function_call_output" and body["call_id"] == "call_9"
    paths = body["output"].splitlines()
    assert paths and all(p.startswith("filings/henderson") for p in paths)


def test_managed_contract_errors_keep_its_shape(tool_server: str) -> None:
    reply = post(tool_server, "/read", {"type": "function_call", "call_id": "c7", "name": "read", "arguments": "{bad"})
    assert reply.status_code == 400
    assert reply.json()["type"] == "function_call_output" and reply.json()["call_id"] == "c7"
    reply = post(tool_server, "/read", {"type": "function_call", "call_id": "c8", "name": "search", "arguments": "{}"})
    assert reply.status_code == 400 and "search" in reply.json()["output"]


@pytest.mark.parametrize(
    "route,body,status,needle",
    [
        ("/search", b"{not json", 400, "not valid JSON"),
        ("/search", b"[1, 2]", 400, "JSON object"),
        ("/search", {"arguments": [1], "call_id": "e1"}, 400, "arguments must be a JSON object"),
        ("/delete_everything", {"arguments": {}, "call_id": "e2"}, 404, "unknown tool 'delete_everything'"),
        ("/search", {"arguments": {}, "call_id": "e3"}, 422, "query is required"),
        ("/search", {"arguments": {"query": "x", "top_k": "many"}, "call_id": "e4"}, 422, "top_k"),
        ("/read", {"arguments": {"path": 7}, "call_id": "e5"}, 422, "path"),
        ("/list", {"arguments": {"prefix": "", "rm": True}, "call_id": "e6"}, 422, "unexpected argument 'rm'"),
        ("/search", {"arguments": {"query": "   "}, "call_id": "e7"}, 200, "Error: query is required"),
        ("/search", {"arguments": {"query": "margin", "top_k": 0}, "call_id": "e8"}, 200, "between 1 and 10"),
        ("/read", {"arguments": {"path": "filings/nothing.html"}, "call_id": "e9"}, 200, "no document"),
        ("/list", {"arguments": {"prefix": "zzz/"}, "call_id": "e10"}, 200, "no documents under"),
    ],
)
def test_errors_are_structured(tool_server: str, route: str, body: object, status: int, needle: str) -> None:
    reply = post(tool_server, route, body)
    assert reply.status_code == status
    data = reply.json()
    assert data["output"].startswith("Error: ") and needle in data["output"]
    if isinstance(body, dict):
        assert data["call_id"] == body["call_id"]


def test_oversized_body_is_refused(tool_server: str) -> None:
    big = json.dumps({"arguments": {"query": "x" * 1_100_000}, "call_id": "big"})
    reply = post(tool_server, "/search", big)
    assert reply.status_code == 413 and reply.json()["output"].startswith("Error: request body over")


def test_wrong_method_is_structured(tool_server: str) -> None:
    reply = httpx.get(tool_server + "/search", headers=AUTH)
    assert reply.status_code == 405 and reply.json()["output"].startswith("Error: ")


@pytest.mark.parametrize(
    "path",
    ["../research_train.jsonl", "/etc/passwd", "filings/../../research_train.jsonl", "%2e%2e/research_train.jsonl",
     "%252e%252e%252fresearch_train.jsonl", "\uff0e\uff0e/research_train.jsonl", "filings\\..\\..\\x",
     "~/.bashrc", "C:/Windows/win.ini", "filings/\x00.html"],
)
def test_read_refuses_paths_outside_the_corpus(tool_server: str, path: str) -> None:
    reply = post(tool_server, "/read", {"arguments": {"path": path}, "call_id": "p1"})
    assert reply.status_code == 200
    output = reply.json()["output"]
    assert output.startswith("Error: ") and "Atlas" not in output


def test_read_returns_text_not_html(tool_server: str) -> None:
    listing = post(tool_server, "/list", {"arguments": {"prefix": "filings/"}, "call_id": "l"}).json()["output"]
    path = listing.splitlines()[0]
    text = post(tool_server, "/read", {"arguments": {"path": path}, "call_id": "r"}).json()["output"]
    assert "<td>" not in text and "<p>" not in text and "Revenue" in text
    # URL-encoded and ./ variants of a real path name the same document
    same = post(tool_server, "/read", {"arguments": {"path": "./" + path.replace("/", "%2F")}, "call_id": "r2"})
    assert same.json()["output"] == text


def test_256_concurrent_calls_all_answer_with_their_call_ids(tool_server: str) -> None:
    async def run() -> list:
        async with ToolClient(tool_server, token=TOOL_TOKEN, max_connections=256) as client:
            paths = (await client.call("list", {}, call_id="l0")).output.splitlines()
            calls = []
            for i in range(256):
                if i % 3 == 0:
                    calls.append(("search", {"query": f"operating income {i}"}, None))
                elif i % 3 == 1:
                    calls.append(("read", {"path": paths[i % len(paths)]}, paths[i % len(paths)]))
                else:
                    calls.append(("list", {"prefix": paths[i % len(paths)][:12]}, None))
            replies = await asyncio.wait_for(
                asyncio.gather(*(client.call(n, a, call_id=f"cid-{i}") for i, (n, a, _) in enumerate(calls))), 120
            )
            return list(zip(calls, replies))

    results = asyncio.run(run())
    assert len(results) == 256
    for i, ((name, args, path), reply) in enumerate(results):
        assert reply.status == 200 and not reply.is_error, (name, reply.output[:200])
        assert reply.call_id == f"cid-{i}"
        # each reply answers its own request, not a neighbour's
        if name == "read":
            company = path.split("/")[1].split("-")[0]
            assert company in reply.output.splitlines()[0].lower()
        elif name == "list":
            assert all(line.startswith(args["prefix"]) for line in reply.output.splitlines())
        else:
            assert reply.output.count("(score ") == 3


def test_client_function_call_contract(tool_server: str) -> None:
    async def run():
        async with ToolClient(tool_server, token=TOOL_TOKEN, contract="function_call") as client:
            good = await client.call("search", {"query": "net income", "top_k": 2}, call_id="fc-1")
            raw_bad = await client.call("search", '{"query": ', call_id="fc-2")
            return good, raw_bad

    good, raw_bad = asyncio.run(run())
    assert good.status == 200 and good.call_id == "fc-1" and good.output.count("(score ") == 2
    assert raw_bad.is_error and raw_bad.status == 400 and raw_bad.call_id == "fc-2"
