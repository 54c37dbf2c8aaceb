"""What is measured for every model, whatever runs it: accuracy, perplexity, latency, size.

Both engines -- onnxruntime-genai for the targets (:mod:`.runtime`), transformers for the
PyTorch reference (:mod:`.reference`) -- implement :class:`Engine`; the measuring code here
is shared so that the figures are comparable by construction:

* **accuracy**: greedy answer to each eval prompt, compared like the fine-tuning evaluation;
* **perplexity**: exp of the mean negative log-likelihood of the answer tokens given the prompt;
* **latency**: a 32-token prompt, 32 new tokens forced (EOS ignored), batch 1; prefill is the
  time to the first new token, decode the rate of the other 31; median (p50) and p95 over
  repeated runs after a warm-up.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Protocol, TypedDict

import numpy as np

from slmops_pipelines.steps.data import Example
from slmops_pipelines.steps.evaluate import is_match

LATENCY_PROMPT = (
    "The quick brown fox jumps over the lazy dog while the small language model measures how fast it can read "
    "a prompt and write an answer one token at a time, on whatever hardware it was built for."
)


class MeasureOptions(TypedDict):
    """The keyword arguments of :func:`measure` that every model of one job is measured with."""

    wanted: set[str]
    match: str
    max_new_tokens: int


class Engine(Protocol):
    def greedy(
        self, prompt_ids: list[int], max_new_tokens: int, *, ignore_eos: bool = False, on_token=None
    ) -> list[int]:
        """Generate greedily; call ``on_token()`` after each new token."""

    def greedy_all(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """:meth:`greedy` for each prompt, in order (an engine may batch them)."""

    def answer_nll(self, prompt_ids: list[int], answer_ids: list[int]) -> float:
        """Sum of -log p(answer token) given the prompt and the previous answer tokens."""

    def answer_nlls(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        """:meth:`answer_nll` of each (prompt, answer) pair, in order (an engine may batch them)."""


class OneAtATime:
    """:class:`Engine`'s list methods as one call per prompt, for engines that do not batch
    (onnxruntime-genai here: a target's figures are those of its own batch of one; the
    benchmarks' peers)."""

    def greedy_all(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        return [self.greedy(prompt, max_new_tokens) for prompt in prompts]  # type: ignore[attr-defined]

    def answer_nlls(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        return [self.answer_nll(prompt, answer) for prompt, answer in pairs]  # type: ignore[attr-defined]


@dataclass
class Latency:
    prefill_ms_p50: float
    prefill_ms_p95: float
    decode_tokens_per_s_p50: float
    decode_ms_per_token_p50: float
    decode_ms_per_token_p95: float
    runs: int
    threads: int | None = None  # the intra-op threads the figures were measured with


@dataclass
class ModelMetrics:
    accuracy: float | None = None
    correct: int | None = None
    total: int | None = None
    perplexity: float | None = None
    latency: Latency | None = None
    size_mb: float | None = None
    rouge_l: float | None = None
    bleu: float | None = None
    samples: list[dict[str, str]] = field(default_factory=list)
    skipped: str | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ModelMetrics:
        latency = data.get("latency")
        return cls(**{**data, "latency": Latency(**latency) if latency else None})


def deltas(metrics: dict[str, Any], against: dict[str, Any]) -> dict[str, float]:
    """Differences of two measurements (as JSON): quality as ``ours - theirs``, speed as ratios."""
    found = {}
    for key in ("accuracy", "perplexity", "rouge_l", "bleu"):
        if metrics.get(key) is not None and against.get(key) is not None:
            found[key] = metrics[key] - against[key]
    ours, theirs = metrics.get("latency"), against.get("latency")
    if ours and theirs:
        found["decode_speedup"] = ours["decode_tokens_per_s_p50"] / theirs["decode_tokens_per_s_p50"]
        found["prefill_speedup"] = theirs["prefill_ms_p50"] / ours["prefill_ms_p50"]
    return found


def generate_answers(engine: Engine, tokenizer, examples: list[Example], *, max_new_tokens: int) -> list[str]:
    prompts = [tokenizer(e.prompt_text, add_special_tokens=False)["input_ids"] for e in examples]
    answers = engine.greedy_all(prompts, max_new_tokens)
    return [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in answers]


def score_answers(
    metrics: ModelMetrics, answers: list[str], examples: list[Example], *, match: str, wanted: set[str]
) -> None:
    """Accuracy, ROUGE-L and BLEU of generated answers against the expected ones."""
    expected = [e.answer for e in examples]
    if "accuracy" in wanted:
        metrics.correct = sum(is_match(a, e, match) for a, e in zip(answers, expected, strict=True))
        metrics.total = len(expected)
        metrics.accuracy = metrics.correct / metrics.total
    if "rouge" in wanted:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        metrics.rouge_l = statistics.fmean(
            scorer.score(e, a)["rougeL"].fmeasure for a, e in zip(answers, expected, strict=True)
        )
    if "bleu" in wanted:
        import sacrebleu

        metrics.bleu = sacrebleu.corpus_bleu(answers, [expected]).score
    metrics.samples = [
        {"expected": e, "generated": a} for a, e in list(zip(answers, expected, strict=True))[:8]
    ]


def measure(
    engine: Engine,
    tokenizer,
    examples: list[Example],
    *,
    wanted: set[str],
    match: str,
    max_new_tokens: int,
    size_mb: float | None,
    latency_runs: int = 5,
) -> ModelMetrics:
    """Every wanted metric of one model."""
    metrics = ModelMetrics(size_mb=size_mb if "size" in wanted else None)
    if examples and wanted & {"accuracy", "rouge", "bleu"}:
        answers = generate_answers(engine, tokenizer, examples, max_new_tokens=max_new_tokens)
        score_answers(metrics, answers, examples, match=match, wanted=wanted)
    if examples and "perplexity" in wanted:
        metrics.perplexity = measure_perplexity(engine, tokenizer, examples)
    if "latency" in wanted:
        metrics.latency = measure_latency(engine, latency_prompt_ids(tokenizer), runs=latency_runs)
    return metrics


def measure_perplexity(engine: Engine, tokenizer, examples: list[Example]) -> float:
    pairs = [
        (
            tokenizer(e.prompt_text, add_special_tokens=False)["input_ids"],
            tokenizer(e.completion_text, add_special_tokens=False)["input_ids"],
        )
        for e in examples
    ]
    pairs = [(prompt, answer) for prompt, answer in pairs if answer]
    count = sum(len(answer) for _, answer in pairs)
    return math.exp(sum(engine.answer_nlls(pairs)) / count) if count else float("nan")


def latency_prompt_ids(tokenizer, length: int = 32) -> list[int]:
    ids = tokenizer(LATENCY_PROMPT, add_special_tokens=False)["input_ids"]
    while len(ids) < length:
        ids = ids + ids
    return ids[:length]


def measure_latency(engine: Engine, prompt_ids: list[int], *, new_tokens: int = 32, runs: int = 5) -> Latency:
    prefill, per_token, rates = [], [], []
    for run in range(runs + 1):  # the first run warms caches and allocators up
        stamps: list[float] = []
        started = time.perf_counter()
        engine.greedy(prompt_ids, new_tokens, ignore_eos=True, on_token=partial(_stamp, stamps))
        if run == 0 or len(stamps) < 2:
            continue
        prefill.append((stamps[0] - started) * 1000)
        gaps = np.diff(stamps) * 1000
        per_token += list(gaps)
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    return Latency(
        prefill_ms_p50=statistics.median(prefill),
        prefill_ms_p95=float(np.percentile(prefill, 95)),
        decode_tokens_per_s_p50=statistics.median(rates),
        decode_ms_per_token_p50=float(np.percentile(per_token, 50)),
        decode_ms_per_token_p95=float(np.percentile(per_token, 95)),
        runs=runs,
        threads=getattr(engine, "threads", None),
    )


def _stamp(stamps: list[float]) -> None:
    stamps.append(time.perf_counter())


def log_softmax_at(logits: np.ndarray, token: int) -> float:
    row = logits.astype(np.float64)
    top = row.max()
    return float(row[token] - top - math.log(np.exp(row - top).sum()))
