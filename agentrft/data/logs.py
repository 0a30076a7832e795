"""``agentrft data import-logs``: production chat logs → dataset rows.

A log line is a chat-completions record: ``messages`` (system / user / assistant with
``tool_calls`` / tool), optionally ``tools`` (OpenAI specs) and ``metadata``, and some signal of the
right answer. The reference is taken, in order, from:

1. ``reference_answer`` (or ``expected_answer``);
2. ``label`` (a string or number, or an object with ``answer``);
3. ``feedback.correction`` / ``feedback.correct_answer`` — a reviewer's fix of a wrong answer;
4. ``feedback.correct: true`` — a reviewer confirmed the final answer, which becomes the reference.

A log with none of these is reported (``file:line: why``) and left out: a reference guessed from the
model's own unreviewed answer would teach the model its own mistakes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..jsonl import iter_json_lines, json_type
from ..schema import Expected, Row, RowMetadata, ToolSpec
from .validate import normalise_prompt

MAX_CONFIRMED_ANSWER_CHARS = 200


@dataclass
class ImportResult:
    rows: list[Row] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # "file:line: why"


class _Skip(Exception):
    """A log line that cannot become a row; the message says why."""


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(part for part in parts if isinstance(part, str)).strip()
    return ""


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _final_answer(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "assistant" and not message.get("tool_calls"):
            return _text(message.get("content"))
    return ""


def _reference(log: dict[str, Any], messages: list[Any]) -> tuple[str, str]:
    """(reference, where it came from), or _Skip."""
    for key in ("reference_answer", "expected_answer"):
        if (found := _scalar(log.get(key))) is not None:
            return found, key
    label = log.get("label")
    if isinstance(label, dict):
        label = label.get("answer")
    if (found := _scalar(label)) is not None:
        return found, "label"
    feedback = log.get("feedback")
    if isinstance(feedback, dict):
        for key in ("correction", "correct_answer"):
            if (found := _scalar(feedback.get(key))) is not None:
                return found, f"feedback.{key}"
        if feedback.get("correct") is True:
            answer = _final_answer(messages)
            if not answer:
                raise _Skip("feedback marks it correct but the log has no final assistant answer")
            if len(answer) > MAX_CONFIRMED_ANSWER_CHARS:
                raise _Skip(f"confirmed answer is over {MAX_CONFIRMED_ANSWER_CHARS} characters; add a short label")
            return answer, "feedback.correct"
        if feedback.get("correct") is False:
            raise _Skip("feedback marks the answer wrong and gives no correction")
    raise _Skip("no usable reference (reference_answer, label, feedback.correction or feedback.correct: true)")


def _tools(log: dict[str, Any]) -> list[ToolSpec]:
    try:
        return [ToolSpec.model_validate(spec) for spec in log.get("tools") or []]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _Skip(f"invalid tool spec at tools.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def log_to_row(log: Any, row_id: str, source: str) -> Row:
    """One log record as a Row, or _Skip with the reason."""
    if not isinstance(log, dict):
        raise _Skip(f"expected a JSON object, got {json_type(log)}")
    messages = log.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Skip("no 'messages' list")
    users = [_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    prompt = next((u for u in users if u), "")
    if not prompt:
        raise _Skip("no user message with text")
    reference, origin = _reference(log, messages)
    extra = log.get("metadata") if isinstance(log.get("metadata"), dict) else {}
    metadata = {
        "task_type": "unknown",
        "difficulty": "unknown",
        **{k: v for k, v in extra.items() if isinstance(v, (str, int, float, bool))},
        "source": "logs",
        "log_source": source,
        "reference_from": origin,
    }
    if isinstance(log.get("id"), (str, int)):
        metadata["log_id"] = str(log["id"])
    tolerance = log.get("tolerance_rel")
    return Row(
        id=row_id,
        prompt=prompt,
        reference_answer=reference,
        expected=Expected(tolerance_rel=tolerance if isinstance(tolerance, (int, float)) else None),
        tools=_tools(log),
        metadata=RowMetadata.model_validate(metadata),
    )


def import_logs(path: Path, id_prefix: str = "log") -> ImportResult:
    """Convert every usable log line; report the rest. Duplicate prompts keep the first."""
    result = ImportResult()
    first_prompt: dict[str, int] = {}
    for number, value, error in iter_json_lines(path, "a JSONL file of chat logs"):
        if error:
            result.left_out.append(f"{path}:{number}: {error}")
            continue
        try:
            row = log_to_row(value, f"{id_prefix}-{len(result.rows) + 1:04d}", f"{path.name}:{number}")
        except _Skip as why:
            result.left_out.append(f"{path}:{number}: {why}")
            continue
        key = normalise_prompt(row.prompt)
        if key in first_prompt:
            result.left_out.append(f"{path}:{number}: same prompt as line {first_prompt[key]}")
            continue
        first_prompt[key] = number
        result.rows.append(row)
    return result
