"""→ production: the tuned model served against a separate production tool server, traced apart."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from agentrft.agent.settings import RolloutSettings
from agentrft.jsonl import read_models
from agentrft.schema import ToolResultTurn, Trajectory
from agentrft.serve import create_app
from agentrft.tools.local_server import running_server, serve_app

pytestmark = pytest.mark.timeout(180)
PROD_TOKEN = "prod-token-456"
API_KEY = "client-key"


def research(messages):
    from agentrft.agent.testing import tool_call_text

    done = sum(1 for m in messages if m["role"] == "tool")
    if done == 0:
        return tool_call_text("search", {"query": messages[-1]["content"]})
    if done == 1:
        return tool_call_text("read", {"path": re.search(r"(\S+\.html)", messages[-1]["content"]).group(1)})
    return "13.4%"


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrft.agent.testing import ScriptedLocalPolicy

    policy = ScriptedLocalPolicy(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                 AutoTokenizer.from_pretrained(tiny_model_dir), research)
    traces = tmp_path_factory.mktemp("prod-traces")
    with running_server(corpus_dir=corpus_dir, token=PROD_TOKEN, embed=False) as tools_url:
        app = create_app(policy, tools_url, PROD_TOKEN, RolloutSettings(temperature=0), traces, api_key=API_KEY)
        with serve_app(app) as url:
            yield url, traces


def test_agent_route_runs_the_loop_on_production_tools_and_traces_it(served):
    url, traces = served
    headers = {"Authorization": f"Bearer {API_KEY}"}
    reply = httpx.post(f"{url}/v1/agent", json={"prompt": "Henderson Q3 2025 operating margin?", "id": "q-1"},
                       headers=headers, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["answer"] == "13.4%" and body["tool_calls"] == 2 and body["stop_reason"] == "answer"
    files = list(traces.glob("production-*.jsonl"))
    assert len(files) == 1
    [trajectory] = read_models(files[0], Trajectory)
    assert trajectory.row_id == "q-1"
    results = [t for t in trajectory.turns if isinstance(t, ToolResultTurn)]
    assert results and not any(r.is_error for r in results), [r.output for r in results]
    assert "filings/" in results[0].output  # the production server answered the search


def test_every_route_but_healthz_needs_the_key(served):
    url, _ = served
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.post(f"{url}/v1/agent", json={"prompt": "x"}, headers={"Authorization": "Bearer no"}).status_code == 401


def test_chat_completions_speaks_openai(served):
    from openai import OpenAI

    url, _ = served
    client = OpenAI(base_url=f"{url}/v1", api_key=API_KEY)
    tools = [{"type": "function", "function": {"name": "search", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]
    response = client.chat.completions.create(
        model="tuned", messages=[{"role": "user", "content": "Atlas revenue?"}], tools=tools)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "search"
    assert json.loads(call.function.arguments) == {"query": "Atlas revenue?"}
    assert response.usage.completion_tokens > 0


def test_chat_completions_stream_when_asked(served):
    """An OpenAI client asking for a stream gets server-sent chunks, tool-call deltas included."""
    from openai import OpenAI

    url, _ = served
    client = OpenAI(base_url=f"{url}/v1", api_key=API_KEY)
    tools = [{"type": "function", "function": {"name": "search", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]
    chunks = list(client.chat.completions.create(
        model="tuned", messages=[{"role": "user", "content": "Atlas revenue?"}], tools=tools, stream=True))
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert [call.function.name for call in calls] == ["search"]
    assert json.loads(calls[0].function.arguments) == {"query": "Atlas revenue?"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tuned", stream=True, messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "",
        "tool_calls": [{"id": "c0", "type": "function", "function": {"name": "search", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c0", "content": "filings/a.html"},
        {"role": "tool", "tool_call_id": "c0", "content": "read"}]))
    assert text == "13.4%"
