"""Policies: what produces the assistant's next turn. A local model, or any OpenAI-compatible endpoint.

A policy is one async method, ``generate(episodes, settings, on_reply=None) -> replies``: one
assistant turn for every episode of the batch, in order. When ``on_reply`` is given the policy calls
``on_reply(index, reply)`` once per reply as soon as it is final (a policy that finishes the batch at
once calls it at the end), so the loop can start that rollout's tool calls early. The loop owns tools, budgets and turns; the policy owns how text is produced (and, for a local
model, the token ids and loss mask).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import httpx
import torch

from ..errors import UserError
from ..schema import ToolCallTurn
from .episode import Episode, Reply
from .local import LocalPolicy
from .settings import RolloutSettings
from .vllm import vllm_policy


@runtime_checkable
class Policy(Protocol):
    """Produces one assistant turn per episode.

    Example (a policy that always answers "42"):
        >>> class Constant:
        ...     name = "constant"
        ...     async def generate(self, episodes, settings, on_reply=None):
        ...         replies = [Reply(content="42") for _ in episodes]
        ...         for index, reply in enumerate(replies):
        ...             if on_reply is not None:
        ...                 on_reply(index, reply)
        ...         return replies
    """

    name: str

    async def generate(self, episodes: list[Episode], settings: RolloutSettings,
                       on_reply: Callable[[int, Reply], None] | None = None) -> list[Reply]: ...


def chat_completions_base(url: str) -> str:
    """``http://host:8001/v1/chat/completions`` or ``http://host:8001`` → ``http://host:8001/v1``."""
    base = url.rstrip("/")
    base = base.removesuffix("/chat/completions")
    if not base.endswith("/v1"):
        base += "/v1"
    return base


class EndpointPolicy:
    """Any OpenAI-compatible ``/v1/chat/completions`` with ``tools`` (vLLM's server, a hosted API).

    Requests go through the official ``openai`` client, at most ``max_concurrency`` at a time. Tool
    calls come from the response's ``tool_calls``; arguments that are not valid JSON are recorded as
    malformed calls. Token budgets are counted from the response's ``usage``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        max_concurrency: int = 32,
        timeout_s: float = 120.0,
    ) -> None:
        self.base_url = chat_completions_base(base_url)
        self.model = model
        self.name = model
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _client_for_this_loop(self) -> Any:
        # httpx pools are bound to the event loop that opened them; the sync ``rollout`` wrapper runs a
        # fresh loop per call, so the client is rebuilt when the loop changes.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(
                base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s, max_retries=2
            )
            self._client_loop = loop
        return self._client

    async def generate(self, episodes: list[Episode], settings: RolloutSettings,
                       on_reply: Callable[[int, Reply], None] | None = None) -> list[Reply]:
        """One completion per episode, concurrently; ``on_reply(index, reply)`` as each one arrives."""
        client = self._client_for_this_loop()
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(index: int, episode: Episode) -> Reply:
            async with limit:
                reply = await self._complete(client, episode, settings)
            if on_reply is not None:
                on_reply(index, reply)
            return reply

        return list(await asyncio.gather(*(one(i, e) for i, e in enumerate(episodes))))

    async def _complete(self, client: Any, episode: Episode, settings: RolloutSettings) -> Reply:
        import openai

        room = settings.max_trajectory_tokens - episode.n_tokens
        if room <= 0:
            return Reply(content="", finished=False, out_of_budget=True)
        request: dict[str, Any] = dict(
            model=self.model,
            messages=episode.messages,
            max_tokens=min(settings.max_new_tokens, room),
            temperature=settings.temperature,
            top_p=settings.top_p,
        )
        if episode.tools:
            request["tools"] = episode.tools
        if settings.seed is not None:
            request["seed"] = settings.seed + episode.sample_index * 7919 + episode.replies
        if settings.top_k:
            request["extra_body"] = {"top_k": settings.top_k}  # vLLM's extension; OpenAI ignores it
        try:
            response = await client.chat.completions.create(**request)
        except openai.APIConnectionError:
            raise UserError(f"{self.base_url}: model endpoint unreachable") from None
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403, 404):
                raise UserError(f"{self.base_url}: {exc.status_code} for model {self.model!r}") from None
            return Reply(content=f"endpoint error {exc.status_code}: {exc.message}", finished=False, error=True)
        choice = response.choices[0]
        message = choice.message
        calls = [_endpoint_call(call) for call in message.tool_calls or []]
        content = message.content or ""
        usage = getattr(response, "usage", None)
        if usage is not None and usage.total_tokens:
            episode.n_tokens = usage.prompt_tokens + usage.completion_tokens
        else:  # no usage reported: a rough count keeps the budget meaningful
            episode.n_tokens += len(content) // 4 + 1
        return Reply(content=content.strip(), calls=calls, finished=choice.finish_reason != "length")


def is_endpoint(model: str) -> bool:
    return model.startswith(("http://", "https://"))


def served_model_name(base_url: str, api_key: str | None = None) -> str:
    """The first model an OpenAI-compatible server lists at ``/v1/models`` (vLLM serves one)."""
    url = chat_completions_base(base_url) + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        reply = httpx.get(url, timeout=10.0, headers=headers)
        return str(reply.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        raise UserError(f"{url}: cannot list the served models; name the model explicitly") from None


def load_policy(model: str, served_model: str | None = None, device: str | None = None) -> EndpointPolicy | LocalPolicy:
    """An http(s) URL → EndpointPolicy; a model folder (or hub id) → LocalPolicy on the GPU if there is one."""
    if is_endpoint(model):
        return EndpointPolicy(model, served_model or served_model_name(model))
    return LocalPolicy.from_pretrained(model, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))


@contextmanager
def open_policy(model: str, served_model: str | None = None, engine: str = "local",
                vllm_url: str | None = None) -> Iterator[Any]:
    """The policy for ``model`` for the length of the block: as ``load_policy`` with ``engine="local"``;
    with ``engine="vllm"``, a model folder (or a LoRA adapter's) through vLLM, token-in / token-out, on
    the server at ``vllm_url`` or on one started for the block."""
    if engine == "vllm":
        if is_endpoint(model):
            raise UserError(f"--engine vllm takes a model folder, not a URL ({model}); pass the server as --vllm-url")
        with vllm_policy(model, vllm_url) as policy:
            yield policy
        return
    if engine != "local":
        raise UserError(f"--engine {engine}: expected local or vllm")
    yield load_policy(model, served_model)


def _endpoint_call(call: Any) -> ToolCallTurn:
    """One tool call of an OpenAI reply; arguments that are not a JSON object keep ``raw`` and ``error``."""
    function = getattr(call, "function", None)
    name = getattr(function, "name", "") or ""
    raw = getattr(function, "arguments", "") or ""
    call_id = getattr(call, "id", "") or ""
    try:
        args = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        return ToolCallTurn(call_id=call_id, name=name, raw=raw, error=f"arguments are not valid JSON ({exc.msg})")
    if not isinstance(args, dict):
        return ToolCallTurn(call_id=call_id, name=name, raw=raw, error="arguments must be a JSON object")
    if not name:
        return ToolCallTurn(call_id=call_id, name="", args=args, raw=raw, error="tool call has no function name")
    return ToolCallTurn(call_id=call_id, name=name, args=args)


__all__ = [
    "EndpointPolicy",
    "LocalPolicy",
    "Policy",
    "chat_completions_base",
    "is_endpoint",
    "load_policy",
    "open_policy",
    "served_model_name",
]
