"""HTML for the synthetic filings and the distractor press releases.

A filing opens with its title and a one-column highlights table, one ``Label: figure`` per cell,
so any HTML-to-text rendering puts the key figures on their own lines within the first few hundred
characters (a small model reading with a tight output budget still finds them). The income
statement, segment table and MD&A prose follow; they are deliberately longer and mention the
prior-year figures, as real filings do, so reading past the highlights is both possible and noisy.
"""

from __future__ import annotations

import random
from html import escape

from .facts import METRIC_LABELS, STATEMENT_LABELS, Filing, Period, Statement, format_money, format_percent

_DRIVERS = (
    "higher volumes in its largest markets",
    "pricing actions taken earlier in the year",
    "new customer contracts",
    "a stronger product mix",
    "demand from existing customers",
    "the ramp-up of capacity added last year",
)
_HEADWINDS = (
    "higher input costs",
    "wage inflation",
    "foreign-exchange movements",
    "increased freight costs",
    "investment in new capacity",
    "a less favourable product mix",
)
_BOILERPLATE = (
    "The Company's results may be affected by general economic conditions, changes in customer demand, "
    "competitive pressure and the availability of financing on acceptable terms.",
    "Forward-looking statements in this report are based on management's current expectations and are "
    "subject to risks and uncertainties that could cause actual results to differ materially.",
    "The Company continues to invest in information systems and cybersecurity controls; a material breach "
    "could disrupt operations and harm its reputation.",
    "Management believes that cash on hand, cash from operations and the undrawn revolving credit "
    "facility will be sufficient to fund operations for at least the next twelve months.",
    "Certain prior-period amounts have been reclassified to conform to the current-period presentation.",
    "The Company is subject to legal proceedings arising in the ordinary course of business; management "
    "does not expect their outcome to have a material effect on its financial position.",
)


def _page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>{escape(title)}</title>",
            "</head>",
            "<body>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


def _highlights(statement: Statement) -> list[str]:
    rows = [f"<tr><td>{escape(line)}</td></tr>" for line in statement.highlights()]
    return ['<table class="highlights">', *rows, "</table>"]


def _statement_table(filing: Filing, prior_label: str) -> list[str]:
    rows = [
        "<table class=\"income-statement\">",
        f"<thead><tr><th>($ millions)</th><th>{filing.period.label}</th><th>{prior_label}</th></tr></thead>",
        "<tbody>",
    ]
    for metric, label in STATEMENT_LABELS.items():
        now, before = getattr(filing.statement, metric), getattr(filing.prior, metric)
        rows.append(f"<tr><td>{label}</td><td>{now:,}</td><td>{before:,}</td></tr>")
    return [*rows, "</tbody>", "</table>"]


def _segment_table(filing: Filing, prior_label: str) -> list[str]:
    rows = [
        '<table class="segments">',
        f"<thead><tr><th>Segment revenue ($ millions)</th><th>{filing.period.label}</th><th>{prior_label}</th></tr></thead>",
        "<tbody>",
    ]
    for name, amount in filing.statement.segments.items():
        rows.append(f"<tr><td>{escape(name)}</td><td>{amount:,}</td><td>{filing.prior.segments[name]:,}</td></tr>")
    return [*rows, "</tbody>", "</table>"]


def _mdna(filing: Filing, rng: random.Random) -> list[str]:
    s, p, name = filing.statement, filing.prior, filing.company.name
    when = filing.period.words
    change = s.revenue - p.revenue
    direction = "increased" if change >= 0 else "decreased"
    paragraphs = [
        f"{escape(name)} is {_article(filing.company.industry)} {filing.company.industry} company. In {when}, revenue {direction} "
        f"${abs(change):,} million compared with the same period a year earlier, reflecting "
        f"{rng.choice(_DRIVERS)}, partly offset by {rng.choice(_HEADWINDS)}.",
        f"Cost of revenue was ${s.cost_of_revenue:,} million, against ${p.cost_of_revenue:,} million a year "
        f"earlier. Gross profit was ${s.gross_profit:,} million; the prior-year gross margin was "
        f"{format_percent(p.gross_margin)}.",
        f"Operating expenses were ${s.operating_expenses:,} million, as the Company continued to invest in "
        f"{rng.choice(('sales capacity', 'research and development', 'its distribution network', 'automation'))}. "
        f"Operating income was ${s.operating_income:,} million, compared with ${p.operating_income:,} million "
        f"(an operating margin of {format_percent(p.operating_margin)}) a year earlier.",
        f"Net income was ${s.net_income:,} million after interest and income taxes; in the prior-year period "
        f"net income was ${p.net_income:,} million.",
    ]
    for segment, amount in s.segments.items():
        before = p.segments[segment]
        verb = "grew" if amount >= before else "declined"
        paragraphs.append(
            f"{escape(segment)} revenue {verb} to ${amount:,} million from ${before:,} million, driven by "
            f"{rng.choice(_DRIVERS)}."
        )
    return [f"<p>{text}</p>" for text in paragraphs]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def render_filing(filing: Filing, seed: int) -> str:
    """The full HTML of one 10-Q or 10-K."""
    rng = random.Random(f"agentrft-html:{seed}:{filing.path}")
    company, period = filing.company, filing.period
    prior_label = Period(period.year - 1, period.quarter).label
    kind = "quarterly report" if period.quarter else "annual report"
    ended = "quarter" if period.quarter else "fiscal year"
    body = [
        f"<h1>{escape(company.name)} Form {filing.form}: {period.label}</h1>",
        *_highlights(filing.statement),
        f"<p>{kind.capitalize()} for the {ended} ended {period.end_date}. Amounts in millions of US dollars "
        "unless otherwise noted.</p>",
        "<h2>Condensed consolidated statement of income</h2>",
        *_statement_table(filing, prior_label),
        "<h2>Segment information</h2>",
        *_segment_table(filing, prior_label),
        "<h2>Management's discussion and analysis</h2>",
        *_mdna(filing, rng),
        "<h2>Liquidity and risk factors</h2>",
        *[f"<p>{text}</p>" for text in rng.sample(_BOILERPLATE, 4)],
    ]
    return _page(f"{company.name} {filing.form} {period.label}", body)


def press_path(filing: Filing, published: Period) -> str:
    return f"press/{filing.company.slug}-press-{published.year}-q{published.quarter}.html"


def render_press(filing: Filing, published: Period) -> str:
    """A press release published in ``published`` quoting ``filing``'s (earlier) period.

    It uses the same labels and formats as the filings on purpose: an agent that searches for a
    period and copies the first matching figure from the wrong document gets a wrong answer.
    """
    company, period, s = filing.company, filing.period, filing.statement
    quarter_name = f"{period.words.removeprefix('the ')}".capitalize()
    lines = [f"<li>{escape(label)}: {escape(s.display(metric))}</li>" for metric, label in METRIC_LABELS.items()]
    body = [
        f"<h1>{escape(company.name)} reports results for {period.words}</h1>",
        f"<p>Press release, {published.label}. {escape(company.name)} today announced financial results for "
        f"{period.words}, the period ended {period.end_date}.</p>",
        f"<h2>{quarter_name} results</h2>",
        "<ul>",
        *lines,
        "</ul>",
        f"<p>\"We delivered revenue of {format_money(s.revenue)} and an operating margin of "
        f"{format_percent(s.operating_margin)},\" said the chief executive officer. \"We remain focused "
        "on disciplined growth and on returning cash to shareholders.\"</p>",
        "<p>This release contains forward-looking statements. Figures are unaudited; see the Company's "
        "filings for the full financial statements.</p>",
    ]
    return _page(f"{company.name} press release {published.label}", body)
