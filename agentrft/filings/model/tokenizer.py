"""A byte-level BPE tokenizer trained on the corpus, wrapped with the Qwen2.5 chat template TRL ships.

Three choices here make copying a figure out of a tool result learnable for a ~1M-parameter model
(without them the model answered few val rows right; ``bench/RESULTS.md``):

- numbers are cut into chunks of up to three digits, left to right (`1,430` is `1` `,` `430`), and a
  decimal with up to three digits is one token (`27.5`, `1.43`), so a figure is copied chunk by chunk
  and a highlight figure in one step;
- each metric label of the corpus is one token in each of its spellings: the start of a filing line
  (`Net income: $`, `Gross margin: `, so the figure directly follows the label token and one
  induction step finds it), the bare label, and ` net income` as questions spell it;
- byte-level BPE with no lossy step, so ``decode(encode(x)) == x`` — the response parser reads the
  decoded text, and a lossy round-trip misreads tool calls.

Why digits and labels are *added tokens* rather than a pre-tokenizer rule: ``AutoTokenizer`` loads
any ``qwen2`` checkpoint as ``Qwen2Tokenizer``, which rebuilds the pre-tokenizer (Qwen2's regex, one
digit per piece) and an NFC normalizer from code, ignoring ours in tokenizer.json. Added tokens are
matched before either runs (leftmost-longest), so they survive that rebuild; the backend built here
uses Qwen2's exact pre-tokenizer and normalizer so that the tokenizer we train with is the one every
later step loads. The one consequence: text is NFC-normalised, so round-trips are exact for NFC text
(all text the tools return; other text comes back as its NFC form).

A fourth choice keeps sequences short enough to train on two cores: the system turn (our system
prompt, the template's tools preamble, one JSON line per tool) is the same in every conversation and
is ~400 tokens of BPE; each of its constant pieces is one added token instead, so it costs ~10. The
model conditions on it all the same; a row with different tool specs simply falls back to BPE.

The special tokens split the text before anything else; encoding a conversation piecewise at those
boundaries (prompt, each generated turn, each tool result) therefore gives the same ids as encoding
it whole, which keeps the agent loop's loss mask on the tokens it means to cover.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from selectolax.lexbor import LexborHTMLParser
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from ..facts import METRIC_LABELS
from .prompts import SYSTEM_PROMPT

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOOL_TAGS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
DEFAULT_VOCAB_SIZE = 1536
"""BPE merges learned from the corpus; the 1,110 digit chunks, 2,000 decimals and the labels come on top."""

DIGIT_CHUNKS = [f"{i:0{width}d}" for width in (3, 2, 1) for i in range(10**width)]
DECIMALS = [f"{i}.{j}" for i in range(100) for j in range(10)] + [f"{i}.{j:02d}" for i in range(10) for j in range(100)]
"""``27.5`` and ``1.43`` as one token each: a margin or a $-billion figure is then copied in one step."""
# A highlights line of a filing: `Operating margin: 13.4%`, `Revenue: $842M`, `Net income: -$3M`.
_LABEL_LINE = re.compile(r"^([A-Z][A-Za-z&/\- ]{1,38}[A-Za-z]): [-$(]?\$?\d")
_CORPUS_SUFFIXES = {".html", ".htm", ".txt", ".md"}


def document_text(path: Path) -> str:
    """The readable text of one corpus document (HTML rendered to text, other files as they are)."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() not in {".html", ".htm"}:
        return raw

    tree = LexborHTMLParser(raw)
    for node in tree.css("script, style"):
        node.decompose()
    root = tree.body or tree.root
    text = root.text(separator="\n") if root is not None else ""
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def corpus_documents(corpus_dir: Path) -> list[tuple[str, str]]:
    """(relative path, text) of every document under ``corpus_dir``, in a stable order."""
    docs = []
    for path in sorted(p for p in corpus_dir.rglob("*") if p.is_file()):
        if path.suffix.lower() in _CORPUS_SUFFIXES:
            docs.append((path.relative_to(corpus_dir).as_posix(), document_text(path)))
    return docs


def find_metric_labels(docs: list[tuple[str, str]], min_docs: int = 2) -> list[str]:
    """Labels of ``Label: figure`` lines that recur across documents (the filings' highlights), and the
    generator's own labels."""
    seen: Counter[str] = Counter()
    for _, text in docs:
        seen.update({m.group(1) for line in text.splitlines() if (m := _LABEL_LINE.match(line))})
    labels = {label for label, n in seen.items() if n >= min_docs} | set(METRIC_LABELS.values())
    return sorted(labels)


def label_tokens(labels: Iterable[str]) -> list[str]:
    """Each label as a filing line starts (``Net income: $``, ``Gross margin: ``), as the filing writes it
    elsewhere, and as a question spells it (lower case, after a space)."""
    tokens: list[str] = []
    for label in labels:
        for form in (f"{label}: $", f"{label}: ", label, " " + label.lower()):
            if form not in tokens:
                tokens.append(form)
    return tokens


def _protocol_texts(paths: list[str], labels: list[str], tool_specs: list[dict]) -> Iterator[str]:
    """Text in the shape of the conversations the model will see: tool calls, results, the tools block."""
    tools_block = "\n".join(json.dumps(spec) for spec in tool_specs)
    for _ in range(8):
        yield f"<|im_start|>system\n{SYSTEM_PROMPT}\n\n# Tools\n\n<tools>\n{tools_block}\n</tools><|im_end|>\n"
    for i, path in enumerate(paths):
        label = labels[i % len(labels)].lower() if labels else "figure"
        stem = Path(path).stem.replace("-", " ")
        calls = [
            {"name": "search", "arguments": {"query": f"{stem} {label}"}},
            {"name": "read", "arguments": {"path": path}},
            {"name": "list", "arguments": {"prefix": path.split("/")[0]}},
        ]
        for call in calls:
            yield f"<|im_start|>assistant\n<tool_call>\n{json.dumps(call)}\n</tool_call><|im_end|>\n"
        yield f"<|im_start|>user\n<tool_response>\n{path} (score 0.{(i * 37) % 90 + 10})\n</tool_response><|im_end|>\n"


def train_tokenizer(
    corpus_dir: Path, tool_specs: list[dict], vocab_size: int = DEFAULT_VOCAB_SIZE
) -> PreTrainedTokenizerFast:
    """Train the tokenizer on ``corpus_dir`` and wrap it with the Qwen2.5 chat template and its parser."""
    from trl.chat_template_utils import add_response_schema, qwen2_5_chat_template

    docs = corpus_documents(corpus_dir)
    labels = find_metric_labels(docs)

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [text for _, text in docs] + list(_protocol_texts([p for p, _ in docs], labels, tool_specs))
    tok.train_from_iterator(texts, trainer=trainer)
    # Tool tags and labels are ordinary (non-special) added tokens: decoding keeps them, as Qwen2.5 does.
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TOOL_TAGS])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in label_tokens(labels)])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in DECIMALS + DIGIT_CHUNKS])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
        chat_template=qwen2_5_chat_template,
    )
    tokenizer.add_tokens(
        [AddedToken(t, normalized=False, special=False) for t in preamble_pieces(tokenizer, tool_specs)]
    )
    return add_response_schema(tokenizer)


def preamble_pieces(tokenizer: PreTrainedTokenizerFast, tool_specs: list[dict]) -> list[str]:
    """The constant pieces of the system turn: the system prompt, the tools header, each tool's line, the footer."""
    marker = "\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": marker}], tools=tool_specs, tokenize=False
    )
    body = text.split(marker, 1)[1].rsplit("<|im_end|>", 1)[0]
    lines = [json.dumps(spec, ensure_ascii=False) for spec in tool_specs]
    pieces = [SYSTEM_PROMPT]
    rest = body
    for line in lines:
        head, found, rest = rest.partition("\n" + line)
        if not found:  # the template serialises tools differently: keep only the system prompt
            return pieces
        pieces += [head, "\n" + line] if head else ["\n" + line]
    return pieces + ([rest] if rest else [])


__all__ = [
    "DECIMALS",
    "DIGIT_CHUNKS",
    "SPECIAL_TOKENS",
    "TOOL_TAGS",
    "corpus_documents",
    "document_text",
    "find_metric_labels",
    "label_tokens",
    "preamble_pieces",
    "train_tokenizer",
]
