"""The running example: research questions about a synthetic corpus of company filings.

It uses the core only as a user's own project would: ``synth`` writes a corpus and rows that the core's
``agentrft data validate`` checks and ``agentrft tools serve --corpus`` serves; ``model`` builds the
embedded tiny model and warm-starts it on scripted demonstrations (``agentrft.sft``); ``demo`` runs the
nine steps' commands on both. A user's project looks like this package with its own corpus, tools and
model. Nothing outside it imports it but the CLI, which registers its commands (``agentrft data synth``,
``agentrft model tiny``, ``agentrft model warm-start``, ``agentrft demo``).
"""

from .facts import COMPANIES, METRIC_LABELS, STATEMENT_LABELS, Filing, build_filings, filing_facts
from .synth import SynthSummary, synth, synth_rows

__all__ = [
    "COMPANIES",
    "METRIC_LABELS",
    "STATEMENT_LABELS",
    "Filing",
    "SynthSummary",
    "build_filings",
    "filing_facts",
    "synth",
    "synth_rows",
]
