"""Drills: demonstrations rewritten with fresh random content, so that copying is the only way to score.

Reading drills: demonstrations whose filing shows fresh random figures, graded on the answer only.

A 1M-parameter model shown the same 300 filings for several epochs memorises "Henderson Q3 2025 →
19.7%" instead of learning to copy the figure that the read returned. A drill takes a good
look-up demonstration and rewrites the highlight figures in its read to new random values, so the
only way to answer is to copy. New values every epoch make memorising impossible. The loss is on
the final answer only, so a drill keeps only what the answer is read from: the question, the read
call and its result. The search before it was the original demonstration's, already trained on,
and a third of the drill's tokens; leaving it out shortens the warm start and the prior check stays
the same (``bench/RESULTS.md``).

Query drills: the same for the first search. Without them, most failed rollouts of the warm-started
model searched for the wrong company ("Brannock" for a question about Meridian Biotech): 320
demonstrations teach which companies exist, not that the query names the one in the question. A
query drill swaps the question's company (and its period and metric where the question names them
as the query does) for other ones and ends at the search call, with the loss on that call only.
"""

from __future__ import annotations

import copy
import random
import re
from dataclasses import dataclass
from typing import Any

from ..facts import Period
from .scripted import Demonstration

_HIGHLIGHT = re.compile(r"^(?P<indent>\s*)(?P<label>[A-Z][A-Za-z ]+): (?P<value>-?\$?-?[\d.,]+[%MB])$", re.M)


def random_figure(like: str, rng: random.Random) -> str:
    """A random figure in the same format as ``like`` (``13.4%``, ``$842M``, ``$1.43B``)."""
    if like.endswith("%"):
        return f"{rng.uniform(-10.0, 70.0):.1f}%"
    if like.endswith("B"):
        return f"${rng.uniform(1.0, 9.99):.2f}B"
    return f"${rng.randint(5, 999)}M"


def _rewrite(text: str, values: dict[str, str]) -> str:
    def swap(m: re.Match[str]) -> str:
        new = values.get(m.group("label"))
        return f"{m.group('indent')}{m.group('label')}: {new}" if new else m.group(0)

    return _HIGHLIGHT.sub(swap, text)


def _ask_instead(question: str, metric: str, other: str) -> str:
    """``question`` asking for ``other`` where it named ``metric`` (the first time)."""
    return question.replace(f" {metric}", f" {other}", 1)


def drill_from(demo: Demonstration, label: str, rng: random.Random) -> list[dict[str, Any]] | None:
    """A drill built on ``demo``: system, question, the last read call with new figures in its result,
    and the asked ``label``'s figure as the answer.

    Where the question names the metric plainly (``operating income``), the drill asks for another
    line of the same filing: which line to copy is then read from the question too, not remembered
    from the demonstration."""
    read_index = max((i for i, m in enumerate(demo.messages) if m.get("name") == "read"), default=None)
    if read_index is None or read_index < 3 or len(demo.messages[read_index - 1].get("tool_calls") or []) != 1:
        return None  # the read's call must be its message's only one, or the drill would hold an unanswered call
    read = demo.messages[read_index]["content"]
    old = {m.group("label"): m.group("value") for m in _HIGHLIGHT.finditer(read)}
    if label not in old:
        return None
    values = {name: random_figure(value, rng) for name, value in old.items()}
    messages = copy.deepcopy(demo.messages[:2] + demo.messages[read_index - 1 : read_index + 1])
    question = messages[1]["content"]
    if f" {label.lower()}" in question:
        asked = rng.choice(sorted(old))
        messages[1]["content"] = _ask_instead(question, label.lower(), asked.lower())
        label = asked
    messages[-1]["content"] = _rewrite(read, values)
    messages.append({"role": "assistant", "content": f"{label}: {values[label]}"})
    return messages


def drill_sources(demos: list[Demonstration], labels: dict[str, str]) -> list[tuple[Demonstration, str]]:
    """(demonstration, highlight label) pairs a drill can be built on: good or wandering look-ups."""
    sources = []
    for demo in demos:
        if demo.strategy != "hasty" and demo.task_type == "numerical_qa" and demo.metric in labels:
            sources.append((demo, labels[demo.metric]))
    return sources


def make_drills(
    sources: list[tuple[Demonstration, str]], n: int, rng: random.Random
) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """``n`` drills (messages, tools) on sources drawn with replacement, each with fresh figures."""
    drills = []
    while sources and len(drills) < n:
        demo, label = rng.choice(sources)
        messages = drill_from(demo, label, rng)
        if messages is not None:
            drills.append((messages, demo.tools))
    return drills


_PERIOD = re.compile(r"^(?:Q(?P<quarter>[1-4]) (?P<year>\d{4})|FY(?P<fy>\d{4})) (?P<metric>.+)$")


@dataclass(frozen=True)
class QuerySource:
    """A demonstration whose first call searches ``company period metric``."""

    demo: Demonstration
    call_index: int
    """Where the first search call is in ``demo.messages``."""
    company: str
    period: Period
    metric: str
    period_form: str | None
    """How the question names the period (``Q3 2025``, ``the third quarter of 2025``); None if otherwise."""
    metric_named: bool
    """Whether the question names the metric as the query does (``operating income``)."""


def _first_search(demo: Demonstration) -> tuple[int, dict[str, Any]] | None:
    for i, message in enumerate(demo.messages):
        if message.get("role") == "assistant" and message.get("tool_calls"):
            function = message["tool_calls"][0]["function"]
            return (i, function) if function["name"] == "search" else None
    return None


def query_sources(demos: list[Demonstration], companies: list[str], metrics: list[str]) -> list[QuerySource]:
    """Demonstrations a query drill can be built on: the first search names the question's company.

    ``metrics`` are the metric names a drill may swap (plain ones such as ``net income``)."""
    sources = []
    for demo in demos:
        found = _first_search(demo)
        if found is None or len(demo.messages) < 2:
            continue
        question, query = demo.messages[1]["content"], str(found[1]["arguments"].get("query", ""))
        company = next((c for c in companies if query.startswith(c + " ") and c in question), None)
        parsed = _PERIOD.match(query[len(company) + 1:]) if company else None
        if company is None or parsed is None:
            continue
        quarter = int(parsed["quarter"]) if parsed["quarter"] else None
        period = Period(int(parsed["year"] or parsed["fy"]), quarter)
        metric = parsed["metric"]
        form = next((f for f in (period.label, period.words) if f in question), None)
        sources.append(QuerySource(demo, found[0], company, period, metric, form,
                                   metric in metrics and f" {metric}" in question))
    return sources


def _possessive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


def query_drill_from(source: QuerySource, companies: list[str], periods: list[Period], metrics: list[str],
                     rng: random.Random) -> list[dict[str, Any]]:
    """System, question and first search call with another company (and period and metric) in both."""
    index = source.call_index
    question = source.demo.messages[1]["content"]
    company = rng.choice([c for c in companies if c not in question] or [source.company])
    question = question.replace(_possessive(source.company), _possessive(company)).replace(source.company, company)
    period, metric = source.period, source.metric
    if source.period_form is not None and periods:
        period = rng.choice(periods)
        question = question.replace(source.period_form,
                                    period.label if source.period_form == source.period.label else period.words)
    if source.metric_named and metrics:
        metric = rng.choice(metrics)
        question = _ask_instead(question, source.metric, metric)
    messages = copy.deepcopy(source.demo.messages[: index + 1])
    messages[1]["content"] = question
    call = messages[index]["tool_calls"][0]["function"]
    call["arguments"] = {**call["arguments"], "query": f"{company} {period.label} {metric}"}
    return messages


def make_query_drills(sources: list[QuerySource], n: int, rng: random.Random,
                      ) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """``n`` query drills (messages, tools) on sources drawn with replacement."""
    companies = sorted({s.company for s in sources})
    periods = sorted({s.period for s in sources}, key=lambda p: (p.year, p.quarter or 0))
    metrics = sorted({s.metric for s in sources if s.metric_named})
    return [(query_drill_from(source, companies, periods, metrics, rng), source.demo.tools)
            for source in (rng.choice(sources) for _ in range(n if sources else 0))]


__all__ = ["QuerySource", "drill_from", "drill_sources", "make_drills", "make_query_drills", "query_drill_from",
           "query_sources", "random_figure"]
