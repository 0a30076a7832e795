"""Step 2, the dataset: validation, splitting, log import, public benchmarks adapted into a corpus and
rows, rows written by a model about a corpus. (The running example's generator is ``agentrft.filings``.)"""

from .adapt import adapt, write_adapted
from .benchmarks import read_benchmark
from .generate import GenerateSettings, generate
from .logs import import_logs
from .split import stratified_split
from .validate import normalise_prompt, validate_files

__all__ = [
    "GenerateSettings",
    "adapt",
    "generate",
    "import_logs",
    "normalise_prompt",
    "read_benchmark",
    "stratified_split",
    "validate_files",
    "write_adapted",
]
