"""Token bookkeeping for a local model: render once, then only ever append.

The prompt is rendered with the chat template once. After that the sequence only grows: the model's
generated ids are appended verbatim (re-rendering a tool call through the template may not give back
the tokens the model wrote, and the loss must be on what it wrote), and tool results are appended as
the template's rendering of the tool messages plus the next assistant header, computed as a suffix
delta against a small fixed conversation (as TRL's tool loop does). ``loss_mask`` is 1 exactly on
generated tokens, end-of-turn token included, and 0 on everything the template or the tools wrote.
"""

from __future__ import annotations

import weakref
from typing import Any

from ..errors import UserError
from .episode import Episode, Reply
from .parse import parse_reply


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[int]:
    """Token ids of the opening messages with the tools and the assistant header."""
    ids = tokenizer.apply_chat_template(
        messages, tools=tools or None, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids)


_PREFIXES: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], list[int]]] = weakref.WeakKeyDictionary()
"""Per tokenizer and tool name: the rendered one-call conversation that tool results are a suffix of."""


def tool_suffix_ids(tokenizer: Any, tool_messages: list[dict[str, Any]]) -> list[int]:
    """Ids the template writes after an assistant turn's end token for these tool results.

    Rendered against a fixed one-call conversation and taken as the difference, so the ids do not
    depend on how the template would re-serialise the model's own tool call.
    """
    name = tool_messages[0].get("name") or "tool"
    call = {"id": "call_0", "type": "function", "function": {"name": name, "arguments": {}}}
    head = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    prefixes = _PREFIXES.setdefault(tokenizer, {})
    key = (name, str(tokenizer.chat_template))  # a template changed later renders afresh
    if key not in prefixes:  # the same for every call of this tool: rendered once (~1 ms a render)
        prefix = list(tokenizer.apply_chat_template(head, add_generation_prompt=False, tokenize=True,
                                                    return_dict=False))
        # Templates such as Qwen's write "<|im_end|>\n" after a turn; the model stops at "<|im_end|>",
        # so the delta must start right after the end token, newline included.
        ends = [i for i, tok in enumerate(prefix) if tok == tokenizer.eos_token_id]
        prefixes[key] = prefix[: ends[-1] + 1] if ends else prefix
    prefix = prefixes[key]
    full = list(tokenizer.apply_chat_template(
        head + tool_messages, add_generation_prompt=True, tokenize=True, return_dict=False
    ))
    if full[: len(prefix)] != prefix:
        raise ValueError("chat template is not prefix-preserving: tool results change earlier tokens")
    return full[len(prefix) :]


def start(episode: Episode, tokenizer: Any) -> None:
    """Render the episode's opening messages; everything rendered so far carries no loss."""
    ids = render_prompt(tokenizer, episode.messages, episode.tools)
    episode.token_ids = ids
    episode.loss_mask = [0] * len(ids)
    episode.logprobs = []
    episode.prompt_length = len(ids)
    episode.rendered = len(episode.messages)
    episode.n_tokens = len(ids)


def pending_context(episode: Episode, tokenizer: Any) -> list[int]:
    """Ids for messages added since the last generation (tool results), not yet appended."""
    pending = episode.messages[episode.rendered :]
    if not pending:
        return []
    roles = {message["role"] for message in pending}
    if roles != {"tool"}:
        raise ValueError(f"only tool messages can follow a generated turn, got roles {sorted(roles)}")
    return tool_suffix_ids(tokenizer, pending)


def append_context(episode: Episode, ids: list[int]) -> None:
    """Append template/tool tokens (loss 0) and mark the pending messages as rendered."""
    assert episode.token_ids is not None and episode.loss_mask is not None
    episode.token_ids.extend(ids)
    episode.loss_mask.extend([0] * len(ids))
    episode.rendered = len(episode.messages)
    episode.n_tokens = len(episode.token_ids)


def append_generated(episode: Episode, ids: list[int], logprobs: list[float]) -> None:
    """Append the model's own ids verbatim (loss 1) with their sampling log-probs.

    The loop appends exactly one assistant message per generated turn, which these ids stand for.
    """
    assert episode.token_ids is not None and episode.loss_mask is not None and episode.logprobs is not None
    episode.token_ids.extend(ids)
    episode.loss_mask.extend([1] * len(ids))
    episode.logprobs.extend(logprobs)
    episode.rendered = len(episode.messages) + 1
    episode.n_tokens = len(episode.token_ids)


def open_turn(episode: Episode, tokenizer: Any, max_trajectory_tokens: int, max_new_tokens: int,
              context_limit: int | None = None) -> int:
    """Render what a turn starts from (the prompt, or the tool results since the last turn) and return how
    many tokens the turn may generate; 0 when nothing fits, and then the pending results are left out of
    the ids (they would carry no loss). ``context_limit``: the engine's own context length, if any."""
    if episode.token_ids is None:
        start(episode, tokenizer)
    context = pending_context(episode, tokenizer)
    room = max_trajectory_tokens - episode.n_tokens - len(context)
    if context_limit:
        room = min(room, context_limit - episode.n_tokens - len(context))
    if room <= 0:
        return 0
    append_context(episode, context)
    return min(max_new_tokens, room)


def close_turn(episode: Episode, tokenizer: Any, ids: list[int], logprobs: list[float], stop_ids: list[int]) -> Reply:
    """Append a generated turn (its ids and sampling log-probs) and parse it into text and tool calls."""
    prefix = list(episode.token_ids or [])
    append_generated(episode, ids, logprobs)
    return parse_reply(tokenizer, ids, prefix, episode.tools, finished=bool(ids) and ids[-1] in stop_ids)


def out_of_budget() -> Reply:
    """The reply of a turn for which nothing fits (``open_turn`` returned 0)."""
    return Reply(content="", finished=False, out_of_budget=True)


def end_token_ids(source: str, *values: Any) -> list[int]:
    """Token ids a turn stops at: every id in ``values`` (ints or lists of them, e.g. the tokenizer's
    ``eos_token_id`` and a generation config's); a UserError naming ``source`` when there is none."""
    ids: set[int] = set()
    for value in values:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if not ids:
        raise UserError(f"{source}: the tokenizer has no end-of-sequence token to stop generation at")
    return sorted(ids)


__all__ = ["append_context", "close_turn", "open_turn", "out_of_budget", "append_generated", "end_token_ids", "pending_context", "render_prompt", "start", "tool_suffix_ids"]
