"""The stages of an OptimizeJob: prepare the source -> build and measure each target -> finish.

Both engines run these functions: the local engine one after another in one process, the
KFP pipeline as one component for the source, one per target in a ``dsl.ParallelFor``,
and one that collects them.  They hand each other folders:

* the **prepared source** folder (:func:`prepare_source`): ``merged/`` (the fine-tuned
  model with its adapter merged, fp32: what merged targets are exported from, and the fair
  reference), ``adapters/<name>/`` (PEFT adapters kept separate on request),
  ``examples.jsonl`` (rendered evaluation rows), ``calibration.json`` (token rows for
  static int8), ``reference.json`` (the PyTorch measurements), ``source.json`` (the rest);
* a **target** folder per target (:func:`build_target`): the ONNX model; its metrics,
  comparisons and gate results are returned as a JSON-able result;
* the output (:func:`write_report`, then :func:`publish_output`): ``targets/<name>/``,
  ``metrics.json``, ``report.html``, then ``manifest.json`` last -- or no manifest when a
  gate was violated.

Where the source comes from (a finished FineTuneJob, or a model with adapters) is
:mod:`.optimize_source`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmops_pipelines.errors import InputError, JobError
from slmops_pipelines.models import cache_root, input_cache, resolve_model
from slmops_pipelines.models.load import load_causal_lm
from slmops_pipelines.specs import DatasetSpec, ModelSpec, OptimizeJobSpec
from slmops_pipelines.specs.optimize import OptimizeTarget
from slmops_pipelines.stages import usage
from slmops_pipelines.stages.optimize_adapters import (
    QUALITY_GATES,
    EvaluationData,
    References,
    evaluation_data,
    measure_adapter_references,
    measure_target_adapters,
    read_examples,
    render_examples,
    several_adapters,
    write_examples,
)
from slmops_pipelines.stages.optimize_source import (
    JobLocator,
    ResolvedSource,
    base_field,
    load_merged,
    resolve_source,
)
from slmops_pipelines.stages.outputs import JobRun
from slmops_pipelines.stages.tracking import record_tracking
from slmops_pipelines.steps import publish
from slmops_pipelines.steps.optimize.serving import write_prompts
from slmops_pipelines.storage import ArtifactStore

if TYPE_CHECKING:
    from slmops_pipelines.steps.data import Example
    from slmops_pipelines.steps.optimize.export import ExportedModel
    from slmops_pipelines.steps.optimize.measure import MeasureOptions, ModelMetrics
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

Say = Callable[[str, str], None]  # (stage, message)


SOURCE_JSON = "source.json"
REFERENCE_JSON = "reference.json"
EXAMPLES = "examples.jsonl"
CALIBRATION = "calibration.json"


class GateError(JobError):
    def __init__(self, message: str) -> None:
        super().__init__(message, field="evaluation.gates", reason="GateViolated")


def _quiet(_stage: str, _message: str) -> None:
    pass


# -- stage 1: the prepared source ------------------------------------------------------------


def wanted_metrics(spec: OptimizeJobSpec, dataset: DatasetSpec | None) -> set[str]:
    """The metrics to measure on ``dataset``: accuracy, ROUGE and BLEU need answers, which a textTemplate has not.

    Validation refuses them for an ``evaluation.dataset`` (or an adapter's) with a textTemplate;
    a FineTuneJob's data is only known here.  Asked for by name: the job fails naming the
    field; by default: they are left out.
    """
    from slmops_pipelines.specs.optimize import ANSWER_METRICS

    wanted: set[str] = set(spec.evaluation.metrics)
    if dataset is None or not dataset.text_template or not wanted & set(ANSWER_METRICS):
        return wanted
    if "metrics" in spec.evaluation.model_fields_set:
        named = ", ".join(sorted(wanted & set(ANSWER_METRICS)))
        raise InputError(
            f"{named} compare generated answers with expected ones, and the evaluation data "
            "(dataset.textTemplate) has no answer: drop them or evaluate on data with a completion",
            field="evaluation.metrics",
        )
    return (wanted - set(ANSWER_METRICS)) or {"perplexity"}


def _calibration(spec: OptimizeJobSpec, dataset: DatasetSpec | None, tokenizer) -> list[list[int]] | None:
    """Training rows for the calibrated targets (static int8, GPTQ int4); checked before anything is built."""
    calibrated = [t for t in spec.targets if t.calibrated]
    if not calibrated:
        return None
    if dataset is None:
        what = "int8Mode static" if calibrated[0].precision == "int8" else "int4Algorithm gptq"
        raise InputError(
            f"target {calibrated[0].name!r}: {what} needs calibration rows: use a fineTuneJobRef source "
            "or set evaluation.dataset",
            field="targets",
        )
    from slmops_pipelines.steps.data import calibration_token_rows

    limit = max(t.quantization.calibration_samples for t in calibrated)
    return calibration_token_rows(dataset, tokenizer=tokenizer, cache_dir=cache_root(), limit=limit)


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20


def _relative(path: Path, root: Path) -> str:
    """Paths inside the prepared folder travel with it (a KFP artifact); others stay absolute."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _copy_adapters(source: ResolvedSource, prepared_dir: Path) -> dict[str, str]:
    """The adapters, copied into the prepared folder (a target pod sees only that folder)."""
    adapters = {}
    for name, folder in source.adapters.items():
        target = prepared_dir / "adapters" / name
        if folder.resolve() != target.resolve():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(folder, target)
        adapters[name] = f"adapters/{name}"
    return adapters


def _primary_data(spec: OptimizeJobSpec, source: ResolvedSource) -> EvaluationData:
    """The evaluation data of the job's reference: the first adapter's (default: the job's)."""
    default_field = (
        "evaluation.dataset" if spec.evaluation.dataset is not None else "source.fineTuneJobRef.dataset"
    )
    return evaluation_data(spec, source.dataset, default_field)[0]


def prepare_source(
    spec: OptimizeJobSpec, *, locate_job: JobLocator, prepared_dir: Path, say: Say = _quiet
) -> dict[str, Any]:
    """Resolve and merge the source, render the evaluation rows, measure the PyTorch references.

    Everything the target stages need lands in ``prepared_dir``; returns ``source.json``.
    """
    from slmops_pipelines.steps.optimize.measure import measure
    from slmops_pipelines.steps.optimize.reference import TorchEngine

    prepared_dir.mkdir(parents=True, exist_ok=True)
    say("source", "resolving the model to optimize")
    source = resolve_source(spec, locate_job, prepared_dir)
    base_path = resolve_model(source.base, field=base_field(source))
    model, tokenizer, model_dir = load_merged(source, base_path, prepared_dir / "merged")
    adapters = _copy_adapters(source, prepared_dir)
    primary = _primary_data(spec, source)
    wanted = wanted_metrics(spec, primary.dataset)  # fails fast, as the two below
    examples = render_examples(spec, primary, tokenizer)
    calibration = _calibration(spec, primary.dataset, tokenizer)  # fails fast, before minutes of measuring
    common: MeasureOptions = {
        "wanted": wanted,
        "match": spec.evaluation.match,
        "max_new_tokens": spec.evaluation.max_new_tokens,
    }

    say("reference", "measuring the fine-tuned PyTorch model (fp32)")
    reference = measure(
        TorchEngine(model, tokenizer), tokenizer, examples, size_mb=_folder_mb(model_dir), **common
    )
    del model
    base_engine = None
    if source.adapter_dir is not None and (examples or several_adapters(spec)):
        base_engine = _base_engine(source, base_path, tokenizer, wanted)
    base_metrics = None
    if base_engine is not None and examples:
        say("reference", "measuring the base model")
        base_options: MeasureOptions = {**common, "wanted": wanted - {"latency", "size"}}
        base_metrics = measure(base_engine, tokenizer, examples, size_mb=None, **base_options)
    references: dict[str, Any] = {
        "finetuned_pytorch": reference.to_json(),
        "base_pytorch": base_metrics.to_json() if base_metrics else None,
    }
    if several_adapters(spec):
        references["byAdapter"] = measure_adapter_references(
            spec,
            source,
            base_path=base_path,
            tokenizer=tokenizer,
            first=References(examples, reference, base_metrics, wanted),
            base_engine=base_engine,
            wanted_for=lambda dataset: wanted_metrics(spec, dataset),
            options=common,
            prepared_dir=prepared_dir,
            say=say,
        )
    del base_engine

    write_examples(prepared_dir / EXAMPLES, examples)
    (prepared_dir / CALIBRATION).write_text(json.dumps(calibration))
    (prepared_dir / REFERENCE_JSON).write_text(json.dumps(references, indent=2))
    described = {
        "base": source.base.model_dump(mode="json", by_alias=True),
        "baseField": base_field(source),  # the spec field the base is read under (its pin, its errors)
        # None: the base model itself, which every pod resolves from its own model cache.
        "modelDir": None if model_dir == base_path else _relative(model_dir, prepared_dir),
        "adapters": adapters,
        "description": {**(source.description or {"model": source.base.uri}), "baseModel": source.base.uri},
        "evaluationRows": len(examples),
        "metrics": sorted(wanted),
        "prompts": _prompt_specs(spec, source, primary.dataset),
    }
    (prepared_dir / SOURCE_JSON).write_text(json.dumps(described, indent=2))
    return described


def _prompt_specs(
    spec: OptimizeJobSpec, source: ResolvedSource, merged: DatasetSpec | None
) -> dict[str, Any]:
    """How the job's prompts were rendered: the job's data, the merged model's, each adapter's own."""

    def dump(dataset: DatasetSpec | None) -> dict[str, Any] | None:
        return (
            dataset.model_dump(mode="json", by_alias=True, exclude_none=True) if dataset is not None else None
        )

    return {
        "dataset": dump(spec.evaluation.dataset or source.dataset),
        "merged": dump(merged),
        "adapters": {name: dump(dataset) for name, dataset in spec.source.adapter_datasets().items()},
    }


def _carry_prompts(described: dict[str, Any], folder: Path, *, separate: bool) -> None:
    """How the job rendered prompts, into the target folder: for whoever serves it alone (KServe
    downloads targets/NAME by itself); a merged model renders as its adapter's data did."""
    prompts = described.get("prompts") or {}
    if separate:
        write_prompts(folder, prompts.get("dataset"), prompts.get("adapters") or {})
    else:
        write_prompts(folder, prompts.get("merged"), {})


def _base_engine(source: ResolvedSource, base_path: Path, tokenizer, wanted: set[str]):
    """The base model, to compare answers with (nothing to compare without answer metrics)."""
    from slmops_pipelines.steps.optimize.reference import TorchEngine

    if not wanted - {"latency", "size"}:
        return None
    base_model = load_causal_lm(
        base_path, field=base_field(source), trust_remote_code=source.base.trust_remote_code
    )
    return TorchEngine(base_model, tokenizer)


def _prepared_path(prepared_dir: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else prepared_dir / path


def target_names(spec: OptimizeJobSpec) -> list[str]:
    return [target.name for target in spec.targets]


# -- stage 2: one target ---------------------------------------------------------------------


def _target(spec: OptimizeJobSpec, name: str) -> OptimizeTarget:
    for target in spec.targets:
        if target.name == name:
            return target
    raise InputError(f"no target named {name!r}", field="targets")


def _measure_target(
    target: OptimizeTarget,
    exported: ExportedModel,
    adapters: list[str],
    tokenizer,
    examples: list[Example],
    common: MeasureOptions,
    say: Say,
) -> tuple[GenaiEngine | None, ModelMetrics]:
    """The target's figures, with the first of its ``adapters`` active; no engine when it cannot run here."""
    from slmops_pipelines.steps.optimize.measure import ModelMetrics, measure
    from slmops_pipelines.steps.optimize.providers import PROVIDERS, available_providers
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

    size_mb = exported.size_bytes / 2**20
    if target.provider not in available_providers():
        say("evaluate", f"{target.name}: built; evaluation skipped: provider not available")
        skipped = ModelMetrics(
            size_mb=size_mb if "size" in common["wanted"] else None, skipped="provider not available"
        )
        return None, skipped
    say("evaluate", f"{target.name} with onnxruntime-genai")
    files = {name: exported.path / f"{name}.onnx_adapter" for name in adapters} or None
    engine = GenaiEngine(exported.path, provider=PROVIDERS[target.provider].genai_name, adapters=files)
    if adapters:
        engine.use_adapter(adapters[0])  # the first adapter: the job's reference is measured with it
    return engine, measure(engine, tokenizer, examples, size_mb=size_mb, **common)


def build_target(
    spec: OptimizeJobSpec, *, target_name: str, prepared_dir: Path, targets_dir: Path, say: Say = _quiet
) -> dict[str, Any]:
    """Export one target into ``targets_dir/<name>``, measure it, check its gates; return its result."""
    from transformers import AutoTokenizer

    from slmops_pipelines.steps.optimize.export import export_target
    from slmops_pipelines.steps.optimize.gates import check_gates
    from slmops_pipelines.steps.optimize.measure import ModelMetrics, deltas

    target = _target(spec, target_name)
    described = json.loads((prepared_dir / SOURCE_JSON).read_text())
    base = ModelSpec.model_validate(described["base"])
    base_uri_field = described.get("baseField") or "source.model.uri"
    model_dir = (
        _prepared_path(prepared_dir, described["modelDir"])
        if described["modelDir"]
        else resolve_model(base, field=base_uri_field)
    )
    adapters = {name: _prepared_path(prepared_dir, rel) for name, rel in described["adapters"].items()}
    separate = not target.merge_adapter and bool(adapters)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=base.trust_remote_code)
    examples = read_examples(prepared_dir / EXAMPLES)
    calibration = json.loads((prepared_dir / CALIBRATION).read_text())
    references = json.loads((prepared_dir / REFERENCE_JSON).read_text())
    reference = ModelMetrics.from_json(references["finetuned_pytorch"])
    wanted = set(described.get("metrics") or spec.evaluation.metrics)
    common: MeasureOptions = {
        "wanted": wanted,
        "match": spec.evaluation.match,
        "max_new_tokens": spec.evaluation.max_new_tokens,
    }

    mode = f"{len(adapters)} separate adapter(s)" if separate else "merged"
    say("export", f"{target.name}: {target.provider} {target.precision}, {mode}")
    exported = export_target(
        target,
        resolve_model(base, field=base_uri_field) if separate else model_dir,
        targets_dir,
        cache_dir=cache_root() / "onnx-builder",
        adapters=adapters if separate else None,
        calibration=calibration,
    )
    names = list(adapters) if separate else []
    _carry_prompts(described, targets_dir / target.name, separate=separate)
    engine, metrics = _measure_target(target, exported, names, tokenizer, examples, common, say)
    gates = check_gates(target.name, spec.evaluation.gates, metrics, reference)
    as_json = metrics.to_json()
    base_reference = references.get("base_pytorch")
    result = {
        "name": target.name,
        "provider": target.provider,
        "precision": target.precision,
        "mergeAdapter": target.merge_adapter,
        "adapters": sorted(adapters) if separate else [],
        "path": f"targets/{target.name}",
        "metrics": as_json,
        "vsFinetuned": deltas(as_json, references["finetuned_pytorch"]),
        "vsBase": deltas(as_json, base_reference) if base_reference else {},
        "gates": [asdict(g) for g in gates],
    }
    if separate and references.get("byAdapter"):
        result["byAdapter"], adapter_gates = measure_target_adapters(
            spec,
            target_name=target.name,
            engine=engine,
            tokenizer=tokenizer,
            target_metrics=metrics,
            references=references,
            options=common,
            prepared_dir=prepared_dir,
            say=say,
        )
        # Quality gates per adapter, against each adapter's reference; speed and size per target.
        kept = [g for g in gates if g.gate not in QUALITY_GATES]
        result["gates"] = [asdict(g) for g in kept + adapter_gates]
    return result


# -- stage 3: collect, report, gate, publish -------------------------------------------------


def write_report(
    run: JobRun,
    *,
    prepared_dir: Path,
    results: list[dict[str, Any]],
    out_dir: Path,
    wall_time_s: float,
    started_at: float | None = None,
) -> dict[str, Any]:
    """``metrics.json`` and ``report.html`` into ``out_dir`` (targets in spec order); return the metrics."""
    from slmops_pipelines.steps.report.optimize import write_optimize_report

    spec: OptimizeJobSpec = run.spec
    described = json.loads((prepared_dir / SOURCE_JSON).read_text())
    references = json.loads((prepared_dir / REFERENCE_JSON).read_text())
    by_name = {result["name"]: result for result in results}
    ordered = {t.name: by_name[t.name] for t in spec.targets if t.name in by_name}
    metrics_doc = {
        "job": {"kind": run.kind, "name": run.name, "namespace": run.namespace},
        "source": described["description"],
        "evaluation": {"rows": described["evaluationRows"], "metrics": sorted(spec.evaluation.metrics)},
        "reference": references,
        "targets": {key: {k: v for k, v in value.items() if k != "name"} for key, value in ordered.items()},
        "gates": [gate for result in ordered.values() for gate in result["gates"]],
        "wall_time_s": round(wall_time_s, 1),
        **({"started_at": round(started_at, 3)} if started_at else {}),
        "usage": usage.of_output(run.output_uri),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics_doc, indent=2))
    write_optimize_report(metrics_doc, out_dir, title=f"{run.kind} {run.name}")
    record_tracking(run, metrics_doc, out_dir)  # MLflow, when the spec asks: never fails the job
    return metrics_doc


def violated_gates(metrics_doc: dict[str, Any]) -> list[str]:
    from slmops_pipelines.steps.optimize.gates import GateResult

    return [GateResult(**g).describe() for g in metrics_doc["gates"] if g["passed"] is False]


def publish_output(
    store: ArtifactStore,
    *,
    spec: OptimizeJobSpec,
    identity: dict[str, Any],
    out_dir: Path,
    metrics_doc: dict[str, Any],
) -> dict[str, str]:
    """Fail on violated gates (metrics and report stay, no manifest); else publish; return artifact URIs."""
    violated = violated_gates(metrics_doc)
    if violated:
        root = store.local_root()
        if root is None or root.resolve() != out_dir.resolve():
            for rel in ("metrics.json", "report.html"):
                store.upload_file(out_dir / rel, rel)
        raise GateError("; ".join(violated))
    publish.write_manifest(
        store,
        out_dir,
        identity=identity,
        spec=spec.model_dump(mode="json", by_alias=True),
        inputs={
            "source": metrics_doc["source"],
            "baseModel": metrics_doc["source"]["baseModel"],
            "digests": input_cache.read_digests(spec),
        },
        exclude=(".slmops/", "prepared/"),
    )
    return output_artifacts(store, metrics_doc)


def output_artifacts(store: ArtifactStore, metrics_doc: dict[str, Any]) -> dict[str, str]:
    """Artifact name -> URI of a published output: each target's folder, metrics, report, manifest."""
    artifacts = {name: store.uri_of(f"targets/{name}") for name in metrics_doc.get("targets") or {}}
    artifacts.update(
        {
            "metrics": store.uri_of("metrics.json"),
            "report": store.uri_of("report.html"),
            "manifest": store.uri_of(publish.MANIFEST),
        }
    )
    return artifacts
