"""The state of one rollout while it runs, and what a policy hands back for one turn.

An ``Episode`` is the loop's working copy of a trajectory: the OpenAI-format messages an endpoint is
sent, the readable turns, and (for a local model) the token ids with their loss mask. It becomes a
``Trajectory`` when the rollout ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..schema import Row, StopReason, ToolCallTurn, Trajectory, Turn


@dataclass
class Reply:
    """One assistant turn: its text, the tool calls in it, and how generation ended."""

    content: str
    calls: list[ToolCallTurn] = field(default_factory=list)
    """The tool calls as the model wrote them; one that could not be parsed keeps ``raw`` and ``error``,
    and one with no ``call_id`` yet gets one from the loop."""
    finished: bool = True
    """False when a token limit cut the turn before the model ended it."""
    out_of_budget: bool = False
    """True when nothing was generated because the trajectory token budget is spent."""
    error: bool = False
    """True when the policy could not produce a turn (an endpoint refused the request)."""


@dataclass
class Episode:
    """One rollout in progress. Policies read ``messages``; local policies also keep the token fields."""

    row: Row
    sample_index: int
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    turns: list[Turn] = field(default_factory=list)
    replies: int = 0
    n_tool_calls: int = 0
    n_tokens: int = 0
    """Tokens in the conversation so far, as the policy counts them (the trajectory budget)."""
    token_ids: list[int] | None = None
    loss_mask: list[int] | None = None
    logprobs: list[float] | None = None
    prompt_length: int | None = None
    rendered: int = 0
    """How many of ``messages`` the token ids already cover (a local policy's bookmark)."""
    policy_state: Any = None
    """A policy's own per-rollout state (a local model's KV cache); dropped when the rollout ends."""
    stop_reason: StopReason | None = None
    started: float = 0.0
    elapsed_s: float = 0.0

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    def to_trajectory(self, model: str, seed: int | None) -> Trajectory:
        return Trajectory(
            row_id=self.row.id,
            sample_index=self.sample_index,
            model=model,
            turns=list(self.turns),
            stop_reason=self.stop_reason or "error",
            token_ids=self.token_ids,
            loss_mask=self.loss_mask,
            prompt_length=self.prompt_length,
            logprobs=self.logprobs,
            seed=seed,
            elapsed_s=round(self.elapsed_s, 4),
        )


__all__ = ["Episode", "Reply"]
