"""The ``agentrft`` command: one sub-command per step of the nine.

Each step's module registers its own commands through ``register(app)``; heavy libraries (torch,
transformers, sentence-transformers) are imported inside the commands so ``agentrft --help`` and the
light commands start fast. ``main`` turns a ``UserError`` into one line on stderr and exit 1, and so,
as a last net, a file that is not UTF-8 or cannot be opened.
"""

from __future__ import annotations

import os
import sys

import typer
from typer._click.exceptions import ClickException  # typer vendors its own click
from rich.console import Console

from . import demonstrations, plan, prior, serve
from .data import cli as data_cli
from .errors import UserError
from .evaluate import cli as evaluate_cli
from .filings import cli as filings_cli
from .graders import cli as graders_cli
from .tools import cli as tools_cli
from .train import cli as train_cli

app = typer.Typer(
    name="agentrft",
    help="Agent reinforcement fine-tuning: from a folder of prompts to a fine-tuned tool-using agent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


@app.callback()
def _root() -> None:
    """Agent reinforcement fine-tuning: from a folder of prompts to a fine-tuned tool-using agent."""


# Each step in order (the warm start after the prior check it answers), then the running example's commands
# (data synth, model tiny, model warm-start, demo).
for _module in (data_cli, tools_cli, graders_cli, prior, demonstrations, train_cli, evaluate_cli, plan, serve,
                filings_cli):
    _module.register(app)


def _quiet_libraries() -> None:
    """Hugging Face's per-file progress bars (loading weights, writing shards, mapping a dataset)
    would bury the commands' own output; agentrft shows its own progress where work is long."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; bad input ends in one line on stderr and a non-zero exit."""
    _quiet_libraries()
    try:
        # Without standalone mode, a command's `raise typer.Exit(n)` comes back as the return value.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except UserError as exc:
        for line in str(exc).splitlines() or ["error"]:
            _err.print(f"error: {line}", markup=False)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except UnicodeDecodeError as exc:
        # Readers go through agentrft.files, which names the file and line; this catches one that
        # does not (a file read by a library), so the user still gets a line, not a traceback.
        message = f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        _err.print(f"error: {message}", markup=False)
        sys.exit(1)
    except OSError as exc:
        if exc.filename is None:  # a socket or a subprocess, not a file: a bug to see in full
            raise
        _err.print(f"error: {exc.filename}: {exc.strerror or exc.__class__.__name__}", markup=False)
        sys.exit(1)
    except ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:
        _err.print("aborted", markup=False)
        sys.exit(130)
    except KeyboardInterrupt:
        _err.print("interrupted", markup=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
