"""Warm start: scripted demonstrations over HTTP, loss masks, a short SFT run, the cache, the CLI."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from agentrft.jsonl import read_models
from agentrft.filings.model.prompts import READ_BUDGET_CHARS
from agentrft.schema import Row

TOKEN = "sft-test-token"


@pytest.fixture(scope="module")
def tiny_tools(corpus_dir: Path):
    """The real tool server with the tiny model's read budget."""
    from agentrft.tools.local_server import running_server

    with running_server(corpus_dir=corpus_dir, token=TOKEN, read_budget=READ_BUDGET_CHARS) as url:
        yield url


@pytest.fixture(scope="module")
def train_rows(synth_dir: Path) -> list[Row]:
    return read_models(synth_dir / "research_train.jsonl", Row)


@pytest.fixture(scope="module")
def demos(train_rows: list[Row], tiny_tools: str):
    from agentrft.filings.model.warm_start import WarmStartSettings, collect_demonstrations

    return collect_demonstrations(train_rows[:40], tiny_tools, TOKEN, WarmStartSettings(seed=0))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_demonstrations_mix_strategies_and_classify_back(demos, train_rows: list[Row]) -> None:
    from agentrft.filings.model.scripted import classify_strategy

    by_id = {row.id: row for row in train_rows}
    counts = Counter(d.strategy for d in demos)
    assert set(counts) == {"good", "hasty", "wandering"} and counts["good"] > counts["hasty"]
    for demo in demos:
        assert classify_strategy(demo.tool_calls, by_id[demo.row_id]) == demo.strategy
        names = [name for name, _ in demo.tool_calls]
        if demo.strategy == "hasty":
            assert "read" not in names
        else:
            assert demo.correct and "read" in names
            read_outputs = [m["content"] for m in demo.messages if m.get("name") == "read"]
            assert all("truncated" in text or len(text) <= READ_BUDGET_CHARS + 80 for text in read_outputs)
    # Lookups read the right filing, and the figure they answer with is in what the server returned.
    good = [d for d in demos if d.strategy == "good" and d.task_type == "numerical_qa" and ":" not in d.metric]
    assert good and any(d.reference in d.messages[-2]["content"] for d in good)


def _masked_text(tokenizer, example: dict) -> str:
    return tokenizer.decode([i for i, m in zip(example["input_ids"], example["assistant_masks"]) if m])


def test_loss_mask_covers_exactly_the_generated_turns(demos, tokenizer) -> None:
    import json

    from agentrft.sft import encode_example

    for demo in demos[:10]:
        example = encode_example(tokenizer, demo.messages, demo.tools)
        expected = ""
        for message in demo.messages:
            if message["role"] != "assistant":
                continue
            calls = "".join(f"<tool_call>\n{json.dumps(c['function'])}\n</tool_call>"
                            for c in message.get("tool_calls", []))
            expected += message["content"] + calls + "<|im_end|>"
        # Exactly the model's own turns, end tokens included: no system, user or tool text.
        assert _masked_text(tokenizer, example) == expected


def test_drills_train_on_a_fresh_answer_only(demos, tokenizer) -> None:
    from agentrft.filings.facts import METRIC_LABELS
    from agentrft.filings.model.drills import drill_sources, make_drills
    from agentrft.sft import encode_example

    sources = drill_sources(demos, METRIC_LABELS)
    assert sources
    drills = make_drills(sources, 6, random.Random(1))
    assert len(drills) == 6
    originals = {demo.messages[1]["content"]: METRIC_LABELS[demo.metric] for demo, _ in sources}
    swapped = [m for m, _ in drills if m[1]["content"] not in originals]
    assert swapped  # some drills ask for another line of the filing than their demonstration did
    for messages, tools in drills:
        # only what the answer is read from: question, read call, its result, answer
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
        assert messages[2]["tool_calls"][0]["function"]["name"] == "read" and messages[3]["name"] == "read"
        answer = messages[-1]["content"]
        read = messages[3]["content"]
        assert answer in read  # the figure to copy is in what the model read
        label = answer.split(": ")[0]
        asked_plainly = [name for name in METRIC_LABELS.values() if f" {name.lower()}" in messages[1]["content"]]
        if asked_plainly:  # the question asks for the line the answer copies (its metric may be swapped)
            assert label in asked_plainly
        example = encode_example(tokenizer, messages, tools, answer_only=True)
        assert _masked_text(tokenizer, example) == answer + "<|im_end|>"


def test_lookup_pairs_point_a_drill_answer_at_its_figure_in_the_read(demos, tokenizer) -> None:
    from agentrft.filings.facts import METRIC_LABELS
    from agentrft.filings.model.drills import drill_from, drill_sources
    from agentrft.filings.model.pretrain import lookup_pairs, number_token_ids
    from agentrft.sft import encode_example

    numbers = number_token_ids(tokenizer)
    checked = 0
    for demo, label in drill_sources(demos, METRIC_LABELS)[:10]:
        messages = drill_from(demo, label, random.Random(checked))
        example = encode_example(tokenizer, messages, demo.tools, answer_only=True)
        ids, mask = example["input_ids"], example["assistant_masks"]
        query, key = lookup_pairs(ids, mask, numbers)
        start = mask.index(1)
        assert query + 1 >= start and ids[query + 1] in numbers  # the position that predicts the figure
        assert ids[key] == ids[query + 1] and key < start
        read_start = max(i for i, t in enumerate(ids[:start]) if t == tokenizer.convert_tokens_to_ids("<tool_response>"))
        assert key > read_start  # copied from the read, not from the question
        checked += 1
    assert checked == 10


def test_query_drills_search_for_the_company_and_period_their_question_names(demos, tokenizer) -> None:
    from agentrft.filings.facts import COMPANIES, METRIC_LABELS, Period
    from agentrft.filings.model.drills import make_query_drills, query_sources
    from agentrft.filings.model.pretrain import lookup_pairs, name_token_ids
    from agentrft.sft import encode_example

    companies = [c.name for c in COMPANIES]
    sources = query_sources(demos, companies, [label.lower() for label in METRIC_LABELS.values()])
    assert len(sources) == len(demos)  # every scripted strategy starts with a search
    drills = make_query_drills(sources, 30, random.Random(0))
    names = name_token_ids(tokenizer, companies)
    for messages, tools in drills:
        question = messages[1]["content"]
        call = messages[-1]["tool_calls"][0]["function"]
        assert messages[-1]["role"] == "assistant" and call["name"] == "search" and len(messages) == 3
        company = next(c for c in companies if call["arguments"]["query"].startswith(c + " "))
        assert company in question
        label = call["arguments"]["query"][len(company) + 1:]
        period = Period(int(label[2:6]), None) if label.startswith("FY") else Period(int(label[3:7]), int(label[1]))
        assert period.label in question or period.words in question  # "Q3 2025" or "the third quarter of 2025"
        example = encode_example(tokenizer, messages, tools, answer_only=True)
        ids, mask = example["input_ids"], example["assistant_masks"]
        assert _masked_text(tokenizer, example).startswith("<tool_call>")
        query, key = lookup_pairs(ids, mask, set(names) | set(names.values()), names)
        user = max(i for i in range(mask.index(1)) if tokenizer.decode([ids[i]]) == "user")
        assert user < key < mask.index(1)  # the look-up head is shown the company's name in the question
        assert tokenizer.decode([ids[key]]).strip() == tokenizer.decode([ids[query + 1]]).strip() == company.split()[0]
    assert len({m[1]["content"] for m, _ in drills}) == len(drills)  # fresh questions, not the demonstrations'
    assert not {m[1]["content"] for m, _ in drills} & {d.messages[1]["content"] for d in demos}


def test_short_warm_start_trains_on_assistant_tokens_and_saves(
    demos, tokenizer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from agentrft.filings.model.warm_start import WarmStartSettings, build_examples, train_on_examples_with_lookup

    settings = WarmStartSettings(epochs=1, max_steps=2, batch_size=4, drills_per_demo=0.25, query_drills_per_demo=0.5)
    examples, n_drills = build_examples(tokenizer, demos[:12], settings)
    assert n_drills == 3 + 6 and len(examples) == 12 + 9 + 12  # demonstrations, drills, look-up tables
    assert all("lookup_pairs" in e for e in examples)
    trainer, loss = train_on_examples_with_lookup(tiny_model_dir, examples, tmp_path / "warm", settings)
    assert trainer.state.global_step == 2 and loss is not None
    # The trainer's dataset: labels are -100 everywhere except where our mask is 1.
    for example, row in zip(examples, trainer.train_dataset):
        assert row["input_ids"] == example["input_ids"]
        assert [label != -100 for label in row["labels"]] == [bool(m) for m in example["assistant_masks"]]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "warm").num_parameters() > 0
    assert AutoTokenizer.from_pretrained(tmp_path / "warm").encode("13.4%") == tokenizer.encode("13.4%")


def test_max_seconds_stops_training_before_the_schedule_ends(demos, tokenizer, tiny_model_dir: Path, tmp_path: Path) -> None:
    """A baseline given a wall-time budget stops at it, wherever the schedule is, and still saves."""
    from agentrft.filings.model.warm_start import WarmStartSettings, build_examples, train_on_examples_with_lookup

    settings = WarmStartSettings(epochs=1, batch_size=2, drills_per_demo=0.0, query_drills_per_demo=0.0)
    examples, _ = build_examples(tokenizer, demos[:20], settings)
    trainer, _ = train_on_examples_with_lookup(tiny_model_dir, examples, tmp_path / "short", settings, max_seconds=1e-6)
    assert trainer.state.global_step == 1 < trainer.state.max_steps  # the budget is spent after one step
    assert (tmp_path / "short" / "config.json").is_file()


def test_generated_tool_calls_parse_after_a_few_steps(demos, tokenizer, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Overfit a handful of demonstrations, then sample: what the model writes parses as tool calls."""
    import torch

    from agentrft.filings.model.warm_start import WarmStartSettings, build_examples, train_on_examples_with_lookup

    settings = WarmStartSettings(epochs=80, batch_size=2, drills_per_demo=0.0, lookup_tables_per_demo=0.0, lookup_supervision=0.0,
                                 learning_rate=3e-3)
    good = [d for d in demos if d.strategy == "good"][:4]
    examples, _ = build_examples(tokenizer, good, settings)
    trainer, _ = train_on_examples_with_lookup(tiny_model_dir, examples, tmp_path / "overfit", settings)
    model = trainer.model.eval()
    prompt = tokenizer.apply_chat_template(good[0].messages[:2], tools=good[0].tools, tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=48, do_sample=False)
    generated = out[0, ids["input_ids"].shape[1]:].tolist()
    parsed = tokenizer.parse_response(generated, prefix=prompt)
    assert "tool_calls" in parsed, tokenizer.decode(generated)
    assert parsed["tool_calls"][0]["function"]["name"] == "search"


def test_cache_hits_only_on_the_same_key(tmp_path: Path, tiny_model_dir: Path, synth_dir: Path) -> None:
    from agentrft.filings.model.cache import cached_warm_model, store_warm_model, warm_start_key_parts

    rows = synth_dir / "research_train.jsonl"
    key = warm_start_key_parts(0, synth_dir / "corpus", rows, {"epochs": 8})
    assert cached_warm_model(tmp_path, key) is None
    stored = store_warm_model(tmp_path, key, tiny_model_dir)
    assert cached_warm_model(tmp_path, key) == stored and (stored / "config.json").is_file()
    assert cached_warm_model(tmp_path, warm_start_key_parts(1, synth_dir / "corpus", rows, {"epochs": 8})) is None
    assert cached_warm_model(tmp_path, warm_start_key_parts(0, synth_dir / "corpus", rows, {"epochs": 9})) is None
    assert cached_warm_model(tmp_path, {**key, "agentrft_version": "0.0.0"}) is None
    assert cached_warm_model(tmp_path, {**key, "rows_sha256": "0" * 64}) is None


def test_cached_files_come_back_only_whole_and_only_for_their_key(tmp_path: Path) -> None:
    from agentrft.filings.model.cache import restore_files, rollout_code_parts, store_files

    out = tmp_path / "out"
    out.mkdir()
    (out / "prior.jsonl").write_text("a\n")
    (out / "train.jsonl").write_text("b\n")
    key = {"kind": "test", "model": "m", **rollout_code_parts()}
    assert key["cpu"]["capability"] and len(key["agentrft_source_sha256"]) == 64
    store_files(tmp_path / "cache", key, [out / "prior.jsonl", out / "train.jsonl"])
    again = tmp_path / "again"
    assert not restore_files(tmp_path / "cache", {**key, "model": "other"}, [again / "prior.jsonl"])
    assert not restore_files(tmp_path / "cache", key, [again / "prior.jsonl", again / "missing.jsonl"])
    assert not again.exists()  # a miss writes nothing
    assert restore_files(tmp_path / "cache", key, [again / "prior.jsonl", again / "train.jsonl"])
    assert (again / "prior.jsonl").read_text() == "a\n" and (again / "train.jsonl").read_text() == "b\n"


def test_the_demo_cache_key_is_unchanged(tmp_path: Path) -> None:
    """The key ``agentrft demo`` looks its warm-started model up by (seed 0, the default settings, the corpus
    and rows of ``data synth --seed 0``). It changes only on purpose — a new recipe, setting, prompt, tool
    wording or version — never because code moved: a changed key costs every user a fresh warm start."""
    from agentrft.filings.model.cache import cache_key, warm_start_key_parts
    from agentrft.filings.model.warm_start import WarmStartSettings
    from agentrft.filings.synth import synth

    summary = synth(tmp_path, seed=0)
    parts = warm_start_key_parts(0, tmp_path / "corpus", summary.train_path, WarmStartSettings(seed=0).model_dump())
    assert cache_key(parts) == "94a2258145c59914a080e17b490b5a2f", parts


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentrft.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_line(tmp_path: Path, synth_dir: Path, tiny_model_dir: Path) -> None:
    bad = _cli("model", "tiny", "--corpus", str(tmp_path / "missing"), "--out", str(tmp_path / "m"))
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "corpus directory not found" in bad.stderr
    rows = str(synth_dir / "research_train.jsonl")
    no_model = _cli("model", "warm-start", "--model", str(tmp_path), "--rows", rows, "--tools-url", "http://127.0.0.1:9",
                    "--out", str(tmp_path / "o"))
    assert no_model.returncode == 1 and "no config.json" in no_model.stderr and "Traceback" not in no_model.stderr
    down = _cli("model", "warm-start", "--model", str(tiny_model_dir), "--rows", rows, "--tools-url", "http://127.0.0.1:9",
                "--out", str(tmp_path / "o"))
    assert down.returncode == 1 and "unreachable" in down.stderr and down.stderr.count("\n") == 1


def test_strategy_shares_name_what_each_rollout_did(train_rows: list[Row], tiny_tools: str, tiny_model_dir: Path) -> None:
    """Scripted rollouts through the real loop and tool server: one per strategy, each counted as such."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrft.agent import RolloutSettings, rollout
    from agentrft.agent.testing import ScriptedLocalPolicy, tool_call_text
    from agentrft.filings.model.measure import STRATEGIES, strategy_shares

    rows = [row for row in train_rows if row.metadata.task_type == "numerical_qa"][:4]
    plan = dict(zip((row.prompt for row in rows), ("good", "hasty", "wandering", "no_answer"), strict=True))
    evidence = {row.prompt: row.expected.evidence_path for row in rows}

    def script(messages: list[dict]) -> str:
        question = next(m["content"] for m in messages if m["role"] == "user")
        calls = sum(1 for m in messages if m["role"] == "tool")
        search = tool_call_text("search", {"query": question})
        read = tool_call_text("read", {"path": evidence[question]})
        steps = {"good": [search, read], "hasty": [], "wandering": [search, search, read],
                 "no_answer": [search] * 10}[plan[question]]
        return steps[calls] if calls < len(steps) else "Revenue: $1M"

    policy = ScriptedLocalPolicy(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                 AutoTokenizer.from_pretrained(tiny_model_dir), script)
    trajectories = rollout(rows, policy, tiny_tools, TOKEN, RolloutSettings(max_tool_calls=4, seed=0))
    assert strategy_shares(rows, trajectories) == {name: 0.25 for name in STRATEGIES}
    assert strategy_shares(rows, trajectories[:1]) == {"good": 1.0, "hasty": 0.0, "wandering": 0.0, "no_answer": 0.0}


def test_measured_strategies_are_kept_with_the_warm_start(train_rows: list[Row], tiny_tools: str, tiny_model_dir: Path,
                                                          tmp_path: Path, capsys) -> None:
    import shutil

    from agentrft.filings.model.cli import _measure_strategies
    from agentrft.filings.model.measure import STRATEGIES
    from agentrft.filings.model.warm_start import WarmStartResult, WarmStartSettings

    after = tmp_path / "warm"
    shutil.copytree(tiny_model_dir, after)
    result = WarmStartResult(out_dir=str(after), demonstrations=0, strategy_counts={}, demonstrations_correct={},
                             drills=0, examples=0, steps=0, train_seconds=0.0, final_loss=None,
                             settings=WarmStartSettings())
    (after / "warm_start.json").write_text(result.model_dump_json())
    _measure_strategies(result, tiny_model_dir, after, train_rows[:2], tiny_tools, TOKEN, seed=0)
    kept = WarmStartResult.model_validate_json((after / "warm_start.json").read_text())
    assert kept.measured_rollouts == 8
    for shares in (kept.strategies_before, kept.strategies_after):
        assert list(shares) == list(STRATEGIES) and abs(sum(shares.values()) - 1) < 0.01
    assert kept.strategies_before == kept.strategies_after  # the same weights, rows and seed
    assert "Strategies in 8 sampled rollouts (2 rows × 4)" in capsys.readouterr().out
