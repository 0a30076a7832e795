"""Policies and servers whose output a test controls, built on the real machinery.

- ``ScriptedLocalPolicy``: a policy whose turns come from a script instead of sampling; the ids still
  go through the real tokenizer, chat template, response parser and loss-mask bookkeeping, and the
  log-probs are the model's own (one forward pass), so training code can run on them.
- ``running_chat_server``: a real OpenAI-compatible ``/v1/chat/completions`` on a free loopback port
  (FastAPI + uvicorn in a thread) that answers from a script; it records every request it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request

from ..tools.local_server import serve_app
from . import render
from .episode import Episode, Reply
from .parse import ensure_response_parser
from .settings import RolloutSettings

Script = Callable[[list[dict[str, Any]]], str | dict[str, Any]]
"""Given the conversation so far (OpenAI messages), the next assistant turn: text to emit verbatim
(local) or ``{"content": ..., "tool_calls": [(name, arguments_json), ...]}`` (chat server)."""


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    """A tool call as a Qwen-style model writes it."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


class ScriptedLocalPolicy:
    """A policy that emits ``script(messages)`` (then the end-of-turn token) instead of sampling.

    Its turns go through the same bookkeeping as a sampled turn (``render.open_turn``/``close_turn``:
    chat template, budgets, response parser, loss mask), and their log-probs are the model's own (one
    forward pass), so training code can run on them. ``messages`` is the episode's own list, the same
    object every turn, so a script can tell the rollouts of one batch apart by it.
    """

    def __init__(self, model: Any, tokenizer: Any, script: Script, name: str = "scripted") -> None:
        ensure_response_parser(tokenizer)
        self.model, self.tokenizer, self.script, self.name = model, tokenizer, script, name
        self.stop_ids = render.end_token_ids(name, tokenizer.eos_token_id)

    async def generate(self, episodes: list[Episode], settings: RolloutSettings,
                       on_reply: Callable[[int, Reply], None] | None = None) -> list[Reply]:
        replies = []
        for index, episode in enumerate(episodes):
            room = render.open_turn(episode, self.tokenizer, settings.max_trajectory_tokens, settings.max_new_tokens)
            if not room:
                reply = render.out_of_budget()
            else:
                text = self.script(episode.messages)
                if not isinstance(text, str):
                    raise TypeError("a local script returns the text to emit")
                ids = (list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + [self.stop_ids[0]])[:room]
                reply = render.close_turn(episode, self.tokenizer, ids, self._logprobs(episode.token_ids or [], ids),
                                          self.stop_ids)
            if on_reply is not None:
                on_reply(index, reply)
            replies.append(reply)
        return replies

    def _logprobs(self, context: list[int], ids: list[int]) -> list[float]:
        import torch

        device = next(self.model.parameters()).device
        with torch.no_grad():
            full = torch.tensor([context + ids], device=device)
            logits = self.model(input_ids=full).logits[0, len(context) - 1 : -1].float()
            return torch.log_softmax(logits, -1).gather(1, full[0, len(context) :, None]).squeeze(1).cpu().tolist()


@dataclass
class ChatLog:
    """What a scripted chat server received."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    max_in_flight: int = 0
    in_flight: int = 0


def _completion(turn: str | dict[str, Any], model: str, index: int, prompt_chars: int) -> dict[str, Any]:
    turn = {"content": turn} if isinstance(turn, str) else turn
    calls = [
        {"id": f"call_{index}_{k}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for k, (name, arguments) in enumerate(turn.get("tool_calls", []))
    ]
    content = turn.get("content")
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    completion_tokens = len(content or "") // 4 + 10 * len(calls) + 1
    return {
        "id": f"chatcmpl-{index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": turn.get("finish_reason") or ("tool_calls" if calls else "stop")}],
        "usage": {
            "prompt_tokens": prompt_chars // 4,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_chars // 4 + completion_tokens,
        },
    }


@contextlib.contextmanager
def running_chat_server(script: Script, model: str = "scripted", delay_s: float = 0.0) -> Iterator[tuple[str, ChatLog]]:
    """Serve ``script`` as an OpenAI-compatible chat endpoint; yields (base URL ending in /v1, log)."""
    app = FastAPI()
    log = ChatLog()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "agentrft"}]}

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> dict[str, Any]:
        body = await request.json()
        log.requests.append(body)
        log.in_flight += 1
        log.max_in_flight = max(log.max_in_flight, log.in_flight)
        try:
            if delay_s:
                await asyncio.sleep(delay_s)
            turn = script(body["messages"])
        finally:
            log.in_flight -= 1
        chars = sum(len(str(m.get("content") or "")) for m in body["messages"])
        return _completion(turn, body.get("model", model), len(log.requests), chars)

    with serve_app(app) as url:
        yield f"{url}/v1", log


__all__ = ["ChatLog", "ScriptedLocalPolicy", "running_chat_server", "tool_call_text"]
