"""The tool server's OpenAPI document, derived from the registry (never written by hand).

Each tool's route takes either contract (see ``agentrft.tools.server``) and answers every status in
one reply shape, so the document is what ``GET /tools`` advertises put into OpenAPI's frame: a tool's
arguments schema is its JSON schema with ``additionalProperties: false`` added, since the server
refuses unknown arguments. Fuzz tests (tests/test_fuzz.py) generate requests from this document and
check every reply against it.
"""

from __future__ import annotations

from typing import Any

from .registry import ToolRegistry

REPLY: dict[str, Any] = {
    "type": "object",
    "description": "A tool's output, or an error starting 'Error: ' (in the managed contract, with type).",
    "properties": {
        "output": {"type": "string"},
        "call_id": {"description": "The request's call_id, echoed (null when it had none)."},
        "type": {"type": "string", "enum": ["function_call_output"]},
    },
    "required": ["output", "call_id"],
    "additionalProperties": False,
}

_ERRORS = {
    "400": "The body is not a JSON object, or its arguments are not one.",
    "401": "Missing or wrong bearer token.",
    "413": "The body is over the size limit.",
    "422": "The arguments do not fit the tool's signature.",
}


def _reply(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Reply"}}}}


def _tool_operation(name: str, spec: dict[str, Any], secured: bool) -> dict[str, Any]:
    function = spec["function"]
    arguments = {**function.get("parameters", {"type": "object", "properties": {}}), "additionalProperties": False}
    tutorial: dict[str, Any] = {
        "type": "object",
        "properties": {"arguments": arguments, "call_id": {"type": "string"}},
    }
    if arguments.get("required"):  # without arguments the server reads {}, which lacks them
        tutorial["required"] = ["arguments"]
    managed = {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["function_call"]},
            "call_id": {"type": "string"},
            "name": {"type": "string", "enum": [name]},
            "arguments": {"type": "string", "description": "The arguments as a JSON object string."},
        },
        "required": ["type", "call_id", "name", "arguments"],
    }
    responses = {"200": _reply("The tool ran; its output may be an error for the model to read.")}
    responses.update({code: _reply(text) for code, text in _ERRORS.items() if secured or code != "401"})
    operation: dict[str, Any] = {
        "operationId": f"tool_{name}",
        "summary": function.get("description", name),
        "requestBody": {"content": {"application/json": {"schema": {"anyOf": [tutorial, managed]}}}},
        "responses": responses,
    }
    return operation


def tools_openapi(registry: ToolRegistry, secured: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a tool server serving ``registry`` (``secured``: a token is required)."""
    unauthorized = {"401": _reply(_ERRORS["401"])} if secured else {}
    paths: dict[str, Any] = {
        "/healthz": {"get": {
            "operationId": "healthz", "security": [],
            "responses": {"200": {"description": "The server is up; the names of its tools.", "content": {
                "application/json": {"schema": {
                    "type": "object", "required": ["status", "tools"], "additionalProperties": False,
                    "properties": {"status": {"type": "string", "enum": ["ok"]},
                                   "tools": {"type": "array", "items": {"type": "string"}}}}}}}},
        }},
        "/tools": {"get": {
            "operationId": "tools",
            "responses": {"200": {"description": "The OpenAI function specs of the tools.", "content": {
                "application/json": {"schema": {"type": "array", "items": {
                    "type": "object", "required": ["type", "function"],
                    "properties": {"type": {"type": "string", "enum": ["function"]}, "function": {
                        "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}}}}}},
                **unauthorized},
        }},
    }  # fmt: skip
    for name, tool in registry.tools.items():
        paths[f"/{name}"] = {"post": _tool_operation(name, tool.spec, secured)}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "agentrft tools", "version": "1"},
        "paths": paths,
        "components": {"schemas": {"Reply": REPLY}},
    }
    if secured:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


__all__ = ["tools_openapi"]
