"""Step 2, the dataset: the synthetic filings corpus and its rows, validation, splitting, log import,
public benchmarks adapted into a corpus and rows, rows written by a model about a corpus."""

from .adapt import adapt, write_adapted
from .benchmarks import read_benchmark
from .facts import COMPANIES, METRIC_LABELS, STATEMENT_LABELS, Filing, build_filings, filing_facts
from .generate import GenerateSettings, generate
from .logs import import_logs
from .split import stratified_split
from .synth import SynthSummary, synth, synth_rows
from .validate import validate_files

__all__ = [
    "COMPANIES",
    "METRIC_LABELS",
    "STATEMENT_LABELS",
    "Filing",
    "GenerateSettings",
    "SynthSummary",
    "adapt",
    "build_filings",
    "filing_facts",
    "generate",
    "import_logs",
    "read_benchmark",
    "stratified_split",
    "synth",
    "synth_rows",
    "validate_files",
    "write_adapted",
]
