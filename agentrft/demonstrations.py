"""``agentrft sft``: the warm start ("fix the prior first") on demonstrations from any source.

When the prior check finds too few rows in the signal band, the model first imitates conversations
that went well. A line of a demonstrations file is one of:

- a chat conversation in the fine-tuning format of OpenAI-compatible services, ``{"messages": [...],
  "tools": [...]}`` (``tools`` optional; an assistant message with ``"weight": 0`` is context, not a
  target);
- a ``Trajectory`` as ``prior-check --traces`` and ``eval`` write them (the row it answered must be in
  ``--rows``);
- an ``EvalRecord``: the trajectory it points to in its traces file, kept only when its reward reaches
  ``--min-reward`` (with ``agentrft eval --samples K`` on training rows this is rejection sampling: the
  model's own successful rollouts become its demonstrations).

A trajectory carries no tool specs: they come from the row it answered (``--rows``). What is left out
on purpose — a record below the reward line or without a grade, a rollout that never answered or
holds a call the model could not write — is counted by reason and printed, never dropped silently;
a line that is not one of the three kinds is an error naming file and line.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console

from .errors import UserError, where
from .evaluate.records import TraceStore, load_rows
from .jsonl import describe_validation_error, iter_json_lines, json_type
from .schema import EvalRecord, MessageTurn, Row, ToolCallTurn, ToolResultTurn, Trajectory

console = Console(highlight=False, soft_wrap=True)


@dataclass
class Demonstration:
    """One conversation to imitate: OpenAI messages and the tool specs it was made with."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    source: str
    """``file:line`` it came from."""


@dataclass
class Demonstrations:
    kept: list[Demonstration] = field(default_factory=list)
    left_out: Counter[str] = field(default_factory=Counter)
    """Reason → how many lines were left out for it."""


def trajectory_messages(trajectory: Trajectory) -> list[dict[str, Any]] | str:
    """The trajectory as the messages the agent loop sent, or why it cannot be a demonstration."""
    if trajectory.stop_reason != "answer" or not trajectory.output_text:
        return "the rollout never answered"
    messages: list[dict[str, Any]] = []
    reply: dict[str, Any] | None = None  # the model's current reply: its text and calls are one message
    for turn in trajectory.turns:
        if isinstance(turn, MessageTurn):
            messages.append({"role": turn.role, "content": turn.content})
            reply = messages[-1] if turn.role == "assistant" else None
        elif isinstance(turn, ToolCallTurn):
            if turn.error is not None:
                return "a tool call the model could not write"
            if reply is None:
                reply = {"role": "assistant", "content": ""}
                messages.append(reply)
            reply.setdefault("tool_calls", []).append({
                "id": turn.call_id, "type": "function",
                "function": {"name": turn.name, "arguments": dict(turn.args)},
            })
        elif isinstance(turn, ToolResultTurn):
            messages.append({"role": "tool", "tool_call_id": turn.call_id, "name": turn.name, "content": turn.output})
            reply = None
    return messages


def _chat_line(value: dict[str, Any], place: str) -> Demonstration:
    messages, tools = value.get("messages"), value.get("tools", [])
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise UserError(f"{place}: messages: expected a non-empty list of message objects")
    if not isinstance(tools, list):
        raise UserError(f"{place}: tools: expected a list of tool specs, got {json_type(tools)}")
    for index, message in enumerate(messages):
        if message.get("role") not in ("system", "user", "assistant", "tool"):
            raise UserError(f"{place}: messages.{index}.role: expected system, user, assistant or tool")
        if message.get("weight", 1) not in (0, 1):
            raise UserError(f"{place}: messages.{index}.weight: expected 0 or 1")
    if not any(m["role"] == "assistant" and m.get("weight", 1) for m in messages):
        raise UserError(f"{place}: messages: no assistant message to learn from")
    return Demonstration(messages=messages, tools=tools, source=place)


def read_demonstrations(paths: list[Path], rows: dict[str, Row] | None = None,
                        min_reward: float | None = None) -> Demonstrations:
    """Every demonstration in ``paths`` (see the module docstring); raises UserError on a malformed line."""
    found = Demonstrations()
    traces = TraceStore()
    for path in paths:
        for number, value, error in iter_json_lines(path, "a demonstrations file"):
            place = where(path, number)
            if error is not None:
                raise UserError(f"{place}: {error}")
            if not isinstance(value, dict):
                raise UserError(f"{place}: expected an object, got {json_type(value)}")
            if "messages" in value:
                found.kept.append(_chat_line(value, place))
                continue
            kind = EvalRecord if "trace_file" in value else Trajectory if "turns" in value else None
            if kind is None:
                raise UserError(f"{place}: not a demonstration: expected a chat conversation (messages), "
                                "a trajectory (turns) or an eval record (trace_file)")
            try:
                item = kind.model_validate(value)
            except ValidationError as exc:
                raise UserError(f"{place}: {describe_validation_error(exc)[0]}") from None
            if isinstance(item, EvalRecord):
                if item.reward is None:
                    found.left_out["no grade"] += 1
                    continue
                if min_reward is not None and item.reward < min_reward:
                    found.left_out[f"reward below {min_reward:g}"] += 1
                    continue
                loaded = traces.load(path, item)
                if isinstance(loaded, str):
                    raise UserError(f"{place}: its trace: {loaded}")
                item = loaded
            found.kept += _from_trajectory(item, place, rows, found.left_out)
    return found


def _from_trajectory(trajectory: Trajectory, place: str, rows: dict[str, Row] | None,
                     left_out: Counter[str]) -> list[Demonstration]:
    if rows is None:
        raise UserError(f"{place}: a trajectory needs its row's tool specs: pass the rows with --rows")
    row = rows.get(trajectory.row_id)
    if row is None:
        raise UserError(f"{place}: row {trajectory.row_id!r} is not in --rows")
    if not row.tools:
        raise UserError(f"{place}: row {row.id!r} lists no tools; its trajectory cannot be rendered as it ran")
    messages = trajectory_messages(trajectory)
    if isinstance(messages, str):
        left_out[messages] += 1
        return []
    tools = [spec.model_dump(exclude_none=True) for spec in row.tools]
    return [Demonstration(messages=messages, tools=tools, source=place)]


def _targets(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages without the ``weight`` key the chat template does not know."""
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


def sft_command(
    model: str = typer.Option(..., "--model", help="Model folder or hub id to warm-start."),
    demos: list[Path] = typer.Option(..., "--demos", help="Demonstrations: chat JSONL, trajectories or eval records "
                                                          "(repeat for several files)."),
    out: Path = typer.Option(..., "--out", help="Folder for the warm-started model."),
    rows: Path | None = typer.Option(None, "--rows", help="Rows the trajectories answered (their tool specs)."),
    min_reward: float | None = typer.Option(None, "--min-reward", min=0.0, max=1.0,
                                            help="Keep eval records whose reward is at least this."),
    epochs: int = typer.Option(2, min=1, help="Passes over the demonstrations."),
    learning_rate: float = typer.Option(1e-5, "--lr", min=0.0, help="Peak learning rate (cosine schedule)."),
    batch_size: int = typer.Option(8, min=1, help="Conversations per optimizer step."),
    seed: int = typer.Option(0, help="Seed of the shuffle and of training."),
    max_seconds: float | None = typer.Option(None, "--max-seconds", min=1.0, help="Stop training after this long."),
) -> None:
    """Warm start ("fix the prior first"): SFT on demonstrations, loss on the assistant turns only."""
    found = read_demonstrations(demos, load_rows(rows) if rows else None, min_reward)
    left = ", ".join(f"{n} {reason}" for reason, n in sorted(found.left_out.items()))
    console.print(f"Demonstrations: {len(found.kept)} kept" + (f"; left out: {left}" if left else ""))
    if not found.kept:
        raise UserError("no demonstrations left to train on")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: not empty; choose a new --out")
    from transformers import AutoTokenizer

    from .sft import encode_example, train_on_examples, training_template  # torch, TRL

    tokenizer = AutoTokenizer.from_pretrained(model)
    template = training_template(tokenizer)
    encoded = []
    for demo in found.kept:
        example = encode_example(tokenizer, _targets(demo.messages), demo.tools, template=template)
        example["assistant_masks"] = _weighted(example["assistant_masks"], demo)
        if not any(example["assistant_masks"]):
            raise UserError(f"{demo.source}: the chat template marks no assistant tokens to learn from")
        encoded.append(example)
    rng = random.Random(seed)
    examples = [e for _ in range(epochs) for e in rng.sample(encoded, len(encoded))]
    console.print(f"Training on {len(encoded)} conversations × {epochs} epochs ...")
    _, loss = train_on_examples(Path(model), examples, out, learning_rate=learning_rate, batch_size=batch_size,
                                seed=seed, max_seconds=max_seconds)
    console.print(f"Saved the warm-started model to {out}" + (f" (final loss {loss:.3f})" if loss is not None else ""))


def _weighted(mask: list[int], demo: Demonstration) -> list[int]:
    """The assistant mask with the spans of ``weight: 0`` assistant messages cleared (nth span ↔ nth message)."""
    from .sft import mask_spans  # torch, TRL

    weights = [m.get("weight", 1) for m in demo.messages if m["role"] == "assistant"]
    mask = list(mask)
    if all(weights):
        return mask
    spans = mask_spans(mask)
    if len(spans) != len(weights):
        raise UserError(f"{demo.source}: weight: the chat template's rendering has {len(spans)} assistant spans "
                        f"for {len(weights)} assistant messages, so weights cannot be placed")
    for (start, end), weight in zip(spans, weights):
        if not weight:
            mask[start:end] = [0] * (end - start)
    return mask


def register(app: typer.Typer) -> None:
    app.command("sft")(sft_command)


__all__ = ["Demonstration", "Demonstrations", "read_demonstrations", "sft_command", "trajectory_messages"]
