"""``agentrft data generate``: a stronger model writes question / reference pairs grounded in a corpus.

Documents are drawn from the corpus in a seeded shuffle (each once before any twice); for each, the
model behind an OpenAI-compatible endpoint gets the document's text (cut to ``doc_chars``) and is
asked for one question that a research agent could answer from it with a short reference copied
from it, as JSON ``{"question": ..., "answer": ...}`` (with ``json_schema`` the endpoint is asked to
constrain its reply to that shape; vLLM and OpenAI can). Questions already kept for a document are
listed in its next request, so the model asks something else.

A pair is kept only if its reference can be found in its document: the reference's text, case and
spacing folded, or else every number in it (``842 million`` for ``$842M``) among the document's
numbers. The rest are dropped and counted by reason — a reply that is not such JSON, a reference
not in the document, one longer than a short answer, a duplicate question (case, spacing and
punctuation folded), an endpoint error — never repaired. Requests go out ``concurrency`` at a time
until ``n`` pairs are kept or ``max_requests`` were made. Kept pairs are rows like the running
example's: ``evidence_path`` is the document, ``search`` and ``read`` must be used.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..graders.quantities import parse_quantities
from ..schema import Expected, Row, RowMetadata, ToolSpec
from ..tools.corpus import Corpus
from .validate import normalise_prompt

MAX_ANSWER_CHARS = 120
SYSTEM_PROMPT = (
    "You write evaluation questions for a research agent that answers questions about company "
    "documents with a search tool and a read tool. Reply with one JSON object and nothing else."
)
PAIR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class GenerateSettings:
    n: int = 100
    """Pairs to keep."""
    seed: int = 0
    temperature: float = 0.7
    max_tokens: int = 256
    doc_chars: int = 6000
    """Characters of the document's text put in the request."""
    concurrency: int = 8
    max_requests: int | None = None
    """Stop after this many requests even if fewer than ``n`` pairs were kept; default 3 × n."""
    json_schema: bool = True
    """Ask the endpoint to constrain replies to ``PAIR_SCHEMA`` (``response_format``)."""


@dataclass
class GenerateResult:
    rows: list[Row] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    """(document path, reason) of every reply that did not become a row."""
    requests: int = 0

    def reasons(self) -> Counter[str]:
        return Counter(reason for _, reason in self.dropped)


class _Drop(Exception):
    """A reply that cannot become a row; the message says why."""


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def user_prompt(path: str, text: str, asked: list[str], doc_chars: int) -> str:
    """The request for one pair about one document."""
    excerpt = text if len(text) <= doc_chars else text[:doc_chars] + "\n[…]"
    lines = [
        f"Document {path}:", "<document>", excerpt, "</document>", "",
        "Write one question that this document answers, and its answer copied from the document: a "
        "figure with its unit (such as $842M or 13.4%) or a name. The question must say what it is "
        "about (the company, the period, the item) so that it can be answered by searching a library "
        "of many such documents without seeing this one.",
    ]
    if asked:
        lines += ["Do not ask again:", *(f"- {question}" for question in asked)]
    lines.append('Reply with JSON only: {"question": "...", "answer": "..."}')
    return "\n".join(lines)


def parse_pair(reply: str) -> tuple[str, str]:
    """(question, answer) from a reply holding a JSON object (code fences and text around it allowed)."""
    start, end = reply.find("{"), reply.rfind("}")
    try:
        value = json.loads(reply[start : end + 1]) if 0 <= start < end else None
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise _Drop("the reply is not a JSON object")
    question, answer = value.get("question"), value.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(question, str) or not question.strip() or not isinstance(answer, str) or not answer.strip():
        raise _Drop("the reply has no 'question' and 'answer' text")
    return " ".join(question.split()), " ".join(answer.split())


def grounded(answer: str, document: str) -> bool:
    """Can ``answer`` be found in ``document``: as text, or as numbers the document holds?"""
    if _fold(answer) in _fold(document):
        return True
    numbers = [q for q in parse_quantities(answer) if not q.context]
    if not numbers:
        return False
    held = {q.value for q in parse_quantities(document)}
    return all(q.value in held for q in numbers)


def _check(pair: tuple[str, str], document: str, seen: set[str]) -> None:
    question, answer = pair
    if len(answer) > MAX_ANSWER_CHARS:
        raise _Drop(f"the answer is over {MAX_ANSWER_CHARS} characters (a reference is a figure or a name)")
    if not grounded(answer, document):
        raise _Drop("the answer cannot be found in its document")
    if normalise_prompt(question) in seen:
        raise _Drop("a duplicate of an earlier question")


async def _ask(client: Any, model: str, prompt: str, settings: GenerateSettings, seed: int) -> str:
    import openai  # ~0.2 s to import: not for --help

    request: dict[str, Any] = dict(
        model=model,
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        seed=seed,
    )
    if settings.json_schema:
        request["response_format"] = {"type": "json_schema",
                                      "json_schema": {"name": "qa_pair", "schema": PAIR_SCHEMA, "strict": True}}
    try:
        response = await client.chat.completions.create(**request)
    except openai.APIConnectionError:
        raise UserError(f"{client.base_url}: model endpoint unreachable") from None
    except openai.APIStatusError as exc:
        if exc.status_code in (401, 403, 404):
            raise UserError(f"{client.base_url}: {exc.status_code} for model {model!r} ({exc.message})") from None
        raise _Drop(f"endpoint error {exc.status_code}") from None
    return response.choices[0].message.content or ""


async def _generate(corpus: Corpus, base_url: str, model: str, settings: GenerateSettings, tools: list[ToolSpec],
                    api_key: str) -> GenerateResult:
    from openai import AsyncOpenAI  # ~0.2 s to import: not for --help

    paths = [path for path in corpus.paths() if corpus.texts[path].strip()]
    if not paths:
        raise UserError(f"{corpus.root}: no document with text")
    random.Random(settings.seed).shuffle(paths)
    budget = settings.max_requests or 3 * settings.n
    result = GenerateResult()
    seen: set[str] = set()
    asked: dict[str, list[str]] = {}
    async with AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=300.0, max_retries=2) as client:
        while len(result.rows) < settings.n and result.requests < budget:
            wave = min(settings.concurrency, budget - result.requests)
            picked = [paths[(result.requests + i) % len(paths)] for i in range(wave)]
            prompts = [user_prompt(p, corpus.texts[p], asked.get(p, []), settings.doc_chars) for p in picked]
            seeds = [settings.seed * 100_003 + result.requests + i for i in range(wave)]
            replies = await asyncio.gather(*(_ask(client, model, prompt, settings, seed)
                                             for prompt, seed in zip(prompts, seeds)), return_exceptions=True)
            result.requests += wave
            for path, reply in zip(picked, replies):
                if isinstance(reply, BaseException) and not isinstance(reply, _Drop):
                    raise reply
                try:
                    if isinstance(reply, _Drop):
                        raise reply
                    pair = parse_pair(reply)
                    _check(pair, corpus.texts[path], seen)
                except _Drop as why:
                    result.dropped.append((path, str(why)))
                    continue
                if len(result.rows) >= settings.n:
                    result.dropped.append((path, f"past the {settings.n} pairs asked for"))
                    continue
                seen.add(normalise_prompt(pair[0]))
                asked.setdefault(path, []).append(pair[0])
                result.rows.append(_row(len(result.rows) + 1, pair, path, model, tools))
    return result


def _row(number: int, pair: tuple[str, str], path: str, model: str, tools: list[ToolSpec]) -> Row:
    question, answer = pair
    return Row(
        id=f"gen-{number:04d}",
        prompt=question,
        reference_answer=answer,
        expected=Expected(evidence_path=path, must_use_tools=["search", "read"]),
        tools=tools,
        metadata=RowMetadata(task_type="generated", difficulty="unknown", source="generate", model=model,
                             document=path),
    )


def generate(corpus_dir: Path, endpoint: str, model: str, settings: GenerateSettings, tools: list[ToolSpec],
             api_key: str | None = None) -> GenerateResult:
    """Ask ``model`` at ``endpoint`` (an OpenAI-compatible base URL) for pairs about ``corpus_dir``'s documents."""
    from ..agent.policy import chat_completions_base  # agent.policy loads torch (through agent.local)

    try:
        corpus = Corpus(corpus_dir)
    except FileNotFoundError as exc:
        raise UserError(f"--corpus {corpus_dir}: {exc}") from None
    return asyncio.run(_generate(corpus, chat_completions_base(endpoint), model, settings, tools, api_key or "EMPTY"))


__all__ = ["GenerateResult", "GenerateSettings", "generate", "grounded", "parse_pair", "user_prompt"]
