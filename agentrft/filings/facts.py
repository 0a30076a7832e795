"""The facts behind the synthetic filings corpus: companies, periods and their reported figures.

Everything here is a pure function of ``(companies, seed)``, so the corpus, the rows and anything
else that needs the ground truth (the tiny model's scripted demonstrations, tests) can regenerate
the same numbers without parsing HTML. Each company draws from its own random stream seeded by its
slug, so the first four companies' figures are the same whether 4 or 12 are generated.

Amounts are integers in $ millions; margins are derived from those integers and rounded to one
decimal, so every percentage a filing prints can be recomputed exactly from its income statement.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..errors import UserError

# The highlight labels, in the order a filing lists them. They are the only wording used for these
# metrics anywhere in the corpus (highlights, statements, press releases), so an exact-label search
# and a copied answer always line up.
METRIC_LABELS: dict[str, str] = {
    "revenue": "Revenue",
    "gross_profit": "Gross profit",
    "gross_margin": "Gross margin",
    "operating_income": "Operating income",
    "operating_margin": "Operating margin",
    "net_income": "Net income",
}
# Income-statement lines that are not in the highlights (answering them means reading further).
STATEMENT_LABELS: dict[str, str] = {
    "revenue": "Revenue",
    "cost_of_revenue": "Cost of revenue",
    "gross_profit": "Gross profit",
    "operating_expenses": "Operating expenses",
    "operating_income": "Operating income",
    "net_income": "Net income",
}
PERCENT_METRICS = ("gross_margin", "operating_margin")

QUARTER_YEARS = (2023, 2024, 2025)
FILED_QUARTERS = ((2024, 1), (2024, 2), (2024, 3), (2025, 1), (2025, 2), (2025, 3))
FISCAL_YEARS = (2023, 2024)
QUARTER_END = {1: "March 31", 2: "June 30", 3: "September 30", 4: "December 31"}
QUARTER_WORDS = {1: "first", 2: "second", 3: "third", 4: "fourth"}


@dataclass(frozen=True)
class Company:
    slug: str
    name: str
    industry: str
    segments: tuple[str, ...]


COMPANIES: tuple[Company, ...] = (
    Company("henderson", "Henderson Industries", "industrial equipment", ("Industrial Products", "Field Services")),
    Company("atlas", "Atlas Corp", "freight logistics", ("Freight", "Warehousing", "Logistics Software")),
    Company("meridian", "Meridian Biotech", "biopharmaceuticals", ("Therapeutics", "Diagnostics")),
    Company("larkspur", "Larkspur Foods", "packaged foods", ("Packaged Foods", "Beverages")),
    Company("quillon", "Quillon Software", "enterprise software", ("Subscriptions", "Professional Services")),
    Company("brannock", "Brannock Energy", "energy", ("Upstream", "Renewables", "Midstream")),
    Company("tessaly", "Tessaly Materials", "specialty materials", ("Specialty Chemicals", "Composites")),
    Company("ostrander", "Ostrander Retail", "retail", ("Stores", "E-commerce")),
    Company("wexford", "Wexford Aerospace", "aerospace", ("Commercial Aircraft", "Defense Systems")),
    Company("calder", "Calder Semiconductors", "semiconductors", ("Logic Chips", "Memory", "Licensing")),
    Company("ravenna", "Ravenna Health", "healthcare services", ("Clinics", "Health Plans")),
    Company("fennimore", "Fennimore Media", "media", ("Streaming", "Advertising")),
    Company("kestrel", "Kestrel Mining", "mining", ("Copper", "Lithium")),
    Company("sablewood", "Sablewood Apparel", "apparel", ("Wholesale", "Direct to Consumer")),
    Company("ardent", "Ardent Robotics", "robotics", ("Robots", "Service Contracts")),
    Company("halvard", "Halvard Shipping", "shipping", ("Container Shipping", "Port Services")),
)
MAX_COMPANIES = len(COMPANIES)


@dataclass(frozen=True)
class Period:
    """A fiscal quarter (``quarter`` 1-4) or a full fiscal year (``quarter`` None)."""

    year: int
    quarter: int | None = None

    @property
    def label(self) -> str:
        return f"Q{self.quarter} {self.year}" if self.quarter else f"FY{self.year}"

    @property
    def key(self) -> str:
        """Machine form for metadata: ``2025-Q3`` or ``FY2024``."""
        return f"{self.year}-Q{self.quarter}" if self.quarter else f"FY{self.year}"

    @property
    def words(self) -> str:
        """``the third quarter of 2025`` / ``fiscal 2024``."""
        return f"the {QUARTER_WORDS[self.quarter]} quarter of {self.year}" if self.quarter else f"fiscal {self.year}"

    @property
    def end_date(self) -> str:
        return f"{QUARTER_END[self.quarter or 4]}, {self.year}"


@dataclass(frozen=True)
class Statement:
    """One period's income statement in $ millions, with its segment revenue."""

    revenue: int
    cost_of_revenue: int
    operating_expenses: int
    net_income: int
    segments: dict[str, int] = field(default_factory=dict)

    @property
    def gross_profit(self) -> int:
        return self.revenue - self.cost_of_revenue

    @property
    def operating_income(self) -> int:
        return self.gross_profit - self.operating_expenses

    @property
    def gross_margin(self) -> float:
        return round_pct(self.gross_profit / self.revenue)

    @property
    def operating_margin(self) -> float:
        return round_pct(self.operating_income / self.revenue)

    @property
    def net_margin(self) -> float:
        return round_pct(self.net_income / self.revenue)

    def value(self, metric: str) -> float:
        return float(getattr(self, metric))

    def display(self, metric: str) -> str:
        """The figure as every document and every reference answer prints it."""
        value = getattr(self, metric)
        return format_percent(value) if metric in PERCENT_METRICS else format_money(value)

    def highlights(self) -> list[str]:
        """``Revenue: $842M``-style lines, in METRIC_LABELS order."""
        return [f"{label}: {self.display(metric)}" for metric, label in METRIC_LABELS.items()]


@dataclass(frozen=True)
class Filing:
    """One 10-Q or 10-K of one company; ``path`` is relative to the corpus directory."""

    company: Company
    form: str  # "10-Q" or "10-K"
    period: Period
    statement: Statement
    prior: Statement  # the same period a year earlier, shown as the comparative column

    @property
    def path(self) -> str:
        if self.period.quarter:
            return f"filings/{self.company.slug}-10q-{self.period.year}-q{self.period.quarter}.html"
        return f"filings/{self.company.slug}-10k-{self.period.year}.html"

    @property
    def facts(self) -> dict[str, str]:
        """Metric key → displayed figure, for the highlight metrics."""
        return {metric: self.statement.display(metric) for metric in METRIC_LABELS}


def round_pct(ratio: float) -> float:
    return round(ratio * 100 + 1e-9, 1)


def format_money(millions: float) -> str:
    """``$842M`` below a billion, ``$1.43B`` above: the format of every amount and answer."""
    if abs(millions) >= 1000:
        return f"${millions / 1000:.2f}B"
    return f"${int(round(millions))}M"


def format_percent(value: float) -> str:
    return f"{value:.1f}%"


def possessive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


def select_companies(companies: int) -> tuple[Company, ...]:
    if not 2 <= companies <= MAX_COMPANIES:
        raise UserError(f"--companies must be between 2 and {MAX_COMPANIES}, got {companies}")
    return COMPANIES[:companies]


def quarterly_statements(company: Company, seed: int) -> dict[Period, Statement]:
    """Eleven quarters (Q1 2023 … Q3 2025) of one company, from its own random stream."""
    rng = random.Random(f"agentrft-synth:{seed}:{company.slug}")
    revenue = rng.uniform(150, 600)
    trend = rng.uniform(-0.01, 0.035)
    gross_base = rng.uniform(0.28, 0.62)
    opex_base = rng.uniform(0.12, gross_base - 0.06)
    net_share = rng.uniform(0.62, 0.82)
    weights = [rng.uniform(1.0, 3.0) for _ in company.segments]
    out: dict[Period, Statement] = {}
    for year in QUARTER_YEARS:
        for quarter in (1, 2, 3, 4):
            if (year, quarter) > (2025, 3):
                break
            revenue = min(revenue * (1 + trend + rng.uniform(-0.03, 0.03)), 990.0)
            rev = int(round(revenue))
            gross = rng.uniform(-0.02, 0.02) + gross_base
            opex = min(rng.uniform(-0.015, 0.015) + opex_base, gross - 0.03)
            cost = int(round(rev * (1 - gross)))
            opex_m = int(round(rev * opex))
            op_income = rev - cost - opex_m
            net = max(1, int(round(op_income * (net_share + rng.uniform(-0.04, 0.04)))))
            out[Period(year, quarter)] = Statement(rev, cost, opex_m, net, _split_segments(rev, company, weights, rng))
    return out


def _split_segments(total: int, company: Company, weights: list[float], rng: random.Random) -> dict[str, int]:
    noisy = [w * rng.uniform(0.95, 1.05) for w in weights]
    parts = [int(total * w / sum(noisy)) for w in noisy[:-1]]
    parts.append(total - sum(parts))
    return dict(zip(company.segments, parts))


def _annual(quarters: list[Statement]) -> Statement:
    segments: dict[str, int] = {}
    for statement in quarters:
        for name, amount in statement.segments.items():
            segments[name] = segments.get(name, 0) + amount
    return Statement(
        revenue=sum(s.revenue for s in quarters),
        cost_of_revenue=sum(s.cost_of_revenue for s in quarters),
        operating_expenses=sum(s.operating_expenses for s in quarters),
        net_income=sum(s.net_income for s in quarters),
        segments=segments,
    )


def company_statements(company: Company, seed: int) -> dict[Period, Statement]:
    """All quarters plus the full fiscal years 2022 (as a prior only), 2023 and 2024."""
    quarters = quarterly_statements(company, seed)
    out = dict(quarters)
    for year in FISCAL_YEARS:
        out[Period(year)] = _annual([quarters[Period(year, q)] for q in (1, 2, 3, 4)])
    # FY2023's 10-K needs a FY2022 comparative column: scale FY2023 back by a drawn growth rate.
    rng = random.Random(f"agentrft-synth:{seed}:{company.slug}:fy2022")
    fy23 = out[Period(2023)]
    shrink = 1 / (1 + rng.uniform(0.0, 0.12))
    out[Period(2022)] = Statement(
        revenue=int(fy23.revenue * shrink),
        cost_of_revenue=int(fy23.cost_of_revenue * shrink),
        operating_expenses=int(fy23.operating_expenses * shrink),
        net_income=int(fy23.net_income * shrink),
        segments={k: int(v * shrink) for k, v in fy23.segments.items()},
    )
    return out


def build_filings(companies: int = 8, seed: int = 0) -> list[Filing]:
    """Every 10-Q (Q1-Q3 of 2024 and 2025) and 10-K (FY2023, FY2024) of the first N companies."""
    filings: list[Filing] = []
    for company in select_companies(companies):
        statements = company_statements(company, seed)
        for year, quarter in FILED_QUARTERS:
            period = Period(year, quarter)
            prior = statements[Period(year - 1, quarter)]
            filings.append(Filing(company, "10-Q", period, statements[period], prior))
        for year in FISCAL_YEARS:
            filings.append(Filing(company, "10-K", Period(year), statements[Period(year)], statements[Period(year - 1)]))
    return filings


def filing_facts(companies: int = 8, seed: int = 0) -> dict[str, dict[str, str]]:
    """Corpus path → {metric key → displayed figure}, e.g. ``{"revenue": "$842M", ...}``."""
    return {filing.path: filing.facts for filing in build_filings(companies, seed)}
