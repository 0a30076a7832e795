"""Tool-call parsing and token bookkeeping on the tiny model's real tokenizer and chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrft.agent.parse import ensure_response_parser, parse_reply
from agentrft.agent.render import render_prompt, tool_suffix_ids
from agentrft.errors import UserError
from agentrft.tools.corpus_tools import tool_specs


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ensure_response_parser(tok)
    return tok


@pytest.fixture(scope="module")
def prefix(tokenizer) -> list[int]:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}]
    return render_prompt(tokenizer, messages, tool_specs())


def parse(tokenizer, prefix, text: str, finished: bool = True):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return parse_reply(tokenizer, ids, prefix, tool_specs(), finished)


def call(name: str, arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def test_well_formed_calls(tokenizer, prefix):
    reply = parse(tokenizer, prefix, "Let me look.\n" + call("search", {"query": "q", "top_k": 2}) + "\n" + call("read", {"path": "a"}) + "<|im_end|>")
    assert reply.content == "Let me look."
    assert [(c.name, c.args, c.error) for c in reply.calls] == [("search", {"query": "q", "top_k": 2}, None), ("read", {"path": "a"}, None)]


def test_arguments_typed_by_the_tool_schema(tokenizer, prefix):
    (c,) = parse(tokenizer, prefix, call("search", {"query": "q", "top_k": "2"}) + "<|im_end|>").calls
    assert c.args == {"query": "q", "top_k": 2}


def test_final_answer_is_content(tokenizer, prefix):
    reply = parse(tokenizer, prefix, "$210M<|im_end|>")
    assert reply.content == "$210M" and reply.calls == [] and reply.finished


@pytest.mark.parametrize(
    "text, error",
    [
        ('<tool_call>\n{"name": "search", "arguments": {"query": "x"}\n</tool_call><|im_end|>', "malformed tool call"),
        ("<tool_call>\n[1, 2]\n</tool_call><|im_end|>", "tool call has no function name"),
        ('<tool_call>\n{"name": "read", "arguments": [1]}\n</tool_call><|im_end|>', "arguments must be a JSON object"),
        ('<tool_call>\n{"arguments": {}}\n</tool_call><|im_end|>', "tool call has no function name"),
        ('I will search <tool_call>\n{"name": "search", "argu', "malformed tool call"),
    ],
)
def test_malformed_calls_become_recorded_errors(tokenizer, prefix, text, error):
    reply = parse(tokenizer, prefix, text)
    assert len(reply.calls) == 1
    assert reply.calls[0].error.startswith(error) and reply.calls[0].raw


@pytest.mark.parametrize(
    "text",
    [
        "Let me look.\n" + call("search", {"query": "Q3 2025 margin", "top_k": "2"}) + "<|im_end|>",
        call("read", {"path": "filings/h.html"}) + "\n" + call("list", {"prefix": "filings/"}) + "<|im_end|>",
        "Operating margin: 13.4%<|im_end|>",
        'I will search <tool_call>\n{"name": "search", "argu',
        "<tool_call>\n[1, 2]\n</tool_call><|im_end|>",
        "a spelled-out <|im_end|> and <tool_call> in the text, then € and 中<|im_end|>",
    ],
)
def test_the_kept_parsing_view_parses_as_the_tokenizer_does(tokenizer, prefix, text):
    from agentrft.agent import parse as parse_module

    def outcome(parse_call):  # the parsed message, or the error it raised
        try:
            return parse_call()
        except ValueError as exc:
            return type(exc), str(exc)

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expected = outcome(lambda: tokenizer.parse_response(ids, prefix=prefix, tools=tool_specs()))
    for _ in range(2):  # the view is built on the first reply and reused on the second
        assert outcome(lambda: parse_module._parse_ids(tokenizer, ids, prefix, tool_specs())) == expected
    kept = parse_module._views[tokenizer].added_tokens_decoder  # the added tokens that are control tokens
    controls = set(tokenizer._get_control_tokens(tokenizer.chat_template))
    assert kept == {i: t for i, t in tokenizer.added_tokens_decoder.items() if t.content in controls}
    assert {"<|im_end|>", "<tool_call>"} <= {t.content for t in kept.values()}


def test_tool_suffix_is_the_template_rendering_after_the_end_token(tokenizer):
    suffix = tool_suffix_ids(tokenizer, [{"role": "tool", "name": "read", "content": "Revenue: $1M"}])
    assert tokenizer.decode(suffix) == "\n<|im_start|>user\n<tool_response>\nRevenue: $1M\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    two = tool_suffix_ids(tokenizer, [{"role": "tool", "name": "a", "content": "1"}, {"role": "tool", "name": "b", "content": "2"}])
    assert tokenizer.decode(two).count("<tool_response>") == 2 and tokenizer.decode(two).count("<|im_start|>user") == 1


def test_unknown_chat_template_is_a_user_error(tokenizer):
    import copy

    other = copy.deepcopy(tokenizer)
    other.response_template = None
    other.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(UserError, match="unknown chat template"):
        ensure_response_parser(other, "my-model")
