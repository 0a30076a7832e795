"""Reading drills: demonstrations whose filing shows fresh random figures, graded on the answer only.

A 1M-parameter model shown the same 300 filings for several epochs memorises "Henderson Q3 2025 →
19.7%" instead of learning to copy the figure that the read returned. A drill takes a good
look-up demonstration and rewrites the highlight figures in the tool results (the read, and the
same filing's search snippet) to new random values, so the only way to answer is to copy. New
values every epoch make memorising impossible. The loss is on the final answer only: the drill's
tool calls are the original demonstration's, already trained on.
"""

from __future__ import annotations

import copy
import random
import re
from typing import Any

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


def _rewrite_search(text: str, path: str, values: dict[str, str]) -> str:
    """Rewrite only the snippet lines under ``path``'s hit in a search result."""
    out, inside = [], False
    for line in text.split("\n"):
        if " (score " in line and not line.startswith(" "):
            inside = line.split(" (score")[0] == path
        out.append(_rewrite(line, values) if inside else line)
    return "\n".join(out)


def drill_from(demo: Demonstration, label: str, rng: random.Random) -> list[dict[str, Any]] | None:
    """A drill built on ``demo``: new figures in its evidence, the asked ``label``'s figure as answer."""
    read_index = max((i for i, m in enumerate(demo.messages) if m.get("name") == "read"), default=None)
    if read_index is None:
        return None
    read = demo.messages[read_index]["content"]
    old = {m.group("label"): m.group("value") for m in _HIGHLIGHT.finditer(read)}
    if label not in old:
        return None
    values = {name: random_figure(value, rng) for name, value in old.items()}
    path = demo.tool_calls[-1][1].get("path", "")
    messages = copy.deepcopy(demo.messages)
    for message in messages:
        if message.get("name") == "search":
            message["content"] = _rewrite_search(message["content"], path, values)
    messages[read_index]["content"] = _rewrite(read, values)
    messages[-1] = {"role": "assistant", "content": f"{label}: {values[label]}"}
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


__all__ = ["drill_from", "drill_sources", "make_drills", "random_figure"]
