"""The data that flows between the nine steps — every object agentrft writes to disk.

Row (a dataset line) → Trajectory (one rollout) → Grade (a reward in [0, 1]) → EvalRecord (one row's
result in an evaluation run); and the files a training run writes (MetricsRow, TraceRecord,
BestCheckpoint). Each model carries ``schema_version`` so files written today stay readable when a
field is added; readers accept a file without it (the tutorial's rows carry none).

Field names follow the tutorial where it names them (``id``, ``reference_answer``, ``expected``,
``tools``, ``metadata``; trace turns with ``type``/``name``/``args``/``output``/``content``) so that
the tutorial's snippets run against our files unchanged.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1


class _Model(BaseModel):
    """Base for on-disk models: unknown keys are refused so a typo is an error, not a silent drop."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------------------------------------
# Step 2: dataset rows
# ---------------------------------------------------------------------------------------------


class Expected(_Model):
    """What the grader and the tool-use checks look for in a rollout of this row."""

    tolerance_rel: float | None = Field(
        default=None, ge=0, description="Relative tolerance for numeric answers (0.02 = ±2%)."
    )
    evidence_path: str | None = Field(
        default=None, description="Corpus path the answer should be read from."
    )
    must_use_tools: list[str] = Field(
        default_factory=list, description="Tools a good trajectory calls at least once."
    )


class FunctionSpec(BaseModel):
    """The ``function`` half of an OpenAI tool spec: a name and a JSON schema for its arguments."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    @field_validator("parameters")
    @classmethod
    def _parameters_are_an_object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError('parameters must be a JSON schema with "type": "object"')
        props = value.get("properties", {})
        if not isinstance(props, dict):
            raise ValueError("parameters.properties must be an object")
        required = value.get("required", [])
        if not isinstance(required, list) or any(name not in props for name in required):
            raise ValueError("parameters.required must list names that are in properties")
        return value


class ToolSpec(BaseModel):
    """An OpenAI function tool spec, as a row's ``tools`` list and ``GET /tools`` carry it."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionSpec


class RowMetadata(BaseModel):
    """Slicing keys for evaluation; free extra keys (source, company, period, …) are kept."""

    model_config = ConfigDict(extra="allow")

    task_type: str = "unknown"
    difficulty: str = "unknown"


class Row(_Model):
    """One training or evaluation example: a prompt, the answer to grade against, and its tools."""

    schema_version: int = SCHEMA_VERSION
    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    reference_answer: str
    expected: Expected = Field(default_factory=Expected)
    tools: list[ToolSpec] = Field(default_factory=list)
    metadata: RowMetadata = Field(default_factory=RowMetadata)

    @field_validator("reference_answer")
    @classmethod
    def _reference_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("reference_answer is empty")
        return value

    def tool_names(self) -> list[str]:
        return [spec.function.name for spec in self.tools]

    @property
    def slice(self) -> str:
        """The row's slice: its task type and difficulty (``numerical_qa/easy``)."""
        return f"{self.metadata.task_type}/{self.metadata.difficulty}"


# ---------------------------------------------------------------------------------------------
# Rollouts: trajectories
# ---------------------------------------------------------------------------------------------


class MessageTurn(_Model):
    """Text from the system, the user or the model (the model's final answer is the last one)."""

    type: Literal["message"] = "message"
    role: Literal["system", "user", "assistant"]
    content: str


class ToolCallTurn(_Model):
    """A tool call the model made. ``error`` is set when the call could not be parsed or routed."""

    type: Literal["tool_call"] = "tool_call"
    call_id: str
    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    raw: str | None = Field(default=None, description="The model's text for a malformed call.")
    error: str | None = None


class ToolResultTurn(_Model):
    """What a tool returned (or the structured error shown to the model instead)."""

    type: Literal["tool_result"] = "tool_result"
    call_id: str
    name: str
    output: str
    is_error: bool = False
    latency_ms: float = 0.0


Turn = Annotated[MessageTurn | ToolCallTurn | ToolResultTurn, Field(discriminator="type")]

StopReason = Literal["answer", "max_tool_calls", "max_tokens", "error"]


class Trajectory(_Model):
    """One rollout of one row: readable turns, and token ids + loss mask when a local model ran it.

    ``loss_mask[i]`` is 1 where ``token_ids[i]`` was generated by the policy and 0 on prompt,
    template and tool-result tokens: tool output is the environment's, not the policy's, so it
    must carry no gradient.
    """

    schema_version: int = SCHEMA_VERSION
    row_id: str
    sample_index: int = 0
    model: str = ""
    turns: list[Turn] = Field(default_factory=list)
    stop_reason: StopReason = "answer"
    token_ids: list[int] | None = None
    loss_mask: list[int] | None = None
    prompt_length: int | None = Field(default=None, description="Tokens before the first generation.")
    logprobs: list[float] | None = Field(
        default=None, description="Sampling log-probs of the tokens where loss_mask is 1."
    )
    seed: int | None = None
    elapsed_s: float = 0.0

    @property
    def tool_calls(self) -> list[ToolCallTurn]:
        return [t for t in self.turns if isinstance(t, ToolCallTurn)]

    @property
    def n_tool_calls(self) -> int:
        return len(self.tool_calls)

    @property
    def output_text(self) -> str:
        """The final answer: the last assistant message, or '' when the rollout never answered."""
        for turn in reversed(self.turns):
            if isinstance(turn, MessageTurn) and turn.role == "assistant":
                return turn.content
        return ""


# ---------------------------------------------------------------------------------------------
# Step 4: grades
# ---------------------------------------------------------------------------------------------


class Grade(_Model):
    """A grader's verdict. ``reward`` is None ("no grade") when the grader itself failed — a
    judge that timed out must not look like a wrong answer, or training learns from noise."""

    reward: float | None = Field(default=None, ge=0.0, le=1.0)
    grader: str
    reason: str = ""
    sub_rewards: dict[str, float | None] = Field(default_factory=dict)

    @property
    def graded(self) -> bool:
        return self.reward is not None


# ---------------------------------------------------------------------------------------------
# Steps 1, 7, 8: evaluation records
# ---------------------------------------------------------------------------------------------


class EvalRecord(_Model):
    """One row's (or one sample's) result in an evaluation run; the trace lives in ``trace_file``."""

    schema_version: int = SCHEMA_VERSION
    id: str = Field(description="The row id.")
    sample_index: int = 0
    model: str = ""
    reward: float | None = Field(default=None, ge=0.0, le=1.0)
    reason: str = ""
    tool_calls: int = 0
    tool_errors: int = Field(default=0, description="Tool results that were errors (server down, timeout, bad call).")
    answer: str = ""
    stop_reason: StopReason = "answer"
    task_type: str = "unknown"
    difficulty: str = "unknown"
    trace_file: str | None = Field(default=None, description="JSONL of Trajectory, relative to this file.")
    trace_line: int | None = Field(default=None, description="1-based line of the trajectory in trace_file.")


class PriorResult(_Model):
    """Step 1: one row's success rate over N rollouts of the base model."""

    schema_version: int = SCHEMA_VERSION
    id: str
    rollouts: int
    successes: int
    rate: float
    bucket: Literal["never", "sometimes", "always"]
    mean_reward: float
    mean_tool_calls: float


# ---------------------------------------------------------------------------------------------
# Step 6: the files a training run writes (metrics.jsonl, traces/step-*.jsonl, checkpoints/best/best.json)
# ---------------------------------------------------------------------------------------------


class _RunFile(BaseModel):
    """Base for files a run writes itself: unknown keys are ignored, so a run folder written by an
    older or newer agentrft still reads (no user types these files, so there is no typo to catch)."""

    model_config = ConfigDict(extra="ignore")


class MetricsRow(_RunFile):
    """One line of ``metrics.jsonl``: the state of the run after optimizer step ``step``.

    Every measure is None where it was not measured at this step (``val_reward`` is measured every
    ``val_every`` steps); ``no_grade`` counts trajectories the grader failed on, which are left out of
    ``train_reward`` rather than scored 0.
    """

    schema_version: int = SCHEMA_VERSION
    step: int
    epoch: float | None = None
    time: float = Field(default_factory=time.time, description="Unix time the row was written.")
    val_reward: float | None = Field(default=None, description="Greedy mean reward on the val subset.")
    val_tool_calls: float | None = None
    tool_calls: float | None = Field(default=None, description="Mean tool calls per training trajectory.")
    kl_to_ref: float | None = None
    loss: float | None = None
    train_reward: float | None = Field(default=None, validation_alias=AliasChoices("train_reward", "reward"),
                                       description="Mean reward of the step's training rollouts (older runs call it reward).")
    reward_std: float | None = None
    zero_std_groups: float | None = Field(default=None, description="Share of groups with equal rewards.")
    train_reward_by_slice: dict[str, float] | None = Field(
        default=None, description="Mean reward of the step's training rollouts per slice (task_type/difficulty)."
    )
    grad_norm: float | None = None
    learning_rate: float | None = None
    step_time_s: float | None = None
    completion_tokens: float | None = Field(default=None, description="Mean policy tokens per trajectory.")
    no_grade: float | None = Field(default=None, description="Share of trajectories the grader could not grade.")
    tool_error_rate: float | None = Field(
        default=None, description="Share of training tool calls whose result was an error (server down, timeout, bad call)."
    )
    weight_sync_s: float | None = Field(
        default=None, description="Seconds pushing the new weights to the vLLM servers before this step's rollouts."
    )
    abort: str | None = Field(default=None, description="Why the run stopped here, when an abort rule fired.")


class TraceRecord(_RunFile):
    """One sampled training trajectory with its grade, as written to ``RUN/traces/step-XXXX.jsonl``.
    ``reward`` is None ("no grade") when the grader failed on it."""

    schema_version: int = SCHEMA_VERSION
    step: int
    reward: float | None
    reason: str = ""
    trajectory: Trajectory


class BestCheckpoint(_RunFile):
    """``RUN/checkpoints/best/best.json``: the step whose greedy val reward is the best so far, and that
    reward; the model saved beside it is that step's."""

    schema_version: int = SCHEMA_VERSION
    step: int
    val_reward: float


__all__ = [
    "SCHEMA_VERSION",
    "BestCheckpoint",
    "EvalRecord",
    "Expected",
    "FunctionSpec",
    "Grade",
    "MessageTurn",
    "MetricsRow",
    "PriorResult",
    "Row",
    "RowMetadata",
    "StopReason",
    "ToolCallTurn",
    "ToolResultTurn",
    "ToolSpec",
    "TraceRecord",
    "Trajectory",
    "Turn",
]
