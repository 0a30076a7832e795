"""Load a grader from its JSON/YAML declaration (``load_grader``) and build the running example's
default (``default_grader``).

``load_grader`` takes a dict, a path to a ``.json`` / ``.yaml`` file, JSON text, or a built-in name
(``numeric``, ``tool_use``, ``default``). Every problem is one ``UserError`` line naming the file
and the field: ``grader.yaml: graders.answer.range: range must be two numbers ...``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from ..errors import UserError
from ..files import read_text
from ..jsonl import describe_json_error, json_type
from .base import Grader
from .numeric import NumericGrader
from .specs import GRADER_TYPES, GraderSpec, MultiSpec
from .multi import MultiGrader
from .python_grader import PythonGrader
from .score_model import ScoreModelGrader
from .similarity import TextSimilarityGrader
from .string_check import StringCheckGrader
from .tool_use import ToolUseGrader

_ADAPTER: TypeAdapter[Any] = TypeAdapter(GraderSpec)
BUILTIN = {
    "numeric": {"type": "numeric", "name": "numeric"},
    "default": {"type": "numeric", "name": "numeric"},
    "tool_use": {"type": "tool_use", "name": "tool_use"},
}


def default_grader() -> Grader:
    """The running example's grader: the answer's number against the reference, with the row's
    ``expected.tolerance_rel`` and the tutorial's rubric (1 / 0.5 for rounding / 0); a name as
    reference (comparison questions) must be named by the answer, alone."""
    return NumericGrader(name="numeric")


def _describe(err: ValidationError) -> list[str]:
    out = []
    for item in err.errors():
        # Drop the union tags pydantic puts in the path ("score_model.range" → "range").
        loc = [str(p) for p in item["loc"] if str(p) not in GRADER_TYPES]
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "union_tag_invalid":
            msg = f"unknown grader type {item['input'].get('type')!r}; expected one of {', '.join(GRADER_TYPES)}"
            loc = [*loc, "type"]
        elif item["type"] == "union_tag_not_found":
            msg = f"missing 'type'; expected one of {', '.join(GRADER_TYPES)}"
            loc = [*loc, "type"]
        elif item["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(f"{'.'.join(loc) or '(grader)'}: {msg}")
    return out


def parse_spec(data: Any, source: str = "grader") -> Any:
    """Validate a grader declaration; one UserError listing every problem, prefixed by ``source``."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: a grader must be an object with a 'type', got {json_type(data)}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise UserError("\n".join(f"{source}: {line}" for line in _describe(exc))) from None


def _read_file(path: Path) -> Any:
    if not path.exists():
        raise UserError(f"{path}: no such grader file")
    text = read_text(path, "a grader file (JSON or YAML)")
    if not text.strip():
        raise UserError(f"{path}: empty; expected a grader, an object with a 'type'")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: {describe_json_error(exc)}") from None
    try:
        return yaml.safe_load(text)  # YAML is a superset of JSON: any other suffix reads either
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: malformed YAML ({getattr(exc, 'problem', None) or exc})") from None


def build(spec: Any, name: str | None = None) -> Grader:
    """Turn a validated spec into a grader (heavy dependencies are imported only when used)."""
    name = spec.name or name or spec.type
    if spec.type == "numeric":
        return NumericGrader(name, spec.tolerance_rel, spec.fallback, spec.use_question)
    if spec.type == "tool_use":
        return ToolUseGrader(name, spec.max_tool_calls, spec.must_use_tools, spec.check_evidence, spec.read_tool,
                             spec.price_errors)
    if spec.type == "string_check":
        return StringCheckGrader(name, spec.input, spec.reference, spec.operation)
    if spec.type == "text_similarity":
        return TextSimilarityGrader(name, spec.input, spec.reference, spec.evaluation_metric, spec.pass_threshold)
    if spec.type == "python":
        return PythonGrader(name, spec.source, spec.timeout_s)
    if spec.type == "score_model":
        return ScoreModelGrader.from_spec(spec, name)
    if isinstance(spec, MultiSpec):
        subs = {key: build(sub, key) for key, sub in spec.graders.items()}
        return MultiGrader(name, subs, spec.calculate_output)
    raise UserError(f"grader type {spec.type!r} is not supported")  # pragma: no cover - specs guard it


def load_grader(spec: dict[str, Any] | str | Path) -> Grader:
    """A grader from a dict, a JSON/YAML file, JSON text or a built-in name (``numeric``, ``default``,
    ``tool_use``)."""
    source = "grader"
    if isinstance(spec, str) and spec.strip() in BUILTIN:
        data: Any = BUILTIN[spec.strip()]
    elif isinstance(spec, str) and spec.lstrip().startswith("{"):
        try:
            data = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise UserError(f"grader JSON: malformed ({exc.msg} at column {exc.colno})") from None
    elif isinstance(spec, (str, Path)):
        source = str(spec)
        data = _read_file(Path(spec))
    else:
        data = spec
    try:
        return build(parse_spec(data, source))
    except UserError as exc:
        message = str(exc)
        raise UserError(message if message.startswith(source) else f"{source}: {message}") from None


__all__ = ["BUILTIN", "build", "default_grader", "load_grader", "parse_spec"]
