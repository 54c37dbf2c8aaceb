"""Evaluation of a fine-tune: does the model now produce the expected answers?

For each eval prompt the model generates greedily (batches that start from the prompts'
shared prefix, computed once: steps/generation.py; stopping at end-of-turn) and the answer
is compared with the expected one, trimmed and case-folded: ``exact`` needs equality,
``startsWith`` accepts an answer that begins with the expected text.  The base model is
evaluated the same way (the adapter switched off), so the report shows what fine-tuning
gained.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from slmops_pipelines.specs import FineTuneJobSpec
from slmops_pipelines.steps.data import Example
from slmops_pipelines.steps.generation import greedy_answers

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class AccuracyResult:
    accuracy: float
    correct: int
    total: int
    seconds: float
    samples: list[dict[str, str]] = field(default_factory=list)  # a few (expected, generated) pairs
    metrics: dict[str, float] = field(default_factory=dict)  # evaluation.metrics, by name


class AccuracyOptions(TypedDict):
    """The keyword arguments of :func:`accuracy` that the fine-tuned and the base model share."""

    match: str
    max_new_tokens: int
    batch_size: int
    metrics: list[str] | tuple[str, ...]


def normalize(text: str) -> str:
    return " ".join(text.strip().casefold().split()).rstrip(".!")


def is_match(generated: str, expected: str, mode: str) -> bool:
    got, want = normalize(generated), normalize(expected)
    return got == want if mode == "exact" else got.startswith(want)


def accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    *,
    match: str,
    max_new_tokens: int,
    batch_size: int,
    metrics: list[str] | tuple[str, ...] = (),
) -> AccuracyResult:
    from slmops_pipelines.steps.metrics import compute_metrics

    started = time.time()
    answers = greedy_answers(
        model,
        tokenizer,
        [e.prompt_text for e in examples],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    hits = [is_match(a, e.answer, match) for a, e in zip(answers, examples, strict=True)]
    samples = [
        {"expected": e.answer, "generated": a.strip()}
        for a, e in list(zip(answers, examples, strict=True))[:8]
    ]
    return AccuracyResult(
        accuracy=sum(hits) / len(hits) if hits else 0.0,
        correct=sum(hits),
        total=len(hits),
        seconds=time.time() - started,
        samples=samples,
        metrics=compute_metrics(list(metrics), [a.strip() for a in answers], [e.answer for e in examples]),
    )


@dataclass
class FineTuneEvaluation:
    base: AccuracyResult | None
    finetuned: AccuracyResult

    def to_json(self) -> dict:
        return {"base": asdict(self.base) if self.base else None, "finetuned": asdict(self.finetuned)}


def load_finetuned(spec: FineTuneJobSpec, base_path: Path, result_dir: Path):
    """The fine-tuned model in fp32 for evaluation/merging: base + adapter, or the full model."""
    import torch
    from transformers import AutoModelForCausalLM

    from slmops_pipelines.models.load import load_tokenizer

    trust = spec.model.trust_remote_code
    tokenizer = load_tokenizer(result_dir, trust_remote_code=trust)
    if (result_dir / "adapter_config.json").exists():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, trust_remote_code=trust)
        return PeftModel.from_pretrained(base, result_dir), tokenizer
    return AutoModelForCausalLM.from_pretrained(
        result_dir, dtype=torch.float32, trust_remote_code=trust
    ), tokenizer


def evaluate_finetune(
    spec: FineTuneJobSpec,
    *,
    base_path: Path,
    result_dir: Path,
    examples: list[Example],
    merged_dir: Path | None = None,
) -> FineTuneEvaluation | None:
    """Accuracy of the fine-tuned (and base) model; optionally save the merged model too."""
    evaluation = spec.evaluation
    examples = examples[: evaluation.max_samples] if evaluation.max_samples else examples
    wants_accuracy = bool(evaluation.accuracy and examples and spec.dataset.has_completion)
    if not wants_accuracy and merged_dir is None:
        return None  # nothing to do: do not load the model for it
    model, tokenizer = load_finetuned(spec, base_path, result_dir)
    result = None
    if wants_accuracy:
        kwargs = AccuracyOptions(
            match=evaluation.match,
            max_new_tokens=evaluation.max_new_tokens,
            batch_size=evaluation.batch_size,
            metrics=evaluation.metrics,
        )
        finetuned = accuracy(model, tokenizer, examples, **kwargs)
        base = None
        if evaluation.compare_base:
            base = _base_accuracy(spec, model, base_path, tokenizer, examples, kwargs)
        result = FineTuneEvaluation(base=base, finetuned=finetuned)
    if merged_dir is not None and hasattr(model, "merge_and_unload"):
        merged = model.merge_and_unload()
        merged.save_pretrained(merged_dir)
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(merged_dir)
    return result


def _base_accuracy(spec, model, base_path, tokenizer, examples, kwargs: AccuracyOptions) -> AccuracyResult:
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            return accuracy(model, tokenizer, examples, **kwargs)
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        base_path, dtype=torch.float32, trust_remote_code=spec.model.trust_remote_code
    )
    return accuracy(base, tokenizer, examples, **kwargs)
