"""Tool calls out of generated tokens, through the tokenizer's response parser.

transformers' ``tokenizer.parse_response`` reads the model's own format (Qwen's ``<tool_call>`` JSON,
Llama 3's python tags, …) from a ``response_template``; TRL's ``add_response_schema`` supplies one for
the chat templates it knows, so a Qwen2.5, Qwen3 or Llama-3 model parses unchanged. What the parser
cannot read is kept, not dropped: a turn that opened a tool call but did not close valid JSON becomes
a ``ToolCallTurn`` with ``error`` and ``raw`` set, so the trajectory records it and the model is told.

A fast tokenizer's replies are parsed from their token ids (a control token only delimits when it was
generated as one) through ``_ParsingView``, which hands transformers' parser the tokenizer's added
tokens from a snapshot taken once instead of rebuilding them for every reply.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import weakref
from typing import Any

from ..errors import UserError
from ..schema import ToolCallTurn
from .episode import Reply


def ensure_response_parser(tokenizer: Any, source: str = "the tokenizer") -> None:
    """Give ``tokenizer`` a response template if it has none; a clear error for unknown chat templates."""
    if getattr(tokenizer, "response_template", None) is not None:
        return
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{source}: has no chat template; an agent model needs one that renders tools")
    from trl.chat_template_utils import add_response_schema

    try:
        add_response_schema(tokenizer)
    except ValueError:
        raise UserError(
            f"{source}: unknown chat template, so its tool calls cannot be parsed; set "
            "tokenizer.response_template (see transformers' chat response parsing docs)"
        ) from None


class _ParsingView:
    """The tokenizer as transformers' token-id response parser reads it, its added tokens read once.

    ``tokenizer.parse_response`` builds a ``TokenIdDecoder`` for every reply, and that reads
    ``added_tokens_decoder`` (rebuilt from the Rust tokenizer on every access) and the control tokens of
    the chat template afresh, and walks every added token for the control tokens among them: with a few
    thousand added tokens (the tiny model's number chunks and metric labels) that walk is most of a
    reply's parse, and a rollout parses every turn of every trajectory (bench/RESULTS.md). A tokenizer
    does not change while it decodes, so the control tokens are read once, and the view's
    ``added_tokens_decoder`` holds only the added tokens that are control tokens of its chat templates:
    the decoder keeps exactly those, and reads the added tokens for nothing else. Any other attribute
    the parser reads comes from the tokenizer itself.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.chat_template = template = tokenizer.chat_template
        templates = list(template.values()) if isinstance(template, dict) else [template or ""]
        self._control_tokens = {template: tokenizer._get_control_tokens(template) for template in templates}
        control = {token for tokens in self._control_tokens.values() for token in tokens}
        self.added_tokens_decoder = {i: added for i, added in tokenizer.added_tokens_decoder.items()
                                     if added.content in control}

    def _get_control_tokens(self, chat_template: str) -> tuple[str, ...]:
        if chat_template not in self._control_tokens:
            self._control_tokens[chat_template] = self._tokenizer._get_control_tokens(chat_template)
        return self._control_tokens[chat_template]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


_views: weakref.WeakKeyDictionary[Any, _ParsingView] = weakref.WeakKeyDictionary()


def _parse_ids(tokenizer: Any, ids: list[int], prefix: list[int], tools: list[dict[str, Any]] | None) -> Any:
    """``tokenizer.parse_response(ids, prefix=prefix, tools=tools)``, through the tokenizer's kept view
    where transformers parses token ids with a tokenizer argument (a fast tokenizer)."""
    parse_response = _token_id_parser()
    if parse_response is None or not getattr(tokenizer, "is_fast", False):
        return tokenizer.parse_response(ids, prefix=prefix, tools=tools)
    try:
        view = _views.get(tokenizer)
        if view is None:
            view = _views[tokenizer] = _ParsingView(tokenizer)
    except TypeError:  # a tokenizer that cannot be weakly referenced: a view for this reply alone
        view = _ParsingView(tokenizer)
    return parse_response(ids, tokenizer.response_template, prefix=prefix, tools=tools, tokenizer=view)


@functools.cache
def _token_id_parser() -> Any:
    """transformers' ``chat_parsing.parse_response`` where it takes a tokenizer (parses token ids), else None."""
    try:
        from transformers.utils.chat_parsing import parse_response
    except ImportError:
        return None
    return parse_response if "tokenizer" in inspect.signature(parse_response).parameters else None


def _tool_call_opener(tokenizer: Any) -> re.Pattern[str] | None:
    """The pattern that starts a tool call in this model's format (``<tool_call>`` for Qwen)."""
    fields = (getattr(tokenizer, "response_template", None) or {}).get("fields", {})
    spec = fields.get("tool_calls") or {}
    if spec.get("open"):
        return re.compile(re.escape(spec["open"]))
    if spec.get("open_pattern"):
        return re.compile(spec["open_pattern"])
    return None


def _normalise_call(call: Any) -> ToolCallTurn:
    """One parsed tool call → ToolCallTurn (no call id yet), with an error for shapes the tools cannot run."""
    raw = json.dumps(call, ensure_ascii=False, default=str)
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        return ToolCallTurn(call_id="", name="", args={}, raw=raw, error="tool call has no function name")
    name, args = function["name"], function.get("arguments")
    if args is None:
        args = {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            return ToolCallTurn(call_id="", name=name, args={}, raw=raw, error=f"arguments are not valid JSON ({exc.msg})")
    if not isinstance(args, dict):
        return ToolCallTurn(call_id="", name=name, args={}, raw=raw, error="arguments must be a JSON object")
    return ToolCallTurn(call_id="", name=name, args=args)


def parse_reply(
    tokenizer: Any,
    ids: list[int],
    prefix: list[int],
    tools: list[dict[str, Any]] | None,
    finished: bool = True,
) -> Reply:
    """Parse one generated turn (``ids``, after the rendered ``prefix``) into text and tool calls."""
    eos = tokenizer.eos_token or ""
    try:
        parsed = _parse_ids(tokenizer, ids, prefix, tools or None)
        if not isinstance(parsed, dict):
            raise ValueError("the parser returned nothing")
    except (ValueError, TypeError, KeyError) as exc:
        return _unparsed_reply(tokenizer, ids, str(exc), finished)
    content = parsed.get("content") or ""
    if isinstance(content, str) and eos:
        content = content.removesuffix(eos)
    calls = [_normalise_call(call) for call in parsed.get("tool_calls") or []]
    if not isinstance(content, str):
        content = json.dumps(content, ensure_ascii=False)
    opener = _tool_call_opener(tokenizer)
    if not calls and opener is not None and opener.search(content):
        # The parser kept an unclosed tool call as text: the model tried to call and failed.
        return _unparsed_reply(tokenizer, ids, "tool call is not closed", finished)
    return Reply(content=content.strip(), calls=calls, finished=finished)


def _unparsed_reply(tokenizer: Any, ids: list[int], error: str, finished: bool) -> Reply:
    text = tokenizer.decode(ids, skip_special_tokens=True)
    opener = _tool_call_opener(tokenizer)
    match = opener.search(text) if opener is not None else None
    if match is None:
        return Reply(content=text.strip(), finished=finished)
    first_line = error.strip().splitlines()[0] if error.strip() else "unparseable"
    call = ToolCallTurn(call_id="", name="", args={}, raw=text[match.start() :], error=f"malformed tool call: {first_line}")
    return Reply(content=text[: match.start()].strip(), calls=[call], finished=finished)


__all__ = ["ensure_response_parser", "parse_reply"]
