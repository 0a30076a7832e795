"""The running example's system prompt and the budgets the embedded tiny model is built for.

The demonstrations the warm start trains on, the agent loop that samples from the tuned model and the
tool server the demo starts must all agree on these numbers: a model that saw 320-character reads in
its demonstrations does not know what to do with an 8,000-character one, and a 1M-parameter model has
a context of ``MAX_POSITIONS`` tokens, far below the tutorial's 4,096-token trajectories. A real model
(Qwen2.5-7B on a GPU) keeps the tutorial's defaults instead; these constants are for the tiny one.
"""

from __future__ import annotations

SYSTEM_PROMPT = (
    "You answer questions about company filings. Search for the filing, read it, "
    "then reply with the figure written as in the filing, with its label when the filing has one "
    "(Operating margin: 13.4%)."
)
"""System prompt of the research agent; the warm-start demonstrations and rollouts share it."""

READ_BUDGET_CHARS = 320
"""Characters a ``read`` returns to the tiny model: a filing's title and highlights fit within it."""

SEARCH_TOP_K = 1
"""Hits the demonstrations ask ``search`` for: three hits would double the length of every sequence."""

MAX_NEW_TOKENS = 64
"""Tokens the tiny model may generate per turn: one tool call or one short answer."""

MAX_TRAJECTORY_TOKENS = 2048
"""Token budget of one tiny-model rollout (prompt, tool results and generations together)."""

MAX_TOOL_CALLS = 6
"""Tool-call budget of one tiny-model rollout; the wandering demonstrations use up to five."""

TEMPERATURE = 0.7
"""Sampling temperature for RL and the prior check: at 1.0 the tiny model's success collapses."""

MAX_POSITIONS = 2048
"""Context length of the tiny model (its rotary position table is sized for this)."""

__all__ = [
    "MAX_NEW_TOKENS",
    "MAX_POSITIONS",
    "MAX_TOOL_CALLS",
    "MAX_TRAJECTORY_TOKENS",
    "READ_BUDGET_CHARS",
    "SEARCH_TOP_K",
    "SYSTEM_PROMPT",
    "TEMPERATURE",
]
