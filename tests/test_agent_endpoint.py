"""EndpointPolicy against a real OpenAI-compatible server on loopback, and the loop's concurrency."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from agentrft.agent import RolloutSettings, rollout
from agentrft.agent.policy import EndpointPolicy, chat_completions_base
from agentrft.agent.testing import running_chat_server
from agentrft.jsonl import read_models
from agentrft.schema import Row, ToolResultTurn
from conftest import TOOL_TOKEN

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def rows(synth_dir: Path) -> list[Row]:
    return read_models(synth_dir / "research_val.jsonl", Row)[:6]


def research(messages):
    tool_messages = [m for m in messages if m["role"] == "tool"]
    if not tool_messages:
        return {"content": None, "tool_calls": [("search", json.dumps({"query": messages[-1]["content"]}))]}
    if len(tool_messages) == 1:
        path = re.search(r"(\S+\.html)", tool_messages[0]["content"]).group(1)
        return {"tool_calls": [("read", json.dumps({"path": path})), ("list", json.dumps({"prefix": "filings/"}))]}
    return {"content": "13.4%"}


def test_endpoint_policy_runs_tool_calls_from_the_response(tool_server, rows):
    with running_chat_server(research, delay_s=0.05) as (url, log):
        policy = EndpointPolicy(url + "/chat/completions", model="base", max_concurrency=3)
        trajectories = rollout(rows, policy, tool_server, TOOL_TOKEN, RolloutSettings(seed=1, top_k=20, system_prompt="Answer from the filings."))
    assert [t.row_id for t in trajectories] == [r.id for r in rows]
    for t in trajectories:
        assert t.stop_reason == "answer", t.turns[-1]
        assert t.output_text == "13.4%" and t.model == "base"
        assert [c.name for c in t.tool_calls] == ["search", "read", "list"]
        results = [x for x in t.turns if isinstance(x, ToolResultTurn)]
        assert not any(r.is_error for r in results) and len(results) == 3 and results[1].output.strip()
        assert t.token_ids is None and t.loss_mask is None
    assert 2 <= log.max_in_flight <= 3  # the semaphore, not the server, limited concurrency
    first, last = log.requests[0], log.requests[-1]
    assert first["model"] == "base" and [s["function"]["name"] for s in first["tools"]] == ["search", "list", "read"]
    assert first["top_k"] == 20 and first["temperature"] == 1.0 and first["max_tokens"] == 256
    # The conversation sent back carries the calls and one tool message per call, linked by id.
    calls = [c["id"] for m in last["messages"] if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    answered = [m["tool_call_id"] for m in last["messages"] if m["role"] == "tool"]
    assert calls == answered and len(calls) == 3
    assert last["messages"][0] == {"role": "system", "content": "Answer from the filings."}


def test_endpoint_malformed_arguments_are_recorded(tool_server, rows):
    def script(messages):
        if not any(m["role"] == "tool" for m in messages):
            return {"tool_calls": [("search", '{"query": "hend'), ("nope", "{}")]}
        return {"content": "done"}

    with running_chat_server(script) as (url, _):
        (t,) = rollout(rows[:1], EndpointPolicy(url, "m"), tool_server, TOOL_TOKEN, RolloutSettings())
    bad, unknown = t.tool_calls
    assert bad.error.startswith("arguments are not valid JSON") and bad.raw == '{"query": "hend'
    assert unknown.error is None
    results = [x for x in t.turns if isinstance(x, ToolResultTurn)]
    assert [r.is_error for r in results] == [True, True] and t.output_text == "done"


def test_endpoint_budgets(tool_server, rows):
    always_search = lambda m: {"tool_calls": [("search", '{"query": "revenue"}')]}  # noqa: E731
    with running_chat_server(always_search) as (url, log):
        policy = EndpointPolicy(url, "m")
        (calls,) = rollout(rows[:1], policy, tool_server, TOOL_TOKEN, RolloutSettings(max_tool_calls=2))
        (tokens,) = rollout(rows[:1], policy, tool_server, TOOL_TOKEN, RolloutSettings(max_trajectory_tokens=600))
    assert calls.stop_reason == "max_tool_calls" and len(calls.tool_calls) == 3
    assert tokens.stop_reason == "max_tokens"
    assert all(r["max_tokens"] <= 256 for r in log.requests)


def test_unreachable_endpoint_is_one_line_error(tool_server, rows):
    from agentrft.errors import UserError

    with pytest.raises(UserError, match="unreachable"):
        rollout(rows[:1], EndpointPolicy("http://127.0.0.1:9", "m", timeout_s=2), tool_server, TOOL_TOKEN, RolloutSettings())


def test_base_url_forms():
    assert chat_completions_base("http://h:8001/v1/chat/completions") == "http://h:8001/v1"
    assert chat_completions_base("http://h:8001/") == "http://h:8001/v1"
    assert chat_completions_base("http://h:8001/v1") == "http://h:8001/v1"


def test_pending_tool_calls_of_all_rollouts_run_concurrently(rows):
    """With every rollout calling a slow tool in the same round, all calls are in flight at once."""
    from agentrft.tools.local_server import running_server

    state = {"now": 0, "peak": 0}

    async def wait(seconds: float = 0.2) -> str:
        """Wait a while.

        Args:
            seconds: How long to wait.
        """
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(seconds)
        state["now"] -= 1
        return "waited"

    def script(messages):
        n = sum(m["role"] == "tool" for m in messages)
        return {"tool_calls": [("wait", "{}"), ("wait", "{}")]} if n < 2 else {"content": "ok"}

    bare = [row.model_copy(update={"tools": []}) for row in rows]  # tools come from the server's GET /tools
    with running_server(tools=[wait], token="tok") as tools_url, running_chat_server(script) as (url, _):
        trajectories = rollout(bare, EndpointPolicy(url, "m"), tools_url, "tok", RolloutSettings())
    assert all(t.stop_reason == "answer" and t.n_tool_calls == 2 for t in trajectories)
    assert state["peak"] == 2 * len(rows)
