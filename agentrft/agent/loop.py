"""The agent loop: multi-turn rollouts of rows through a policy and the tools, as Trajectories.

One loop serves the prior check, training and evaluation, so what is trained is what is measured.
Each round asks the policy for one turn of every unfinished rollout (one batched generation) and
runs every tool call of that round, across all rollouts, concurrently over HTTP; each reply's tool
calls start as soon as the policy hands it over (``on_reply``), while the rest of the batch is still
generating. The next round starts when every call of this one has
returned, so what the model sees never depends on timing. A rollout ends at a final answer, at the
tool-call budget, or at the token budget. Malformed calls, unknown
tools and tool errors never raise: they are recorded and the model sees an error message instead;
so does a call the tool server never answered (down after the client's retries, or past
``settings.tool_timeout_s``): the rollout goes on, and ``is_error`` on its result counts it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from ..schema import MessageTurn, Row, ToolCallTurn, ToolResultTurn, Trajectory
from ..tools.client import ToolClient, ToolServerUnavailable
from .episode import Episode, Reply
from .settings import RolloutSettings

if TYPE_CHECKING:
    from .policy import Policy  # torch, through the local policy

T = TypeVar("T")


def new_episode(row: Row, sample_index: int, system_prompt: str | None, tools: list[dict[str, Any]]) -> Episode:
    """A rollout's opening: the system prompt (none when None or empty) and the row's prompt."""
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": row.prompt})
    episode = Episode(row=row, sample_index=sample_index, messages=messages, tools=tools)
    episode.turns = [MessageTurn(role=m["role"], content=m["content"]) for m in messages]
    episode.started = time.perf_counter()
    return episode


ROLLOUTS_PER_CALL = 64
"""Rollouts a command hands the loop at once (every rollout of a row in the same call): enough for a local
model's decoding batches of 32 to run side by side on a 2-core CPU and for a server's batching, few enough
that progress shows early and an interrupted run loses little."""


def rows_per_call(samples_per_row: int) -> int:
    """Rows per ``run_rollouts`` call for ``ROLLOUTS_PER_CALL`` rollouts."""
    return max(1, ROLLOUTS_PER_CALL // max(1, samples_per_row))


async def run_rollouts(
    rows: list[Row],
    policy: Policy,
    tools: ToolClient,
    settings: RolloutSettings,
    samples_per_row: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[Trajectory]:
    """Roll out every row ``samples_per_row`` times; trajectories come back row by row, in order.

    ``progress`` (optional) is called with the number of rollouts that just finished.
    """
    server_specs: list[dict[str, Any]] | None = None
    if any(not row.tools for row in rows):
        server_specs = await tools.specs()  # rows without a tools list get the server's tools
    episodes = []
    for row in rows:
        specs = [spec.model_dump(exclude_none=True) for spec in row.tools] if row.tools else server_specs
        episodes.extend(new_episode(row, k, settings.system_prompt, list(specs or [])) for k in range(samples_per_row))
    active = list(episodes)
    while active:
        calls: dict[int, asyncio.Future[None]] = {}

        def take(index: int, reply: Reply, round_: list[Episode] = active, calls: dict = calls) -> None:
            if index not in calls:  # the policy handed this reply over already
                calls[index] = asyncio.ensure_future(_run_calls(tools, _take_reply(round_[index], reply, settings)))

        # Tool calls start as each reply is handed over, while the rest of the batch still generates.
        replies = await policy.generate(active, settings, on_reply=take)
        if len(replies) != len(active):
            raise RuntimeError(f"policy {policy.name} returned {len(replies)} replies for {len(active)} rollouts")
        for index, reply in enumerate(replies):
            take(index, reply)
        await asyncio.gather(*calls.values())
        now = time.perf_counter()
        finished = [e for e in active if e.done]
        for episode in finished:
            episode.elapsed_s = now - episode.started
            episode.policy_state = None
        if progress is not None and finished:
            progress(len(finished))
        active = [e for e in active if not e.done]
    return [episode.to_trajectory(policy.name, settings.seed) for episode in episodes]


def _take_reply(episode: Episode, reply: Reply, settings: RolloutSettings) -> list[tuple[Episode, ToolCallTurn]]:
    """Record one assistant turn; return the tool calls to run (none when the rollout ends here)."""
    episode.replies += 1
    if reply.out_of_budget:
        episode.stop_reason = "max_tokens"
        return []
    if reply.error:
        episode.stop_reason = "error"
        episode.turns.append(MessageTurn(role="assistant", content=reply.content))
        return []
    if reply.content or not reply.calls:
        episode.turns.append(MessageTurn(role="assistant", content=reply.content))
    if not reply.calls:
        episode.messages.append({"role": "assistant", "content": reply.content})
        episode.stop_reason = "answer" if reply.finished else "max_tokens"
        return []
    for offset, call in enumerate(reply.calls):
        call.call_id = call.call_id or f"call_{episode.n_tool_calls + offset}"
    episode.messages.append(_assistant_message(reply))
    not_run = None
    if not reply.finished:
        episode.stop_reason, not_run = "max_tokens", "not run: the turn hit the token limit"
    elif episode.n_tool_calls + len(reply.calls) > settings.max_tool_calls:
        episode.stop_reason = "max_tool_calls"
        not_run = f"not run: the tool-call budget ({settings.max_tool_calls}) is spent"
    for call in reply.calls:
        episode.turns.append(call.model_copy(update={"error": call.error or not_run}))
    if not_run:
        return []
    episode.n_tool_calls += len(reply.calls)
    return [(episode, call) for call in reply.calls]


def _assistant_message(reply: Reply) -> dict[str, Any]:
    calls = [
        {
            "id": call.call_id,
            "type": "function",
            "function": {
                "name": call.name or "invalid",
                "arguments": call.raw if call.error and call.raw else json.dumps(call.args, ensure_ascii=False),
            },
        }
        for call in reply.calls
    ]
    return {"role": "assistant", "content": reply.content, "tool_calls": calls}


async def _run_calls(tools: ToolClient, jobs: list[tuple[Episode, ToolCallTurn]]) -> None:
    """Run one reply's tool calls concurrently; record their results in call order."""
    results = await asyncio.gather(*(_run_call(tools, episode, call) for episode, call in jobs))
    for (episode, call), result in zip(jobs, results, strict=True):
        _record_result(episode, call, *result)


async def _run_call(tools: ToolClient, episode: Episode, call: ToolCallTurn) -> tuple[str, bool, float]:
    """Run one call; malformed and unknown calls get an error the model can read, without a request."""
    if call.error:
        return f"Error: {call.error}. Write one JSON object with \"name\" and \"arguments\".", True, 0.0
    known = [spec.get("function", {}).get("name") for spec in episode.tools]
    if call.name not in known:
        return f"Error: unknown tool {call.name!r}; the tools are: {', '.join(map(str, known))}", True, 0.0
    start = time.perf_counter()
    try:
        reply = await tools.call(call.name, call.args, call.call_id)
    except ToolServerUnavailable as exc:  # the server died mid-run: one failed call, not a failed run
        return f"Error: tool {call.name!r} unavailable: {exc}", True, (time.perf_counter() - start) * 1000
    return reply.output, reply.is_error, reply.latency_ms


def _record_result(episode: Episode, call: ToolCallTurn, output: str, is_error: bool, latency_ms: float) -> None:
    name = call.name or "invalid"
    episode.turns.append(
        ToolResultTurn(call_id=call.call_id, name=name, output=output, is_error=is_error, latency_ms=latency_ms)
    )
    episode.messages.append({"role": "tool", "tool_call_id": call.call_id, "name": name, "content": output})


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:  # inside a notebook or another loop
        return pool.submit(asyncio.run, coro).result()


def rollout(
    rows: list[Row],
    policy: Policy,
    tools_url: str,
    token: str | None,
    settings: RolloutSettings,
    samples_per_row: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[Trajectory]:
    """Sync wrapper: open a ToolClient on ``tools_url`` and run ``run_rollouts``."""
    async def main() -> list[Trajectory]:
        async with ToolClient(tools_url, token=token, timeout_s=settings.tool_timeout_s) as client:
            return await run_rollouts(rows, policy, client, settings, samples_per_row, progress)

    return run_sync(main())


__all__ = ["RolloutSettings", "new_episode", "rollout", "run_rollouts", "run_sync"]
