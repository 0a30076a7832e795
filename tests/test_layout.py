"""The two wings: the core knows nothing of the running example, which uses the core as a user's project would.

Read from the source (every import statement, top-level or inside a function), not from what happens
to be loaded, so a lazy import counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "agentrft"
EXAMPLE = "agentrft.filings"
REGISTERS_THE_EXAMPLE = {"agentrft.cli"}
"""The CLI registers the running example's commands (data synth, model tiny, model warm-start, demo)."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in ``path``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [alias.name for alias in node.names]
            found.append((node.lineno, base, names))
            found += [(node.lineno, f"{base}.{n}", []) for n in names]  # ``from agentrft import filings``
    return found


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _in_example(module: str) -> bool:
    return module == EXAMPLE or module.startswith(EXAMPLE + ".")


def test_the_core_does_not_import_the_running_example() -> None:
    offenders = []
    for path in _sources():
        name = _module_name(path)
        if _in_example(name) or name in REGISTERS_THE_EXAMPLE:
            continue
        offenders += [f"{path.relative_to(PACKAGE.parent)}:{line}: {module}"
                      for line, module, _ in _imports(path) if _in_example(module)]
    assert not offenders, "the core imports the running example:\n" + "\n".join(offenders)


def test_the_walk_sees_imports_of_every_kind() -> None:
    """The check above can fail: relative, absolute and lazy imports of the example are all found."""
    core = PACKAGE / "agent" / "loop.py"
    names = {module for _, module, _ in _imports(core)}
    assert {"agentrft.schema", "agentrft.tools.client", "agentrft.agent.episode"} <= names
    example = PACKAGE / "filings" / "model" / "measure.py"
    assert "agentrft.filings.model.prompts" in {module for _, module, _ in _imports(example)}
    assert any(_in_example(module) for _, module, _ in _imports(PACKAGE / "cli.py"))


def test_the_running_example_uses_only_public_names_of_the_core() -> None:
    """What a user's own project could import: no underscore names from outside the example's package."""
    private = []
    for path in _sources():
        if not _in_example(_module_name(path)):
            continue
        for line, module, names in _imports(path):
            if module.startswith("agentrft") and not _in_example(module):
                private += [f"{path.relative_to(PACKAGE.parent)}:{line}: {module}.{n}" for n in names
                            if n.startswith("_") and not n.startswith("__")]
    assert not private, "the running example reaches into the core's private names:\n" + "\n".join(private)
