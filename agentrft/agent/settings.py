"""Sampling and budget settings of a rollout, shared by every policy."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RolloutSettings(BaseModel):
    """How a rollout samples and when it stops."""

    model_config = ConfigDict(extra="forbid")

    max_tool_calls: int = Field(default=12, ge=0)
    """Tool calls a trajectory may execute; a reply asking for more ends it (stop_reason max_tool_calls)."""
    max_trajectory_tokens: int = Field(default=4096, ge=1)
    """Prompt + generations + tool results; the loop stops (stop_reason max_tokens) when it is spent."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Tokens the model may generate in one turn; a turn cut by this limit ends the trajectory."""
    temperature: float = Field(default=1.0, ge=0.0)
    """Sampling temperature; 0 means greedy decoding."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    """0 turns top-k off (transformers would otherwise apply its default of 50)."""
    seed: int | None = None
    """Same rows + same seed + same policy give the same trajectories; None samples freshly."""
    system_prompt: str | None = None
    """The system message every rollout opens with; None sends none (the chat template's default applies)."""
    tool_timeout_s: float = Field(default=30.0, gt=0.0)
    """Seconds one tool call may take; a call past it comes back to the model as a timed-out error
    and the rollout goes on (the tool client is opened with it)."""


def fit_context(settings: RolloutSettings, policy: Any) -> RolloutSettings:
    """``settings`` with the trajectory budget capped at a local model's position table: a trajectory longer
    than it is outside anything the model can attend to. Endpoints and vLLM cut turns at their own context."""
    config = getattr(getattr(policy, "model", None), "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and 0 < limit < settings.max_trajectory_tokens:
        return settings.model_copy(update={"max_trajectory_tokens": limit})
    return settings


__all__ = ["RolloutSettings", "fit_context"]
