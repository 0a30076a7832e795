"""Questions about the synthetic filings, with their reference answers.

Three task types over the same facts:

- ``numerical_qa``: a direct look-up. easy = a highlight figure of a 10-Q asked with its label;
  medium = a 10-K figure or a paraphrased question; hard = a figure only in the statement body
  (cost of revenue, operating expenses, segment revenue).
- ``computation``: from two reported figures. medium = a ratio within one filing (net margin,
  operating expenses as a share of revenue); hard = a growth rate between two filings.
- ``comparison``: medium = which of two companies had the higher figure (a named answer);
  hard = which of three, or a difference in percentage points.

Tolerances follow what the stated precision allows: a look-up is exact up to the rounding of the
printed figure (0.5%, so ``$1.43B`` and ``$1,432M`` both pass), a computed percentage gets 2% or
one rounding unit of its one-decimal answer, whichever is wider (a 1.2% growth rate rounds with a
4% relative error), and a named answer has none.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import combinations

from ..data.validate import normalise_prompt
from .facts import METRIC_LABELS, PERCENT_METRICS, Filing, format_money, format_percent, possessive, round_pct

LOOKUP_TOLERANCE = 0.005
COMPUTE_TOLERANCE = 0.02

# Share of rows per (task_type, difficulty) stratum: about 60% look-ups, 25% computations,
# 15% comparisons; 30% easy, 45% medium, 25% hard.
STRATA: dict[tuple[str, str], float] = {
    ("numerical_qa", "easy"): 0.30,
    ("numerical_qa", "medium"): 0.20,
    ("numerical_qa", "hard"): 0.10,
    ("computation", "medium"): 0.15,
    ("computation", "hard"): 0.10,
    ("comparison", "medium"): 0.10,
    ("comparison", "hard"): 0.05,
}
ROWS_PER_COMPANY = 50


@dataclass
class Question:
    """A generated question before it becomes a Row (ids are assigned after the split)."""

    task_type: str
    difficulty: str
    prompt: str
    answer: str
    tolerance: float | None
    evidence_path: str
    company: str
    period: str
    metric: str
    fact_key: str  # a look-up's (path, metric): each fact is asked at most once
    must_use_tools: list[str] = field(default_factory=lambda: ["search", "read"])
    extra: dict[str, str] = field(default_factory=dict)


def _tolerance_for(value: float) -> float:
    return round(max(COMPUTE_TOLERANCE, 0.06 / abs(value)), 3)


def _lower(label: str) -> str:
    return label[0].lower() + label[1:]


EASY_TEMPLATES = (
    "What was {co} {period} {metric}?",
    "What was {co} {metric} in {period}?",
    "Report {co} {metric} for {period}.",
    "According to its 10-Q, what was {co} {metric} in {period}?",
)
MEDIUM_TEMPLATES = (
    "How much did {name} report in {metric} for {words}?",
    "What {metric} did {name} post in {words}?",
    "In {words}, what was {co} {metric}?",
    "Find {co} {metric} for {words}.",
)
HARD_TEMPLATES = (
    "What was {co} {metric} in {period}, in $ millions?",
    "How much did {name} report in {metric} for {period}?",
    "Look up {co} {metric} for {period}.",
)


def _fmt(template: str, filing: Filing, metric_words: str) -> str:
    name = filing.company.name
    return template.format(
        co=possessive(name), name=name, period=filing.period.label, words=filing.period.words, metric=metric_words
    )


def lookups(filings: list[Filing], rng: random.Random) -> Iterator[Question]:
    for f in filings:
        for metric, label in METRIC_LABELS.items():
            quarterly = f.period.quarter is not None
            difficulty = "easy" if quarterly and rng.random() < 0.7 else "medium"
            templates = EASY_TEMPLATES if difficulty == "easy" else MEDIUM_TEMPLATES
            if metric in PERCENT_METRICS:  # "how much operating margin" reads wrong
                templates = tuple(t for t in templates if not t.startswith("How much"))
            yield _lookup(f, metric, _lower(label), f.statement.display(metric), difficulty, rng.choice(templates))
        for metric, words in (("cost_of_revenue", "cost of revenue"), ("operating_expenses", "operating expenses")):
            amount = getattr(f.statement, metric)
            yield _lookup(f, metric, words, format_money(amount), "hard", rng.choice(HARD_TEMPLATES))
        for segment, amount in f.statement.segments.items():
            q = _lookup(f, f"segment:{segment}", f"{segment} segment revenue", format_money(amount), "hard",
                        rng.choice(HARD_TEMPLATES))
            q.extra["segment"] = segment
            yield q


def _lookup(f: Filing, metric: str, words: str, answer: str, difficulty: str, template: str) -> Question:
    return Question(
        task_type="numerical_qa", difficulty=difficulty, prompt=_fmt(template, f, words), answer=answer,
        tolerance=LOOKUP_TOLERANCE, evidence_path=f.path, company=f.company.slug, period=f.period.key,
        metric=metric, fact_key=f"{f.path}#{metric}",
    )


def ratios(filings: list[Filing], rng: random.Random) -> Iterator[Question]:
    for f in filings:
        s, co = f.statement, possessive(f.company.name)
        net = round_pct(s.net_income / s.revenue)
        prompt = rng.choice((
            f"What was {co} net margin (net income as a share of revenue) in {f.period.label}?",
            f"Compute {co} net income margin for {f.period.label} from its revenue and net income.",
        ))
        yield _computed(f, "net_margin", prompt, net, "medium")
        opex = round_pct(s.operating_expenses / s.revenue)
        prompt = rng.choice((
            f"What were {co} operating expenses as a percentage of revenue in {f.period.label}?",
            f"In {f.period.label}, what share of {co} revenue went to operating expenses?",
        ))
        yield _computed(f, "opex_ratio", prompt, opex, "medium")


def growth(filings: list[Filing], rng: random.Random) -> Iterator[Question]:
    by_key = {(f.company.slug, f.period): f for f in filings}
    for f in filings:
        q = f.period.quarter
        if q is None:
            continue
        pairs = []
        year_ago = by_key.get((f.company.slug, type(f.period)(f.period.year - 1, q)))
        if year_ago:
            pairs.append((year_ago, "year over year"))
        quarter_ago = by_key.get((f.company.slug, type(f.period)(f.period.year, q - 1))) if q > 1 else None
        if quarter_ago:
            pairs.append((quarter_ago, "quarter over quarter"))
        for before, how in pairs:
            for metric in ("revenue", "operating_income", "net_income"):
                old, new = getattr(before.statement, metric), getattr(f.statement, metric)
                value = round_pct((new - old) / old)
                if abs(value) < 1.0:
                    continue  # a rounding unit would be most of the answer
                words = _lower(METRIC_LABELS[metric])
                co = possessive(f.company.name)
                prompt = rng.choice((
                    f"By what percentage did {co} {words} change from {before.period.label} to {f.period.label}?",
                    f"What was {co} {how} {words} growth in {f.period.label} (vs {before.period.label})?",
                ))
                question = _computed(f, f"{metric}_growth", prompt, value, "hard")
                question.extra["compared_period"] = before.period.key
                yield question


def _computed(f: Filing, metric: str, prompt: str, value: float, difficulty: str) -> Question:
    return Question(
        task_type="computation", difficulty=difficulty, prompt=prompt, answer=format_percent(value),
        tolerance=_tolerance_for(value), evidence_path=f.path, company=f.company.slug,
        period=f.period.key, metric=metric, fact_key=f"{f.path}#{metric}",
    )


def comparisons(filings: list[Filing], rng: random.Random) -> Iterator[Question]:
    by_period: dict[str, list[Filing]] = {}
    for f in filings:
        by_period.setdefault(f.period.key, []).append(f)
    for group in by_period.values():
        for a, b in combinations(group, 2):
            for metric in ("revenue", "operating_margin", "gross_margin", "net_income"):
                yield _which_higher([a, b], metric, "medium", rng)
            hi, lo = (a, b) if a.statement.operating_margin >= b.statement.operating_margin else (b, a)
            diff = round(hi.statement.operating_margin - lo.statement.operating_margin, 1)
            if diff >= 0.5:
                prompt = (f"By how many percentage points did {possessive(hi.company.name)} operating margin "
                          f"exceed {possessive(lo.company.name)} in {hi.period.label}?")
                yield Question(
                    task_type="comparison", difficulty="hard", prompt=prompt, answer=f"{diff:.1f} pp",
                    tolerance=_tolerance_for(diff), evidence_path=hi.path, company=hi.company.slug,
                    period=hi.period.key, metric="operating_margin_gap", fact_key=prompt,
                    extra={"companies": f"{hi.company.slug},{lo.company.slug}"},
                )
        for trio in combinations(group, 3):
            yield _which_higher(list(trio), rng.choice(("revenue", "operating_margin")), "hard", rng)


def _which_higher(group: list[Filing], metric: str, difficulty: str, rng: random.Random) -> Question:
    values = [f.statement.value(metric) for f in group]
    if len(set(values)) < len(values):  # a tie has no single right name; make it a different question
        metric = "revenue" if metric != "revenue" else "net_income"
        values = [f.statement.value(metric) for f in group]
    best = group[values.index(max(values))]
    names = [f.company.name for f in group]
    listed = " or ".join(names) if len(names) == 2 else ", ".join(names[:-1]) + " or " + names[-1]
    words, period = _lower(METRIC_LABELS[metric]), group[0].period
    prompt = rng.choice((
        f"Which company had the higher {words} in {period.label}: {listed}?",
        f"In {period.words}, which reported more {words}, {listed}?" if metric in ("revenue", "net_income")
        else f"In {period.words}, which had the better {words}, {listed}?",
    ))
    if len(group) == 3:
        prompt = prompt.replace("the higher", "the highest").replace("the better", "the best").replace("more", "the most")
    return Question(
        task_type="comparison", difficulty=difficulty, prompt=prompt, answer=best.company.name, tolerance=None,
        evidence_path=best.path, company=best.company.slug, period=period.key, metric=metric, fact_key=prompt,
        extra={"companies": ",".join(f.company.slug for f in group)},
    )


Generator = Callable[[list[Filing], random.Random], Iterator[Question]]
GENERATORS: tuple[Generator, ...] = (lookups, ratios, growth, comparisons)


def generate_questions(filings: list[Filing], total: int, seed: int) -> list[Question]:
    """Draw ``total`` questions over the strata in STRATA; each fact and each prompt at most once."""
    rng = random.Random(f"agentrft-questions:{seed}")
    pools: dict[tuple[str, str], list[Question]] = {key: [] for key in STRATA}
    for generator in GENERATORS:
        for question in generator(filings, rng):
            pools.setdefault((question.task_type, question.difficulty), []).append(question)
    chosen: list[Question] = []
    seen_facts: set[str] = set()
    seen_prompts: set[str] = set()
    for key, share in STRATA.items():
        pool = pools[key]
        rng.shuffle(pool)
        want = round(total * share)
        taken = 0
        for question in pool:
            if taken == want:
                break
            norm = normalise_prompt(question.prompt)
            if question.fact_key in seen_facts or norm in seen_prompts:
                continue
            seen_facts.add(question.fact_key)
            seen_prompts.add(norm)
            chosen.append(question)
            taken += 1
    return chosen
