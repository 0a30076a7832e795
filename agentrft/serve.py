"""→ production: serve the tuned model against production tool endpoints, traced apart from training.

Three substitutions on the way out, each a flag rather than a code change:

- tool endpoints: ``--tools-url`` points at the production tool servers (same contract as training's);
  the tool specs come from that server's ``GET /tools``, so a production tool that changed its
  arguments is what the model sees, not a stale copy from the dataset;
- the model: ``--model`` is the tuned checkpoint (a merged model or base + adapter directory);
- observability: every agent request is written as a Trajectory to ``--traces DIR/production-DATE.jsonl``,
  a different place from a run's ``traces/``: training-time and production-time traces are two
  systems, and a surprise in production is debugged from the production ones.

Routes: ``POST /v1/agent`` (the whole agent loop: prompt in, answer + trace out),
``POST /v1/chat/completions`` (one OpenAI-compatible turn with ``tool_calls``, for clients that run
their own tool loop), ``GET /v1/models``, ``GET /healthz``. A bearer key (``--api-key-env``) guards
every route but ``/healthz``.
"""

# No `from __future__ import annotations`: FastAPI resolves the route signatures' types at runtime.
import asyncio
import datetime as dt
import hmac
import os
import time
import uuid
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, Field

from .errors import UserError
from .files import read_text
from .schema import Row

DEFAULT_PORT = 8100


class AgentRequest(BaseModel):
    """A production question: the prompt, and an optional id to find its trace by."""

    prompt: str = Field(min_length=1)
    id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ChatRequest(BaseModel):
    """The subset of an OpenAI chat-completions request a tool-using agent sends."""

    model_config = {"extra": "ignore"}
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] = Field(default_factory=list)
    temperature: float | None = None
    max_tokens: int | None = None


def create_app(policy: Any, tools_url: str, tools_token: str | None, settings: Any, traces_dir: Path,
               api_key: str | None = None) -> Any:
    """Build the FastAPI app around one policy (see the module docstring for the routes)."""
    from fastapi import Depends, FastAPI, HTTPException, Request

    from .agent.episode import Episode
    from .agent.loop import run_rollouts
    from .jsonl import write_models
    from .tools.client import ToolClient

    app = FastAPI(title="agentrft serve")
    lock = asyncio.Lock()  # one generation at a time: a local model is not re-entrant
    traces_dir.mkdir(parents=True, exist_ok=True)

    def auth(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong bearer key")

    class _Serialized:
        """The policy, with every generate call taken in turn."""

        name = policy.name

        async def generate(self, episodes: list[Episode], rollout_settings: Any) -> Any:
            async with lock:
                return await policy.generate(episodes, rollout_settings)

    serial = _Serialized()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "model": policy.name}

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": policy.name, "object": "model", "owned_by": "agentrft"}]}

    @app.post("/v1/agent", dependencies=[Depends(auth)])
    async def agent(req: AgentRequest) -> dict[str, Any]:
        row_id = req.id or f"prod-{uuid.uuid4().hex[:12]}"
        row = Row(id=row_id, prompt=req.prompt, reference_answer="(production: no reference)",
                  metadata={"source": "production", **req.metadata})
        async with ToolClient(tools_url, token=tools_token) as client:
            trajectory = (await run_rollouts([row], serial, client, settings))[0]
        day = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
        write_models(traces_dir / f"production-{day}.jsonl", [trajectory], append=True)
        return {
            "id": row_id,
            "answer": trajectory.output_text,
            "tool_calls": trajectory.n_tool_calls,
            "stop_reason": trajectory.stop_reason,
            "turns": [t.model_dump() for t in trajectory.turns],
        }

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat(req: ChatRequest) -> dict[str, Any]:
        turn_settings = settings.model_copy(update={
            k: v for k, v in (("temperature", req.temperature), ("max_new_tokens", req.max_tokens)) if v is not None
        })
        last_user = next((m.get("content") for m in reversed(req.messages) if m.get("role") == "user"), "") or ""
        row = Row(id=f"chat-{uuid.uuid4().hex[:12]}", prompt=str(last_user) or "(none)", reference_answer="-")
        episode = Episode(row=row, sample_index=0, messages=list(req.messages), tools=list(req.tools))
        reply = (await serial.generate([episode], turn_settings))[0]
        return _chat_response(policy.name, reply, episode)

    return app


def _chat_response(model: str, reply: Any, episode: Any) -> dict[str, Any]:
    """An OpenAI chat-completions response body for one assistant turn."""
    import json

    calls = [
        {"id": f"call_{i}", "type": "function",
         "function": {"name": c.name or "invalid", "arguments": c.raw if c.error and c.raw else json.dumps(c.args)}}
        for i, c in enumerate(reply.calls)
    ]
    generated = sum(episode.loss_mask or [])
    prompt_tokens = len(episode.token_ids or []) - generated
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply.content or None, "tool_calls": calls or None},
            "finish_reason": "tool_calls" if calls else ("stop" if reply.finished else "length"),
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": generated,
                  "total_tokens": prompt_tokens + generated},
    }


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        model: Path = typer.Option(..., help="The tuned model directory (e.g. runs/NAME/checkpoints/best)."),
        tools_url: str = typer.Option(..., help="Base URL of the PRODUCTION tool server."),
        tools_token_file: Path | None = typer.Option(None, help="File with the tool server's bearer token "
                                                     "(default: the TOOL_BEARER environment variable)."),
        traces: Path = typer.Option(Path("prod-traces"), help="Where production trajectories are written."),
        host: str = typer.Option("127.0.0.1"),
        port: int = typer.Option(DEFAULT_PORT),
        api_key_env: str | None = typer.Option(None, help="Environment variable holding the key clients "
                                               "must send as a bearer token (default: no key)."),
        temperature: float = typer.Option(0.0, help="Sampling temperature in production (0 = greedy)."),
        max_tool_calls: int = typer.Option(12),
        max_trajectory_tokens: int = typer.Option(4096),
        max_new_tokens: int = typer.Option(256),
    ) -> None:
        """→ production: serve the tuned model with production tools; trace every call separately."""
        import uvicorn

        from .agent.policy import LocalPolicy
        from .agent.settings import RolloutSettings

        token = _read_token(tools_token_file)
        key = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise UserError(f"--api-key-env {api_key_env}: that environment variable is empty")
        policy = LocalPolicy.from_pretrained(model)
        settings = RolloutSettings(temperature=temperature, max_tool_calls=max_tool_calls,
                                   max_trajectory_tokens=max_trajectory_tokens, max_new_tokens=max_new_tokens)
        uvicorn.run(create_app(policy, tools_url, token, settings, traces, key), host=host, port=port)


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return os.environ.get("TOOL_BEARER")
    return read_text(path, "a token file").strip()
