"""The score_model grader: a model as judge, over any OpenAI-compatible endpoint.

The declaration is OpenAI's ``score_model`` object (``model``, ``input`` messages with
``{{item.*}}`` / ``{{sample.*}}`` templates, ``range``, ``pass_threshold``, ``sampling_params``)
plus where to send it: ``base_url`` (else ``$OPENAI_BASE_URL``, else OpenAI) and ``api_key_env``
(default ``OPENAI_API_KEY``; a local endpoint without a key gets a placeholder). Calls go through
the official ``openai`` client with its retries and a timeout; temperature defaults to 0.

The reply's score is read from a bare number, a JSON object (``score`` / ``result`` / ``grade``),
a ``Score: x`` line, or the reply's only number; clamped to ``range`` (the reason says so) and
normalised to [0, 1]. A failed call or an unreadable reply is "no grade" with the reason.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from typing import Any

from ..schema import Grade, Row, Trajectory
from .base import item_view, render, sample_view
from .specs import Message, SamplingParams, ScoreModelSpec

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_LABELLED = re.compile(
    rf"\b(?:score|result|grade|rating)\b(?:\s*(?:is|of|[:=]))?\s*\**\s*({_NUMBER})(?![\w.])", re.IGNORECASE
)


def parse_score(reply: str) -> float | None:
    """The score in a judge's reply, or None when there is no single readable one."""
    text = reply.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        value = next((value[k] for k in ("score", "result", "grade") if k in value), None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    labelled = _LABELLED.search(text)
    if labelled:
        return float(labelled.group(1))
    numbers = re.findall(rf"(?<![\w.]){_NUMBER}(?![\w.])", text)
    return float(numbers[0]) if len(numbers) == 1 else None


class ScoreModelGrader:
    def __init__(
        self,
        name: str,
        model: str,
        messages: list[Message],
        range: tuple[float, float] = (0.0, 1.0),
        pass_threshold: float | None = None,
        sampling: SamplingParams | None = None,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 30.0,
        retries: int = 2,
    ) -> None:
        self.name = name
        self.model = model
        self.messages = messages
        self.low, self.high = range
        self.pass_threshold = pass_threshold
        self.sampling = sampling or SamplingParams()
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.retries = retries
        self._client: Any = None
        self._client_lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: ScoreModelSpec, name: str) -> ScoreModelGrader:
        return cls(
            name, spec.model, spec.input, (spec.range[0], spec.range[1]), spec.pass_threshold,
            spec.sampling_params, spec.base_url, spec.api_key_env, spec.timeout_s, spec.retries,
        )  # fmt: skip

    def _get_client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                from openai import OpenAI  # ~0.2 s to import: only when a judge grades

                key = os.environ.get(self.api_key_env)
                if not key and self.base_url is None:
                    raise RuntimeError(f"no API key: set {self.api_key_env} or give the grader a base_url")
                self._client = OpenAI(
                    base_url=self.base_url,
                    api_key=key or "not-needed",
                    timeout=self.timeout_s,
                    max_retries=self.retries,
                )
            return self._client

    def _request(self, row: Row, trajectory: Trajectory) -> dict[str, Any]:
        item, sample = item_view(row), sample_view(trajectory)
        messages = [{"role": m.role, "content": render(m.content, item, sample)} for m in self.messages]
        params: dict[str, Any] = {"model": self.model, "messages": messages}
        s = self.sampling
        extras = {"temperature": s.temperature, "top_p": s.top_p, "seed": s.seed,
                  "max_completion_tokens": s.max_completions_tokens, "reasoning_effort": s.reasoning_effort}  # fmt: skip
        params.update({k: v for k, v in extras.items() if v is not None})
        return params

    def grade(self, row: Row, trajectory: Trajectory) -> Grade:
        try:
            client = self._get_client()
            response = client.chat.completions.create(**self._request(row, trajectory))
            reply = response.choices[0].message.content or ""
        except Exception as exc:  # any failure of the call is "no grade", never a 0
            message = str(exc).splitlines()[0][:200] if str(exc) else ""
            return Grade(reward=None, grader=self.name, reason=f"judge call failed: {type(exc).__name__}: {message}")
        score = parse_score(reply)
        if score is None:
            return Grade(reward=None, grader=self.name, reason=f"judge reply has no score: {reply[:120]!r}")
        clamped = min(self.high, max(self.low, score))
        note = "" if clamped == score else f" (out of range [{self.low:g}, {self.high:g}], clamped)"
        reward = (clamped - self.low) / (self.high - self.low)
        verdict = ""
        if self.pass_threshold is not None:
            verdict = " pass" if clamped >= self.pass_threshold else " fail"
        return Grade(reward=reward, grader=self.name, reason=f"judge scored {score:g}{note}{verdict}")


__all__ = ["ScoreModelGrader", "parse_score"]
