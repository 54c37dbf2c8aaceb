"""Every adapter measured: each separate adapter on its own data, against its own reference.

An OptimizeJob whose source has several adapters keeps them separate (``mergeAdapter:
false``), and each adapter serves a task of its own.  So each adapter gets:

* its evaluation rows: ``source.adapters[].evaluation.dataset``, default the job's
  ``evaluation.dataset``; rendered by the source stage into ``adapter-examples/<name>.jsonl``;
* its PyTorch reference: the base model with that adapter merged, fp32, on those rows (and
  the base model alone on them, for deltas): ``reference.json``'s ``byAdapter``;
* its row per target: the target with that adapter active, on those rows (``byAdapter`` of
  the target's result);
* its gates: the job's quality gates (accuracy, perplexity) against its own reference,
  each result naming the adapter.

Latency and size are measured once per target (with the first adapter active) and once for
the reference: the adapters share one base model file, and a low-rank adapter changes the
work per token little.  Their gates (``minDecodeSpeedup``, ``maxSizeMb``) are the target's.
The first adapter's figures stay the target's own ``metrics`` (what single-adapter readers
read); with one adapter, the target is that adapter and nothing here applies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmops_pipelines.models import cache_root
from slmops_pipelines.specs import DatasetSpec, OptimizeJobSpec

if TYPE_CHECKING:
    from slmops_pipelines.stages.optimize_source import ResolvedSource
    from slmops_pipelines.steps.data import Example
    from slmops_pipelines.steps.optimize.gates import GateResult
    from slmops_pipelines.steps.optimize.measure import Engine, MeasureOptions, ModelMetrics
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

ADAPTER_EXAMPLES = "adapter-examples"
# Per adapter; the others (decodeSpeedup, sizeMb) are per target.
QUALITY_GATES = ("accuracyDrop", "perplexityIncrease")
RESOURCES = ("latency", "size")


@dataclass(frozen=True)
class EvaluationData:
    """The evaluation data of one adapter (or of the model, without adapters) and its spec field."""

    name: str | None
    dataset: DatasetSpec | None
    field: str


def evaluation_data(
    spec: OptimizeJobSpec, default: DatasetSpec | None, default_field: str
) -> list[EvaluationData]:
    """One entry per adapter in spec order (its own dataset, else ``default``); one without adapters."""
    entries = []
    for index, ref in enumerate(spec.source.adapter_refs()):
        own = ref.evaluation.dataset if ref.evaluation else None
        field = f"{spec.source.adapter_field(index)}.evaluation.dataset" if own else default_field
        entries.append(EvaluationData(ref.name, own or default, field))
    return entries or [EvaluationData(None, default, default_field)]


def several_adapters(spec: OptimizeJobSpec) -> bool:
    """Whether each adapter is measured on its own (several adapters, kept separate by validation)."""
    return len(spec.source.adapter_refs()) > 1


def write_examples(path: Path, examples: list[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(asdict(example)) + "\n" for example in examples))


def read_examples(path: Path) -> list[Example]:
    from slmops_pipelines.steps.data import Example

    return [Example(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def render_examples(spec: OptimizeJobSpec, data: EvaluationData, tokenizer) -> list[Example]:
    """The rendered rows of ``data`` (none without a dataset), at most ``evaluation.maxSamples``."""
    if data.dataset is None:
        return []
    from slmops_pipelines.steps.data import evaluation_examples

    examples = evaluation_examples(
        data.dataset, tokenizer=tokenizer, seed=0, cache_dir=cache_root(), field_prefix=data.field
    )
    limit = spec.evaluation.max_samples
    return examples[:limit] if limit else examples


def quality_only(metrics: ModelMetrics) -> ModelMetrics:
    """The figures that differ per adapter: latency and size are the target's."""
    return replace(metrics, latency=None, size_mb=None)


# -- the source stage: one reference per adapter -----------------------------------------------


@dataclass
class References:
    """What the source stage measured for the first adapter, reused as that adapter's row."""

    examples: list[Example]
    finetuned: ModelMetrics
    base: ModelMetrics | None
    wanted: set[str]


def _merged_with(source: ResolvedSource, base_path: Path, name: str):
    """The base model with adapter ``name`` merged, fp32: that adapter's PyTorch reference."""
    from peft import PeftModel

    from slmops_pipelines.models.load import load_causal_lm

    model = load_causal_lm(
        base_path, field="source.model.uri", trust_remote_code=source.base.trust_remote_code
    )
    return PeftModel.from_pretrained(model, source.adapters[name]).merge_and_unload()


def measure_adapter_references(
    spec: OptimizeJobSpec,
    source: ResolvedSource,
    *,
    base_path: Path,
    tokenizer,
    first: References,
    base_engine: Engine | None,
    wanted_for: Callable[[DatasetSpec | None], set[str]],
    options: MeasureOptions,
    prepared_dir: Path,
    say: Callable[[str, str], None],
) -> dict[str, dict[str, Any]]:
    """Each adapter's rows and PyTorch references (``reference.json``'s ``byAdapter``)."""
    from slmops_pipelines.steps.optimize.measure import measure
    from slmops_pipelines.steps.optimize.reference import TorchEngine

    entries = evaluation_data(spec, source.dataset, "evaluation.dataset")
    by_adapter = {}
    for index, data in enumerate(entries):
        name = data.name or ""
        if index == 0:  # measured already, as the job's reference
            examples, wanted = first.examples, first.wanted - set(RESOURCES)
            finetuned, base = quality_only(first.finetuned), first.base
        else:
            examples, wanted = (
                render_examples(spec, data, tokenizer),
                wanted_for(data.dataset) - set(RESOURCES),
            )
            quality: MeasureOptions = {**options, "wanted": wanted}
            say("reference", f"measuring the PyTorch model with adapter {name!r} ({len(examples)} rows)")
            model = _merged_with(source, base_path, name)
            finetuned = measure(TorchEngine(model, tokenizer), tokenizer, examples, size_mb=None, **quality)
            del model
            base = first.base if data.dataset == entries[0].dataset else None  # the same rows: measured
            if base is None and base_engine is not None and examples:
                base = measure(base_engine, tokenizer, examples, size_mb=None, **quality)
        write_examples(prepared_dir / ADAPTER_EXAMPLES / f"{name}.jsonl", examples)
        by_adapter[name] = {
            "dataset": data.dataset.uri if data.dataset else None,
            "rows": len(examples),
            "metrics": sorted(wanted),
            "finetuned_pytorch": finetuned.to_json(),
            "base_pytorch": base.to_json() if base else None,
        }
    return by_adapter


# -- a target stage: one row and one set of quality gates per adapter --------------------------


def measure_target_adapters(
    spec: OptimizeJobSpec,
    *,
    target_name: str,
    engine: GenaiEngine | None,
    tokenizer,
    target_metrics: ModelMetrics,
    references: dict[str, Any],
    options: MeasureOptions,
    prepared_dir: Path,
    say: Callable[[str, str], None],
) -> tuple[dict[str, dict[str, Any]], list[GateResult]]:
    """Each adapter's row on this target (``engine`` None: not measured here) and its quality gates."""
    from slmops_pipelines.steps.optimize.gates import check_gates
    from slmops_pipelines.steps.optimize.measure import ModelMetrics, deltas, measure

    rows, gates = {}, []
    for index, (name, reference) in enumerate(references["byAdapter"].items()):
        if engine is None:
            metrics = ModelMetrics(skipped=target_metrics.skipped)
        elif index == 0:  # the target's own measurement, made with this adapter active
            metrics = quality_only(target_metrics)
        else:
            examples = read_examples(prepared_dir / ADAPTER_EXAMPLES / f"{name}.jsonl")
            say("evaluate", f"{target_name} with adapter {name!r} ({len(examples)} rows)")
            engine.use_adapter(name)
            quality: MeasureOptions = {**options, "wanted": set(reference["metrics"])}
            metrics = measure(engine, tokenizer, examples, size_mb=None, **quality)
        as_json = metrics.to_json()
        rows[name] = {
            "rows": reference["rows"],
            "metrics": as_json,
            "vsFinetuned": deltas(as_json, reference["finetuned_pytorch"]),
            "vsBase": deltas(as_json, reference["base_pytorch"]) if reference["base_pytorch"] else {},
        }
        finetuned = ModelMetrics.from_json(reference["finetuned_pytorch"])
        checked = check_gates(target_name, spec.evaluation.gates, metrics, finetuned, adapter=name)
        gates += [g for g in checked if g.gate in QUALITY_GATES]
    return rows, gates
