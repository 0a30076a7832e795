"""The tool-use grader: did the rollout use its tools the way a good one does?

Three checks, each scored in [0, 1] and averaged (only the checks that apply to the row count):

- every tool in ``expected.must_use_tools`` was called at least once and answered: a call that
  could not be parsed or routed, or whose result was an error (a path that does not exist, a bad
  argument), does not count as using the tool;
- the document in ``expected.evidence_path`` was read: a ``read`` call whose ``path`` argument is
  that path (leading ``./`` or ``/`` ignored) and whose result was not an error;
- the tool-call budget (``max_tool_calls`` in the grader's declaration) was kept; each call over
  it costs ``1 / budget``, so twice the budget scores 0 on this check;
- with ``price_errors``, the calls were answered: the check scores the share of calls that came back
  with a result. Without it a call that failed costs nothing but its place in the budget, so a rollout
  that tries a made-up path and then answers from a search snippet scores what the snippet alone
  scores; with it, the failed try scores below not trying.

A row with nothing to check scores 1.0 (nothing was asked of it). The reason lists what is missing.
On its own it rewards process, not answers; in a ``multi`` grader it is the ``0.2 * tools`` half.
"""

from __future__ import annotations

from ..schema import Grade, Row, ToolResultTurn, Trajectory


def _norm_path(path: object) -> str:
    text = str(path or "").strip()
    while text.startswith(("./", "/")):
        text = text[2:] if text.startswith("./") else text[1:]
    return text


class ToolUseGrader:
    """Checks ``must_use_tools``, ``evidence_path`` and a tool-call budget on one trajectory."""

    def __init__(
        self,
        name: str = "tool_use",
        max_tool_calls: int | None = None,
        must_use_tools: list[str] | None = None,
        check_evidence: bool = True,
        read_tool: str = "read",
        price_errors: bool = False,
    ) -> None:
        self.name = name
        self.max_tool_calls = max_tool_calls
        self.must_use_tools = must_use_tools
        self.check_evidence = check_evidence
        self.read_tool = read_tool
        self.price_errors = price_errors

    def grade(self, row: Row, trajectory: Trajectory) -> Grade:
        failed_calls = {t.call_id for t in trajectory.turns if isinstance(t, ToolResultTurn) and t.is_error}
        answered = [c for c in trajectory.tool_calls if c.error is None and c.call_id not in failed_calls]
        used = {c.name for c in answered}
        scores: dict[str, float] = {}
        notes: list[str] = []

        required = self.must_use_tools if self.must_use_tools is not None else row.expected.must_use_tools
        if required:
            missing = [name for name in required if name not in used]
            scores["must_use_tools"] = 1 - len(missing) / len(required)
            notes.append(f"never used {', '.join(missing)}" if missing else f"used {', '.join(required)}")

        evidence = _norm_path(row.expected.evidence_path) if self.check_evidence else ""
        if evidence:
            read = any(c.name == self.read_tool and _norm_path(c.args.get("path")) == evidence for c in answered)
            scores["evidence"] = 1.0 if read else 0.0
            notes.append(f"read {evidence}" if read else f"never read {evidence}")

        if self.max_tool_calls is not None:
            over = max(0, trajectory.n_tool_calls - self.max_tool_calls)
            scores["budget"] = max(0.0, 1 - over / self.max_tool_calls)
            n = trajectory.n_tool_calls
            budget = f"{n} tool call{'' if n == 1 else 's'}, budget {self.max_tool_calls}"
            notes.append(f"{budget} ({over} over)" if over else budget)

        calls = trajectory.n_tool_calls
        if self.price_errors and calls:
            failed = calls - len(answered)
            scores["errors"] = 1 - failed / calls
            notes.append(f"{failed} of {calls} call{'' if calls == 1 else 's'} failed")

        if not scores:
            return Grade(reward=1.0, grader=self.name, reason="no tool-use expectations on this row")
        reward = sum(scores.values()) / len(scores)
        return Grade(reward=reward, grader=self.name, reason="; ".join(notes), sub_rewards=dict(scores))


__all__ = ["ToolUseGrader"]
