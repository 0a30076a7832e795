"""Commands of agentrft.data: ``agentrft data validate | split | stats | import-logs | adapt | generate``."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UserError
from ..files import iter_lines, refuse_overwrite
from ..jsonl import read_numbered_models, write_models
from ..schema import Row
from ..tools.corpus_tools import row_tool_specs
from .adapt import KINDS, adapt, write_adapted
from .benchmarks import FORMATS, read_benchmark
from .generate import GenerateSettings, generate
from .logs import import_logs
from .split import check_val_frac, stratified_split
from .stats import print_stats, strata_table
from .validate import summary_lines, validate_files

console = Console(highlight=False, emoji=False, soft_wrap=True)

data_app = typer.Typer(
    help="Step 2: build, validate and split the dataset (JSONL rows).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@data_app.command("validate")
def validate_command(files: list[Path] = typer.Argument(..., help="Row files (JSONL), e.g. train and val.")) -> None:
    """Check rows: fields, types, tool specs, duplicate ids and train/val leakage; report every problem."""

    report = validate_files(files)
    if not report.ok:
        count = len(report.problems)
        total = [f"{count} problems found"] if count > 1 else []  # one problem is its own summary
        raise UserError("\n".join([*report.problems, *total]))
    for line in summary_lines(report):
        console.print(line, markup=False)


@data_app.command("split")
def split_command(
    file: Path = typer.Argument(..., help="A JSONL file of rows."),
    val_frac: float = typer.Option(0.2, "--val-frac", help="Share of each stratum held out, in (0, 0.5]."),
    seed: int = typer.Option(0, help="Seed of the shuffle within each stratum."),
    out_dir: Path = typer.Option(..., "--out-dir", help="Where NAME_train.jsonl and NAME_val.jsonl go."),
    name: str = typer.Option("", help="Output name stem (default: the input's stem)."),
) -> None:
    """Split rows into train/val, stratified by task type × difficulty; ids unchanged."""

    check_val_frac(val_frac)
    numbered = read_numbered_models(file, Row)
    rows = [row for _, row in numbered]
    if len(rows) < 2:
        raise UserError(f"{file}: {len(rows)} rows; a split needs at least 2")
    # Rows are written back as they were read (same keys, same order), not re-serialised.
    lines = dict(iter_lines(file))
    raw = {id(row): lines[number] for number, row in numbered}
    result = stratified_split(rows, val_frac, seed)
    stem = name or file.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    for side, part in (("train", result.train), ("val", result.val)):
        target = out_dir / f"{stem}_{side}.jsonl"
        if target.resolve() == file.resolve():
            raise UserError(f"{target}: would overwrite the input; pass --name or another --out-dir")
        target.write_text("".join(raw[id(row)] + "\n" for row in part), encoding="utf-8")
        console.print(f"Wrote {len(part)} rows to {target}")
    console.print(strata_table(result.counts))


@data_app.command("stats")
def stats_command(files: list[Path] = typer.Argument(..., help="Row files (JSONL).")) -> None:
    """Print the task-type and difficulty distributions of row files."""

    print_stats(files, console)


@data_app.command("import-logs")
def import_logs_command(
    logs: Path = typer.Argument(..., help="Chat-completions logs, one JSON record a line."),
    out: Path = typer.Option(..., "--out", help="Where to write the rows (JSONL)."),
    id_prefix: str = typer.Option("log", help="Row ids become PREFIX-0001, PREFIX-0002, ..."),
) -> None:
    """Turn production logs with a reference (label, reference_answer or reviewer feedback) into rows."""

    refuse_overwrite(out, logs)
    result = import_logs(logs, id_prefix=id_prefix)
    for reason in result.left_out:
        console.print(f"left out: {reason}", markup=False)
    if not result.rows and not result.left_out:
        raise UserError(f"{logs}: empty (no JSON lines); expected chat logs, one JSON record a line")
    if not result.rows:
        raise UserError(f"{logs}: no log line has a usable reference; nothing written")
    write_models(out, result.rows)
    console.print(f"Kept {len(result.rows)} rows, left out {len(result.left_out)}; wrote {out}")


def _adapt_tables(adapted) -> tuple[Table, Table]:

    made = Table(title="Questions by answer type: rows per grader, and skipped")
    for name in ("answer type", *KINDS, "skipped", "total"):
        made.add_column(name, justify="left" if name == "answer type" else "right")
    skipped_by_type = Counter(kind for _, kind, _ in adapted.skipped)
    types = list(dict.fromkeys([*(t for t, _ in adapted.made), *skipped_by_type]))
    for answer_type in types:
        counts = [adapted.made[(answer_type, kind)] for kind in KINDS]
        skipped = skipped_by_type[answer_type]
        made.add_row(answer_type, *map(str, counts), str(skipped), str(sum(counts) + skipped))
    totals = [sum(adapted.made[(t, kind)] for t in types) for kind in KINDS]
    made.add_row("total", *map(str, totals), str(len(adapted.skipped)), str(adapted.questions), style="bold")
    reasons = Table(title="Skipped, by reason")
    reasons.add_column("reason")
    reasons.add_column("questions", justify="right")
    for reason, count in adapted.reasons().most_common():
        reasons.add_row(reason, str(count))
    return made, reasons


@data_app.command("adapt")
def adapt_command(
    file: Path = typer.Argument(..., help="The benchmark file (JSON array or JSONL), e.g. tatqa_dataset_dev.json."),
    fmt: str = typer.Option(..., "--format", help="Its layout: tatqa or finqa."),
    out: Path = typer.Option(..., "--out", help="Directory for corpus/, the row files, graders/ and the skipped list."),
    name: str = typer.Option("", help="Row file stem (default: the input's stem, with the format in front if it lacks it)."),
    read_budget: int = typer.Option(8000, "--read-budget", min=1,
                                    help="Characters the read tool returns; a longer document's questions are skipped."),
) -> None:
    """Turn a public benchmark into a corpus (a document per context) and rows that pass validate."""

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    stem = name or (file.stem if fmt in file.stem.lower() else f"{fmt}_{file.stem}")
    bench = read_benchmark(file, fmt)  # type: ignore[arg-type]
    if not bench.questions and not bench.unreadable:
        raise UserError(f"{file}: no questions; expected {fmt} records")
    adapted = adapt(bench, fmt, read_budget, row_tool_specs())  # type: ignore[arg-type]
    if not any(adapted.rows.values()):
        first = adapted.skipped[0]
        raise UserError(f"{file}: no question could become a row (first: {first[0]}: {first[2]}); nothing written")
    written = write_adapted(adapted, out, stem, fmt)  # type: ignore[arg-type]
    console.print(f"Wrote {len(adapted.documents)} documents under {written.corpus}")
    for kind, path in written.row_files.items():
        console.print(f"Wrote {len(adapted.rows[kind])} rows to {path} (grader: {written.grader_files[kind]})", markup=False)
    made, reasons = _adapt_tables(adapted)
    console.print(made)
    if adapted.skipped:
        console.print(reasons)
    kept = adapted.questions - len(adapted.skipped)
    console.print(f"{adapted.questions} questions: {kept} rows + {len(adapted.skipped)} skipped "
                  f"(each with its reason in {written.skipped_file})", markup=False)


@data_app.command("generate")
def generate_command(
    corpus: Path = typer.Option(..., "--corpus", help="Corpus directory whose documents the questions are about."),
    endpoint: str = typer.Option(..., "--endpoint", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8001/v1."),
    model: str = typer.Option(..., "--model", help="Model name at the endpoint."),
    out: Path = typer.Option(..., "--out", help="Where to write the rows (JSONL)."),
    n: int = typer.Option(100, "--n", min=1, help="Pairs to keep."),
    seed: int = typer.Option(0, help="Seed of the document order and of the requests."),
    temperature: float = typer.Option(0.7, min=0.0, help="Sampling temperature of the model."),
    max_requests: int = typer.Option(None, "--max-requests", min=1, help="Stop after this many requests (default 3 × n)."),
    doc_chars: int = typer.Option(6000, "--doc-chars", min=200, help="Characters of a document put in a request."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=16, help="Longest reply, in tokens."),
    json_schema: bool = typer.Option(True, "--json-schema/--no-json-schema",
                                     help="Ask the endpoint to constrain replies to the pair's JSON schema."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the key."),
) -> None:
    """A stronger model writes question / reference pairs grounded in sampled documents; ungrounded ones are dropped."""


    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; name the JSONL file to write")
    refuse_overwrite(out, corpus)
    settings = GenerateSettings(n=n, seed=seed, temperature=temperature, max_tokens=max_tokens, doc_chars=doc_chars,
                                max_requests=max_requests, json_schema=json_schema)
    result = generate(corpus, endpoint, model, settings, row_tool_specs(), os.environ.get(api_key_env))
    reasons = ", ".join(f"{count} {reason}" for reason, count in result.reasons().most_common())
    if not result.rows:
        raise UserError(f"{endpoint}: no pair kept from {result.requests} requests ({reasons}); nothing written")
    write_models(out, result.rows)
    console.print(f"Kept {len(result.rows)} of {settings.n} pairs asked for, from {result.requests} requests; "
                  f"wrote {out}", markup=False)
    if result.dropped:
        console.print(f"Dropped {len(result.dropped)}: {reasons}", markup=False)


def register(app: typer.Typer) -> None:
    """Add this step's commands to the main app."""
    app.add_typer(data_app, name="data")

