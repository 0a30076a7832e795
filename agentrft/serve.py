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
their own tool loop), ``GET /v1/models``, ``GET /healthz``, and ``GET /openapi.json`` (typed request
and response models, so the document says what each route answers). A bearer key (``--api-key-env``)
guards every path but ``/healthz``, checked before a body is read; without one, ``serve`` listens on
loopback only unless ``--allow-no-key`` says otherwise. Bodies over 1 MB are refused (413); a
conversation the chat template cannot render is a 400; an unreachable tool server a 503. The key and
the tool token are never logged or echoed.
"""

# No `from __future__ import annotations`: FastAPI resolves the route signatures' types at runtime.
import asyncio
import datetime as dt
import hmac
import ipaddress
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .agent.episode import Episode, Reply
from .agent.loop import run_rollouts
from .agent.settings import RolloutSettings, fit_context
from .errors import UserError
from .jsonl import write_models
from .schema import Row, RowMetadata, StopReason, ToolSpec, Turn
from .tools.client import ToolClient, ToolServerUnavailable, read_token

DEFAULT_PORT = 8100
MAX_BODY_BYTES = 1_000_000
"""Largest request body; a production prompt or conversation is kilobytes."""
MAX_TEXT_CHARS = 100_000
log = logging.getLogger("agentrft.serve")


def _check_text(value: Any) -> Any:
    """Refuse strings with no UTF-8 form (a lone surrogate such as "\\ud800", which JSON can carry):
    the tokenizer and the trace writer would fail on them deep inside, as a 500."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                raise ValueError("text holds a lone UTF-16 surrogate; send valid Unicode") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


class _Request(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        return _check_text(data)


class AgentRequest(_Request):
    """A production question: the prompt, and an optional id to find its trace by."""

    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    id: str | None = Field(default=None, min_length=1, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _metadata_fits_a_row(self) -> "AgentRequest":
        try:
            RowMetadata.model_validate(self.metadata)
        except ValidationError as exc:
            raise ValueError(f"metadata: {exc.errors()[0]['msg']}") from None
        return self


class ChatFunction(BaseModel):
    name: str
    arguments: str


class ChatToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ChatFunction


class ChatMessage(BaseModel):
    """One message of an OpenAI conversation (text content; no images)."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    tool_calls: list[ChatToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class ChatRequest(_Request):
    """The subset of an OpenAI chat-completions request a tool-using agent sends."""

    model_config = ConfigDict(extra="ignore")
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    tools: list[ToolSpec] = Field(default_factory=list)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool = Field(default=False, description="Answer as server-sent events (chat.completion.chunk).")


class AgentResponse(BaseModel):
    id: str
    answer: str
    tool_calls: int
    stop_reason: StopReason
    turns: list[Turn]


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ChatToolCall] | None


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    finish_reason: Literal["stop", "length", "tool_calls"]


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    model: str


class ErrorBody(BaseModel):
    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "The body is not JSON.", 401: "Missing or wrong bearer key.", 413: "The body is over 1 MB.",
            503: "The production tool server is unreachable."}
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


class _Guard:
    """ASGI middleware in front of every route: the key (when there is one) on every path but
    ``/healthz``, unknown paths and the OpenAPI document included, checked before the body is read;
    then the body limit, declared or streamed, answered in the same JSON shape as every other error."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.expected, self.limit = app, api_key.encode() if api_key else None, max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.expected is not None and scope["path"] != "/healthz" and not self._authorized(scope):
            return await _error(send, 401, "missing or wrong bearer key")
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"0")
        if declared.isdigit() and int(declared) > self.limit:
            return await _error(send, 413, f"request body over {self.limit} bytes")
        chunks, size = [], 0
        while True:  # bodies are small: read whole here, so the limit holds for a streamed one too
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await _error(send, 413, f"request body over {self.limit} bytes")
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.expected or b"")


async def _error(send: Any, status: int, detail: str) -> None:
    headers = [(b"content-type", b"application/json")] + ([(b"www-authenticate", b"Bearer")] if status == 401 else [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})


def create_app(policy: Any, tools_url: str, tools_token: str | None, settings: Any, traces_dir: Path,
               api_key: str | None = None, concurrent: bool = False) -> Any:
    """Build the FastAPI app around one policy (see the module docstring for the routes). ``concurrent``:
    the policy takes overlapping generate calls (a vLLM server batches them); a local model takes them
    one at a time."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import StreamingResponse
    from jinja2 import TemplateError

    app = FastAPI(title="agentrft serve", docs_url=None, redoc_url=None)
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=MAX_BODY_BYTES)
    lock = asyncio.Lock()  # one generation at a time: a local model is not re-entrant
    traces_dir.mkdir(parents=True, exist_ok=True)
    guarded = _errors(401) if api_key is not None else {}
    posted = {**guarded, **_errors(400, 413)}

    class _Serialized:
        """The policy, with every generate call taken in turn."""

        name = policy.name

        async def generate(self, episodes: list[Episode], rollout_settings: Any,
                           on_reply: Callable[[int, Reply], None] | None = None) -> list[Reply]:
            if concurrent:
                return await policy.generate(episodes, rollout_settings, on_reply=on_reply)
            async with lock:
                return await policy.generate(episodes, rollout_settings, on_reply=on_reply)

    serial = _Serialized()

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "model": policy.name}

    @app.get("/v1/models", response_model=ModelList, responses=guarded)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": policy.name, "object": "model", "owned_by": "agentrft"}]}

    @app.post("/v1/agent", response_model=AgentResponse, responses={**posted, **_errors(503)})
    async def agent(req: AgentRequest) -> dict[str, Any]:
        row_id = req.id or f"prod-{uuid.uuid4().hex[:12]}"
        row = Row(id=row_id, prompt=req.prompt, reference_answer="(production: no reference)",
                  metadata={"source": "production", **req.metadata})
        try:
            async with ToolClient(tools_url, token=tools_token, timeout_s=settings.tool_timeout_s) as client:
                trajectory = (await run_rollouts([row], serial, client, settings))[0]
        except ToolServerUnavailable as exc:
            raise HTTPException(503, f"production tools: {exc}") from None
        day = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
        write_models(traces_dir / f"production-{day}.jsonl", [trajectory], append=True)
        return {
            "id": row_id,
            "answer": trajectory.output_text,
            "tool_calls": trajectory.n_tool_calls,
            "stop_reason": trajectory.stop_reason,
            "turns": [t.model_dump() for t in trajectory.turns],
        }

    event = {"type": "object", "required": ["data"],  # one server-sent event: a chunk's JSON, or [DONE]
             "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}}}
    streamed = {200: {"content": {"text/event-stream": {"itemSchema": event}},
                      "description": "The completion, or with stream: true its chunks as server-sent events."}}

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses={**posted, **streamed})
    async def chat(req: ChatRequest) -> Any:
        turn_settings = settings.model_copy(update={
            k: v for k, v in (("temperature", req.temperature), ("max_new_tokens", req.max_tokens)) if v is not None
        })
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        last_user = next((m.content for m in reversed(req.messages) if m.role == "user"), "") or ""
        row = Row(id=f"chat-{uuid.uuid4().hex[:12]}", prompt=last_user.strip() or "(none)", reference_answer="-")
        tools = [spec.model_dump(exclude_none=True) for spec in req.tools]
        episode = Episode(row=row, sample_index=0, messages=messages, tools=tools)
        try:
            reply = (await serial.generate([episode], turn_settings))[0]
        except (TemplateError, ValueError, TypeError, KeyError) as exc:
            # The model's chat template refused this conversation (a role order it does not know).
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise HTTPException(400, f"the model's chat template cannot render these messages: {first}") from None
        body = _chat_response(policy.name, reply, episode)
        if req.stream:
            return StreamingResponse(_chunks(body), media_type="text/event-stream")
        return body

    return app


def _chunks(body: dict[str, Any]) -> Any:
    """A finished chat completion as the server-sent events an OpenAI client reads from ``stream: true``:
    the role, the text, each tool call (id, name and arguments at its index), the finish reason, [DONE].
    The turn is generated whole before the first event (the agent loop needs it whole to parse calls)."""
    choice = body["choices"][0]
    message = choice["message"]
    head = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": body["model"]}

    def event(delta: dict[str, Any], finish: str | None = None) -> str:
        chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(chunk)}\n\n"

    yield event({"role": "assistant", "content": ""})
    if message["content"]:
        yield event({"content": message["content"]})
    for index, call in enumerate(message["tool_calls"] or []):
        yield event({"tool_calls": [{"index": index, **call}]})
    yield event({}, choice["finish_reason"])
    yield "data: [DONE]\n\n"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (a name other than localhost counts as not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None, allow_no_key: bool) -> str | None:
    """Refuse to serve without a key beyond loopback; the warning to print when ``--allow-no-key`` does."""
    if api_key is not None or is_loopback(host):
        return None
    if not allow_no_key:
        raise UserError(
            f"--host {host}: refusing to serve without a key beyond loopback; pass --api-key-env VAR "
            "(a variable holding the key clients send), or --allow-no-key to serve it open anyway"
        )
    return (f"serving on {host} WITHOUT a key (--allow-no-key): anyone who can reach it can run the model "
            "and, through it, the production tools")


def _chat_response(model: str, reply: Any, episode: Any) -> dict[str, Any]:
    """An OpenAI chat-completions response body for one assistant turn."""
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
                                               "must send as a bearer token (required beyond loopback)."),
        allow_no_key: bool = typer.Option(False, "--allow-no-key", help="Serve without a key on a non-loopback "
                                          "--host anyway (with a warning)."),
        temperature: float = typer.Option(0.0, help="Sampling temperature in production (0 = greedy)."),
        max_tool_calls: int = typer.Option(12),
        max_trajectory_tokens: int = typer.Option(4096),
        max_new_tokens: int = typer.Option(256),
        tool_timeout: float = typer.Option(30.0, help="Seconds a tool call may take before the model is told "
                                           "it timed out."),
        engine: str = typer.Option("local", help="local (transformers, one request at a time) or vllm (a vLLM "
                                   "server batches concurrent requests; --model may be a merged model or a LoRA "
                                   "adapter on its base)."),
        vllm_url: str | None = typer.Option(None, help="With --engine vllm: a running server of the model "
                                            "(default: start one from .venv-vllm)."),
    ) -> None:
        """→ production: serve the tuned model with production tools; trace every call separately."""
        import uvicorn

        from .agent.policy import open_policy  # torch

        key = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise UserError(f"--api-key-env {api_key_env}: that environment variable is empty")
        warning = check_exposure(host, key, allow_no_key)
        if not tool_timeout > 0:
            raise UserError(f"--tool-timeout must be positive, got {tool_timeout:g}")
        token = read_token(tools_token_file)
        with open_policy(str(model), engine=engine, vllm_url=vllm_url) as policy:
            settings = fit_context(RolloutSettings(temperature=temperature, max_tool_calls=max_tool_calls,
                                                   max_trajectory_tokens=max_trajectory_tokens,
                                                   max_new_tokens=max_new_tokens, tool_timeout_s=tool_timeout), policy)
            if warning:
                typer.echo(f"warning: {warning}", err=True)
            app = create_app(policy, tools_url, token, settings, traces, key, concurrent=engine == "vllm")
            uvicorn.run(app, host=host, port=port)
