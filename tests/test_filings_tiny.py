"""The tiny model build: tokenizer traps (round-trip, piecewise encoding), chat template, parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agentrft.filings.model.prompts import SYSTEM_PROMPT
from agentrft.tools.corpus_tools import tool_specs


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _conversation() -> list[dict]:
    call = {"name": "search", "arguments": {"query": "Henderson Q3 2025 operating margin"}}
    read = {"name": "read", "arguments": {"path": "filings/henderson-10q-2025-q3.html"}}
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "What was Henderson Industries' Q3 2025 operating margin?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]},
        {"role": "tool", "name": "search", "content": "filings/henderson-10q-2025-q3.html (score 0.87)\n  Operating margin: 13.4%"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": read}]},
        {"role": "tool", "name": "read", "content": "Henderson Industries\nRevenue: $1,430M\nOperating margin: 13.4%\n[... truncated]"},
        {"role": "assistant", "content": "13.4%"},
    ]


def _generated_text(message: dict) -> str:
    """What the model emits for an assistant message, up to and including its stop token."""
    calls = "".join(
        f"<tool_call>\n{json.dumps(c['function'])}\n</tool_call>" for c in message.get("tool_calls", [])
    )
    return (message["content"] or "") + calls + "<|im_end|>"


def test_saved_model_loads_with_auto_classes(tiny_model_dir: Path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert 0.5e6 < model.num_parameters() < 3e6
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.config.vocab_size == len(tokenizer)


@pytest.mark.parametrize(
    "text",
    [
        'Revenue: $1,430M\nOperating margin: 13.4% (-2.05)  \t\n\n',
        '<tool_call>\n{"name": "read", "arguments": {"path": "filings/atlas-10k-2024.html"}}\n</tool_call><|im_end|>',
        "naïve café — 日本語 😀 {}[]\\\"'` ~^ 0007 123456789",
        "   leading and trailing spaces   ",
    ],
)
def test_round_trip_is_exact(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_digits_come_in_chunks_of_three_and_labels_are_single_tokens(tokenizer) -> None:
    assert tokenizer.tokenize("1234567") == ["123", "456", "7"]
    assert " operating margin" in tokenizer.tokenize("Q3 operating margin?")
    assert "Operating margin" in tokenizer.tokenize("The Operating margin rose")


def test_a_highlight_figure_directly_follows_its_label_token(tokenizer) -> None:
    """The look-up is one induction step: label-line token, then the figure in one token (+ unit)."""
    assert tokenizer.tokenize("Operating margin: 13.4%")[:2] == ["Operating margin: ", "13.4"]
    assert tokenizer.tokenize("Net income: $107M")[:3] == ["Net income: $", "107", "M"]
    assert tokenizer.tokenize("Revenue: $1.43B")[:3] == ["Revenue: $", "1.43", "B"]
    assert tokenizer.tokenize("$1,430M") == ["$", "1", ",", "430", "M"]


def test_piecewise_encoding_equals_whole_conversation(tokenizer) -> None:
    """Prompt, each generated turn and each tool result encoded apart give the ids of the whole."""
    messages, tools = _conversation(), tool_specs()
    pieces: list[str] = []
    text = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tools=tools, tokenize=False, add_generation_prompt=True)
        assert prompt.startswith(text)
        pieces += [prompt[len(text):], _generated_text(message)]
        text = prompt + pieces[-1]
    whole = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    assert whole.startswith(text)
    piecewise = [i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False)]
    assert tokenizer.encode(whole, add_special_tokens=False)[: len(piecewise)] == piecewise
    assert tokenizer.encode(text, add_special_tokens=False) == piecewise


def test_demonstration_tool_calls_parse_with_the_response_parser(tokenizer) -> None:
    messages, tools = _conversation(), tool_specs()
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tools=tools, tokenize=False, add_generation_prompt=True)
        generated = tokenizer.encode(_generated_text(message), add_special_tokens=False)
        parsed = tokenizer.parse_response(generated, prefix=prompt)
        if message.get("tool_calls"):
            assert [c["function"] for c in parsed["tool_calls"]] == [c["function"] for c in message["tool_calls"]]
        else:
            assert parsed["content"] == message["content"] and not parsed.get("tool_calls")


def test_build_refuses_a_missing_corpus(tmp_path: Path) -> None:
    from agentrft.errors import UserError
    from agentrft.filings.model.tiny import build_tiny_model

    with pytest.raises(UserError, match="corpus directory not found"):
        build_tiny_model(tmp_path / "nope", tmp_path / "out")


def test_the_demo_config_sends_the_prompt_the_tiny_model_was_warm_started_with() -> None:
    """The core sends no system prompt of its own, so the demo's config must carry the tiny model's."""
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "tiny_config.yaml").read_text())
    assert config["system_prompt"] == SYSTEM_PROMPT
