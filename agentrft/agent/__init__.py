"""The agent loop: multi-turn tool-using rollouts through a local model or an OpenAI-compatible endpoint.

Heavy imports (torch, transformers) happen when a policy module is imported, not here.
"""

from .episode import Episode, Reply
from .loop import rollout, run_rollouts
from .settings import RolloutSettings

__all__ = ["Episode", "Reply", "RolloutSettings", "rollout", "run_rollouts"]
