"""Tools as plain typed Python functions: their OpenAI specs, argument checks and routing by name.

A tool is a function with type hints and a Google-style docstring. Its JSON schema comes from
transformers' ``get_json_schema`` (so it is never written twice) and its arguments are checked with
a pydantic model built from the same signature, so what ``GET /tools`` advertises is exactly what
``POST /<tool>`` accepts.

Example::

    def add(a: int, b: int = 1) -> str:
        '''Add two integers.

        Args:
            a: The first number.
            b: The second number.
        '''
        return str(a + b)

    registry = ToolRegistry.from_tools([add])
    registry.specs()   # [{"type": "function", "function": {"name": "add", ...}}]
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

import anyio
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from ..errors import UserError

AsyncImpl = Callable[..., Awaitable[str]]


class ToolArgumentError(ValueError):
    """The arguments of a call do not match the tool's signature; the message is model-readable."""


@dataclass
class Tool:
    """One callable tool: its spec, its argument model and how to run it."""

    name: str
    fn: Callable[..., Any]
    spec: dict[str, Any]
    arguments: type[BaseModel]
    impl: AsyncImpl | None = None
    """An async implementation to use instead of ``fn`` (e.g. a batched search); same arguments."""

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Check and coerce ``arguments``; raise ToolArgumentError with one readable line."""
        try:
            parsed = self.arguments.model_validate(arguments)
        except ValidationError as err:
            raise ToolArgumentError(_describe(err)) from None
        return {key: getattr(parsed, key) for key in type(parsed).model_fields}

    async def run(self, arguments: dict[str, Any]) -> str:
        """Run the tool on already validated arguments; sync tools run in a worker thread."""
        if self.impl is not None:
            result = await self.impl(**arguments)
        elif inspect.iscoroutinefunction(self.fn):
            result = await self.fn(**arguments)
        else:
            result = await anyio.to_thread.run_sync(lambda: self.fn(**arguments))
        return result if isinstance(result, str) else _to_text(result)


def _to_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def _describe(err: ValidationError) -> str:
    """One line per problem, phrased for a model reading it as a tool result."""
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "arguments"
        if item["type"] == "missing":
            parts.append(f"{loc} is required")
        elif item["type"] == "extra_forbidden":
            parts.append(f"unexpected argument {loc!r}")
        else:
            parts.append(f"{loc}: {item['msg'].lower()}")
    return "; ".join(parts)


def make_tool(fn: Callable[..., Any], impl: AsyncImpl | None = None) -> Tool:
    """Derive a Tool from a typed, documented function or bound method."""
    from transformers.utils import get_json_schema

    name = fn.__name__
    try:
        spec = get_json_schema(fn)
    except Exception as exc:  # transformers raises several types for undocumented/untyped params
        raise UserError(f"tool {name!r}: {exc} (tools need type hints and a Google-style docstring)")
    spec["function"].pop("return", None)
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    model = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    return Tool(name=name, fn=fn, spec=spec, arguments=model, impl=impl)


def public_methods(obj: object) -> list[Callable[..., Any]]:
    """The tools an object offers: its public methods, in definition order."""
    names = [n for n in type(obj).__dict__ if not n.startswith("_")]
    return [getattr(obj, n) for n in names if inspect.ismethod(getattr(obj, n, None))]


class ToolRegistry:
    """Tools by name; what the server routes to and what ``GET /tools`` lists."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self.tools: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        if tool.name in self.tools:
            raise UserError(f"two tools are named {tool.name!r}; tool names must be unique")
        self.tools[tool.name] = tool

    def merge(self, other: ToolRegistry) -> ToolRegistry:
        for tool in other.tools.values():
            self.add(tool)
        return self

    @classmethod
    def from_tools(cls, tools: object) -> ToolRegistry:
        """Build from a function, a list of functions, or an object whose public methods are tools."""
        if isinstance(tools, ToolRegistry):
            return tools
        if callable(tools) and (inspect.isfunction(tools) or inspect.ismethod(tools)):
            return cls([make_tool(tools)])
        if isinstance(tools, (list, tuple)):
            return cls(make_tool(fn) for fn in tools)
        methods = public_methods(tools)
        if not methods:
            raise UserError(f"{tools!r} offers no tools: expected functions or an object with public methods")
        return cls(make_tool(fn) for fn in methods)

    def specs(self) -> list[dict[str, Any]]:
        return [tool.spec for tool in self.tools.values()]

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)


def load_tools(target: str) -> ToolRegistry:
    """Import ``module:attr`` (a function, a list of them, an object, or a class to instantiate)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"--tools {target!r}: expected module:attr, e.g. my_tools:TOOLS")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"--tools {target!r}: cannot import {module_name!r}: {exc}") from None
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise UserError(f"--tools {target!r}: module {module_name!r} has no attribute {attr!r}")
        value = getattr(value, part)
    if inspect.isclass(value):
        value = value()
    return ToolRegistry.from_tools(value)


def run_sync(tool: Tool, arguments: dict[str, Any]) -> str:
    """Run one tool call outside a server (tests, demonstrations)."""
    return asyncio.run(tool.run(tool.validate(arguments)))
