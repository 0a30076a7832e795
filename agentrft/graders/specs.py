"""Grader declarations as they are written in JSON or YAML — the OpenAI RFT grader object shapes
(``string_check``, ``text_similarity``, ``python``, ``score_model``, ``multi``) plus our own
``numeric`` and ``tool_use`` in the same style.

A grader a team used on a managed service loads as is. Unknown keys are refused (a typo in
``pass_threshhold`` should not be silently ignored), except ``image_tag`` and ``id`` which a
managed service adds and which mean nothing here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    image_tag: str | None = Field(default=None, description="Ignored: managed-service runtime image.")
    id: str | None = Field(default=None, description="Ignored: managed-service object id.")


class NumericSpec(_Spec):
    """Our numeric grader: the answer's number against the reference's, rubric in numeric.py."""

    type: Literal["numeric"]
    tolerance_rel: float | None = Field(default=None, ge=0, description="Overrides the row's expected.tolerance_rel.")
    fallback: Literal["text", "none"] = Field(
        default="text", description='Non-numeric reference: "text" = the answer must name it; "none" = no grade.'
    )
    use_question: bool = Field(default=True, description="Read bare integers from the prompt as context.")


class ToolUseSpec(_Spec):
    """Our tool-use checks: must_use_tools called, evidence_path read, tool-call budget kept, calls answered."""

    type: Literal["tool_use"]
    max_tool_calls: int | None = Field(default=None, ge=1, description="Budget; each call over it costs.")
    must_use_tools: list[str] | None = Field(default=None, description="Overrides the row's expected.must_use_tools.")
    check_evidence: bool = Field(default=True, description="Require a read of the row's expected.evidence_path.")
    read_tool: str = Field(default="read", description="The tool whose `path` argument reads a document.")
    price_errors: bool = Field(default=False, description="Score the share of calls answered (a failed call costs).")


class StringCheckSpec(_Spec):
    type: Literal["string_check"]
    input: str = "{{sample.output_text}}"
    reference: str = "{{item.reference_answer}}"
    operation: Literal["eq", "ne", "like", "ilike"]


SimilarityMetric = Literal[
    "fuzzy_match", "bleu", "gleu", "meteor", "cosine",
    "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l",
]  # fmt: skip


class TextSimilaritySpec(_Spec):
    type: Literal["text_similarity"]
    input: str = "{{sample.output_text}}"
    reference: str = "{{item.reference_answer}}"
    evaluation_metric: SimilarityMetric
    pass_threshold: float | None = None


class PythonSpec(_Spec):
    type: Literal["python"]
    source: str = Field(min_length=1, description="Defines grade(sample, item) -> float.")
    timeout_s: float = Field(default=10.0, gt=0, description="Per-grade time limit; past it: no grade.")


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str
    type: Literal["message"] | None = None


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float | None = 0.0
    top_p: float | None = None
    seed: int | None = None
    max_completions_tokens: int | None = Field(default=None, ge=1)
    reasoning_effort: str | None = None


class ScoreModelSpec(_Spec):
    type: Literal["score_model"]
    model: str = Field(min_length=1)
    input: list[Message] = Field(min_length=1)
    range: list[float] = Field(default_factory=lambda: [0.0, 1.0])
    pass_threshold: float | None = None
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint; else $OPENAI_BASE_URL.")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the key.")
    timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=2, ge=0)

    @field_validator("range")
    @classmethod
    def _range_is_increasing(cls, value: list[float]) -> list[float]:
        if len(value) != 2 or not value[0] < value[1]:
            raise ValueError("range must be two numbers [low, high] with low < high")
        return value


class MultiSpec(_Spec):
    type: Literal["multi"]
    graders: dict[str, GraderSpec]
    calculate_output: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _graders_as_mapping(cls, data: Any) -> Any:
        # A list of named graders is accepted too: [{"name": "answer", ...}, ...].
        if isinstance(data, dict) and isinstance(data.get("graders"), list):
            graders = {}
            for i, sub in enumerate(data["graders"]):
                if not isinstance(sub, dict) or not sub.get("name"):
                    raise ValueError(f"graders[{i}] needs a name when graders is a list")
                graders[sub["name"]] = sub
            data = {**data, "graders": graders}
        return data

    @field_validator("graders")
    @classmethod
    def _names_are_identifiers(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("graders must name at least one grader")
        bad = [name for name in value if not name.isidentifier()]
        if bad:
            raise ValueError(f"grader names must be identifiers usable in the formula, got {bad}")
        return value


GraderSpec = Annotated[
    NumericSpec | ToolUseSpec | StringCheckSpec | TextSimilaritySpec | PythonSpec | ScoreModelSpec | MultiSpec,
    Field(discriminator="type"),
]
MultiSpec.model_rebuild()

GRADER_TYPES = ("numeric", "tool_use", "string_check", "text_similarity", "python", "score_model", "multi")

__all__ = [
    "GRADER_TYPES",
    "GraderSpec",
    "Message",
    "MultiSpec",
    "NumericSpec",
    "PythonSpec",
    "SamplingParams",
    "ScoreModelSpec",
    "StringCheckSpec",
    "TextSimilaritySpec",
    "ToolUseSpec",
]
