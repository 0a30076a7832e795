"""agentrft: agent reinforcement fine-tuning, from a folder of prompts to a tuned tool-using agent."""

from .errors import UserError
from .schema import (
    SCHEMA_VERSION,
    EvalRecord,
    Expected,
    Grade,
    MessageTurn,
    PriorResult,
    Row,
    ToolCallTurn,
    ToolResultTurn,
    ToolSpec,
    Trajectory,
)

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "EvalRecord",
    "Expected",
    "Grade",
    "MessageTurn",
    "PriorResult",
    "Row",
    "ToolCallTurn",
    "ToolResultTurn",
    "ToolSpec",
    "Trajectory",
    "UserError",
    "__version__",
]
