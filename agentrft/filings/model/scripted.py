"""The scripted demonstration policy: a mixture of good, hasty and wandering research strategies.

Production logs are not all good trajectories, and neither are these on purpose. A model
warm-started on perfect demonstrations alone has nothing for RL to select between; trained on a
mixture, it holds good and bad habits at once and GRPO can shift the weight towards the good one.

- good: search for the company, period and metric; read the filing that holds the answer (each
  company's filing for a comparison); answer by copying the figure.
- hasty: search, then answer from the search snippets without reading: right when the top snippet
  happens to be the right filing's, wrong when a press release quoting another period ranks first.
- wandering: browse with ``list``, search again or read the wrong filing first, then read the right
  one and answer — right, but with more calls.

Every tool call goes to the real tool server over HTTP (``ToolClient``), so demonstrations carry
exactly the text the rollouts will see.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ...schema import Row, Trajectory
from ...tools.client import ToolClient
from ..facts import COMPANIES, METRIC_LABELS, STATEMENT_LABELS
from .prompts import SEARCH_TOP_K, SYSTEM_PROMPT

STRATEGIES = ("good", "hasty", "wandering")
DEFAULT_MIXTURE = {"good": 0.55, "hasty": 0.2, "wandering": 0.25}
"""Shares of the strategies in the demonstrations (as a team might find them in its own logs)."""

ToolCaller = Callable[[str, dict[str, Any]], Awaitable[str]]
"""``await call(name, arguments) -> output text``: how a demonstration reaches the tools."""

_FIGURE = re.compile(r"-?\$?-?\d[\d,]*(?:\.\d+)?[%MB]?")


@dataclass
class Demonstration:
    """One scripted trajectory as chat messages (system, user, assistant/tool turns, final answer)."""

    row_id: str
    strategy: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    answer: str
    reference: str
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    task_type: str = ""
    metric: str = ""

    @property
    def correct(self) -> bool:
        figure = self.answer.strip().rsplit(": ", 1)[-1]  # ``Net income: $107M`` answers ``$107M``
        return figure == self.reference.strip()


def highlight_label(row: Row) -> str | None:
    """The filing's label for the row's figure (``Net income``) when it is a highlight line, else None."""
    meta = row.metadata.model_dump()
    return METRIC_LABELS.get(str(meta.get("metric", ""))) if row.metadata.task_type == "numerical_qa" else None


def labelled(row: Row, figure: str) -> str:
    """The answer as the filing's line gives it: ``Net income: $107M`` (the figure alone without a label).

    A small model copies a figure far more reliably this way: once it has written the label, the figure
    is what followed the same label in the filing it read (one induction step)."""
    label = highlight_label(row)
    return f"{label}: {figure}" if label else figure


def metric_words(metric: str) -> str:
    """How a search query names a metric key from the row metadata (``operating_margin`` → words)."""
    if metric.startswith("segment:"):
        return f"{metric.split(':', 1)[1]} segment revenue"
    label = METRIC_LABELS.get(metric) or STATEMENT_LABELS.get(metric)
    return label.lower() if label else metric.replace("_", " ")


def period_words(period: str) -> str:
    """``2025-Q3`` → ``Q3 2025``; ``FY2024`` stays."""
    if "-Q" in period:
        year, quarter = period.split("-Q")
        return f"Q{quarter} {year}"
    return period


def _company_names() -> dict[str, str]:
    return {c.slug: c.name for c in COMPANIES}


def search_query(row: Row, slug: str | None = None) -> str:
    """The query a good demonstration sends: company, period and metric; the prompt when unknown."""
    meta = row.metadata.model_dump()
    slug = slug or meta.get("company")
    name = _company_names().get(slug or "")
    if not (name and meta.get("period") and meta.get("metric")):
        return row.prompt
    return f"{name} {period_words(meta['period'])} {metric_words(meta['metric'])}"


def _comparison_paths(row: Row) -> list[str]:
    """Each compared company's filing for the row's period (the evidence path names the pattern)."""
    meta = row.metadata.model_dump()
    evidence = row.expected.evidence_path or ""
    slugs = [s for s in str(meta.get("companies", "")).split(",") if s]
    company = meta.get("company")
    if not slugs or not company or company not in evidence:
        return [evidence] if evidence else []
    return [evidence.replace(company, slug, 1) for slug in slugs]


def _hits(search_output: str) -> list[str]:
    return [line.split(" (score")[0] for line in search_output.splitlines() if " (score " in line]


def hasty_answer(row: Row, search_output: str) -> str:
    """What an agent answers from the snippets alone: the first figure under the metric's label."""
    meta = row.metadata.model_dump()
    if row.metadata.task_type == "comparison":
        names = _company_names()
        options = [names.get(s, s) for s in str(meta.get("companies", "")).split(",") if s]
        first = _hits(search_output)[:1]
        for slug in str(meta.get("companies", "")).split(","):
            if first and f"/{slug}-" in first[0]:
                return names.get(slug, slug)
        return options[0] if options else row.reference_answer
    label = metric_words(str(meta.get("metric", ""))).lower()
    figures = []
    for line in search_output.splitlines():
        head, _, value = line.strip().partition(": ")
        if value and _FIGURE.fullmatch(value.strip()):
            figures.append((head.lower(), value.strip()))
    for head, value in figures:
        if head == label:
            return labelled(row, value)
    return labelled(row, figures[0][1]) if figures else "0"


class _Recorder:
    """Builds the message list while calling the tools, one call per assistant turn."""

    def __init__(self, row: Row, call_tool: ToolCaller) -> None:
        self.row = row
        self.call_tool = call_tool
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": row.prompt},
        ]
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        call = {"type": "function", "function": {"name": name, "arguments": arguments}}
        self.messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        output = await self.call_tool(name, arguments)
        self.messages.append({"role": "tool", "name": name, "content": output})
        self.calls.append((name, arguments))
        return output

    def finish(self, strategy: str, answer: str) -> Demonstration:
        self.messages.append({"role": "assistant", "content": answer})
        tools = [spec.model_dump(exclude_none=True) for spec in self.row.tools]
        meta = self.row.metadata.model_dump()
        return Demonstration(
            self.row.id, strategy, self.messages, tools, answer, self.row.reference_answer, self.calls,
            task_type=self.row.metadata.task_type, metric=str(meta.get("metric", "")),
        )


async def demonstrate(row: Row, strategy: str, call_tool: ToolCaller, rng: random.Random) -> Demonstration:
    """Run one scripted strategy on one row against the tools."""
    rec = _Recorder(row, call_tool)
    evidence = row.expected.evidence_path
    found = await rec.call("search", {"query": search_query(row), "top_k": SEARCH_TOP_K})
    if strategy == "hasty" or not evidence:
        return rec.finish("hasty", hasty_answer(row, found))
    reads = _comparison_paths(row) if row.metadata.task_type == "comparison" else [evidence]
    if strategy == "wandering":
        slug = str(row.metadata.model_dump().get("company") or "")
        if rng.random() < 0.5:
            listing = await rec.call("list", {"prefix": f"filings/{slug}"})
            others = [p.strip() for p in listing.splitlines() if p.strip() and p.strip() not in reads]
        else:
            again = await rec.call("search", {"query": f"{slug} {search_query(row)}", "top_k": SEARCH_TOP_K})
            others = [p for p in _hits(found) + _hits(again) if p not in reads]
        if others:
            await rec.call("read", {"path": rng.choice(others).strip()})
    for path in reads:
        await rec.call("read", {"path": path})
    return rec.finish(strategy, labelled(row, row.reference_answer))


def pick_strategies(n: int, mixture: dict[str, float], rng: random.Random) -> list[str]:
    """Exactly ``round(share * n)`` demonstrations per strategy, in random order."""
    names = [s for s in STRATEGIES if mixture.get(s, 0) > 0]
    total = sum(mixture[s] for s in names)
    counts = {s: int(round(mixture[s] / total * n)) for s in names}
    counts[names[0]] += n - sum(counts.values())
    picks = [s for s in names for _ in range(max(counts[s], 0))]
    rng.shuffle(picks)
    return picks


async def make_demonstrations(
    rows: list[Row],
    call_tool: ToolCaller,
    mixture: dict[str, float] | None = None,
    seed: int = 0,
    concurrency: int = 16,
) -> list[Demonstration]:
    """One demonstration per row, strategies drawn from ``mixture``; deterministic given ``seed``."""
    rng = random.Random(seed)
    strategies = pick_strategies(len(rows), mixture or DEFAULT_MIXTURE, rng)
    rngs = [random.Random(rng.getrandbits(64)) for _ in rows]
    gate = asyncio.Semaphore(concurrency)

    async def one(row: Row, strategy: str, r: random.Random) -> Demonstration:
        async with gate:
            return await demonstrate(row, strategy, call_tool, r)

    return list(await asyncio.gather(*(one(*args) for args in zip(rows, strategies, rngs))))


def http_tool_caller(client: ToolClient) -> ToolCaller:
    """A ToolCaller over a ``ToolClient`` (the real tool server)."""
    counter = iter(range(1 << 62))

    async def call(name: str, arguments: dict[str, Any]) -> str:
        reply = await client.call(name, arguments, f"demo-{next(counter)}")
        return reply.output

    return call


def classify_strategy(calls: list[tuple[str, dict[str, Any]]], row: Row, answered: bool = True) -> str:
    """Name the strategy a trajectory followed, from its tool calls alone.

    ``no_answer`` when it never answered; ``hasty`` when it answered without reading; ``good`` when
    it made one search then read only (each of) the filing(s) it needed; ``wandering`` otherwise.
    """
    if not answered:
        return "no_answer"
    names = [name for name, _ in calls]
    if "read" not in names:
        return "hasty"
    needed = len(_comparison_paths(row)) if row.metadata.task_type == "comparison" else 1
    reads = [args.get("path") for name, args in calls if name == "read"]
    if names[:1] == ["search"] and names[1:] == ["read"] * len(reads) and len(set(reads)) == len(reads) <= needed:
        return "good"
    return "wandering"


def trajectory_calls(trajectory: Trajectory) -> list[tuple[str, dict[str, Any]]]:
    """(name, args) of a Trajectory's tool calls."""
    return [(t.name, dict(t.args)) for t in trajectory.tool_calls]


def demonstrations_to_jsonl(demos: list[Demonstration]) -> str:
    return "".join(
        json.dumps({"row_id": d.row_id, "strategy": d.strategy, "correct": d.correct, "messages": d.messages,
                    "tools": d.tools}) + "\n"
        for d in demos
    )


__all__ = [
    "DEFAULT_MIXTURE",
    "STRATEGIES",
    "Demonstration",
    "ToolCaller",
    "classify_strategy",
    "demonstrate",
    "demonstrations_to_jsonl",
    "hasty_answer",
    "highlight_label",
    "http_tool_caller",
    "labelled",
    "make_demonstrations",
    "metric_words",
    "period_words",
    "pick_strategies",
    "search_query",
    "trajectory_calls",
]
