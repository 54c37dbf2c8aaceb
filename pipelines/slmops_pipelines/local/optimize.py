"""Run an OptimizeJob locally: source -> merge -> export per target -> evaluate -> gate -> publish.

The source is a finished FineTuneJob (found through ``locate_job``: ``slmops run`` passes
where the jobs of the same invocation, or ``./runs/<name>``, wrote their outputs) or a
model with an optional adapter.  A FineTuneJob output without ``manifest.json`` has not
succeeded, and is refused.

Every target is built into its own folder, then evaluated with onnxruntime-genai next to
the fine-tuned PyTorch model (merged, fp32: the fair baseline) and the base model.  Targets
whose provider this machine lacks are built and reported ``skipped: provider not
available``.  Violated gates fail the job after metrics and report are written, and no
manifest is written: the output is not a success.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmops_pipelines.errors import InputError, JobError
from slmops_pipelines.local.outputs import JobOutcome, job_identity, open_output, work_dir
from slmops_pipelines.local.reporting import NullReporter, Reporter
from slmops_pipelines.models import cache_root, resolve_model
from slmops_pipelines.models.load import load_causal_lm
from slmops_pipelines.quiet import quiet_libraries
from slmops_pipelines.specs import DatasetSpec, FineTuneJobSpec, ModelSpec, OptimizeJobSpec
from slmops_pipelines.steps import publish
from slmops_pipelines.storage import ArtifactStore, open_store

JobLocator = Callable[[str], str]


@dataclass
class ResolvedSource:
    base: ModelSpec
    adapter_dir: Path | None  # the PEFT adapter to merge (the first one when there are several)
    full_model_dir: Path | None  # a fully fine-tuned model (no adapter)
    dataset: DatasetSpec | None  # evaluation data
    description: dict[str, Any] = field(default_factory=dict)
    adapters: dict[str, Path] = field(default_factory=dict)  # name -> PEFT folder, kept separate on request


class GateError(JobError):
    def __init__(self, message: str) -> None:
        super().__init__(message, field="evaluation.gates", reason="GateViolated")


# -- source ----------------------------------------------------------------------------------


def _fetch_dir(store: ArtifactStore, prefix: str, work: Path) -> Path:
    local = store.local_root()
    if local is not None:
        return local / prefix
    target = work / "source" / prefix
    shutil.rmtree(target, ignore_errors=True)
    store.download_dir(prefix, target)
    return target


def _from_finetune_job(name: str, locate_job: JobLocator, work: Path) -> ResolvedSource:
    uri = locate_job(name)
    store = open_store(uri, field="source.fineTuneJobRef")
    store.check()
    manifest = publish.read_json(store, publish.MANIFEST)
    if manifest is None:
        raise InputError(
            f"FineTuneJob {name!r} has not succeeded: no manifest.json at {store.uri}",
            field="source.fineTuneJobRef",
        )
    job_spec = FineTuneJobSpec.model_validate(manifest["spec"])
    paths = {entry["path"] for entry in manifest["files"]}
    adapter = _fetch_dir(store, "adapter", work) if "adapter/adapter_config.json" in paths else None
    full = _fetch_dir(store, "model", work) if adapter is None else None
    return ResolvedSource(
        base=job_spec.model,
        adapter_dir=adapter,
        full_model_dir=full,
        dataset=job_spec.dataset,
        description={"fineTuneJob": name, "output": store.uri, "specHash": manifest["job"].get("specHash")},
        adapters={name: adapter} if adapter is not None else {},
    )


def _local_or_s3_dir(uri: str, work: Path, field_name: str) -> Path:
    from slmops_pipelines.uris import parse_uri

    parsed = parse_uri(uri)
    if parsed.scheme == "s3":
        store = open_store(uri, field=field_name)
        store.check()
        return _fetch_dir(store, "", work / hashlib.sha256(uri.encode()).hexdigest()[:12])
    path = parsed.path.expanduser().resolve()
    if not path.is_dir():
        raise InputError(f"adapter folder not found: {path}", field=field_name)
    return path


def resolve_source(spec: OptimizeJobSpec, locate_job: JobLocator, work: Path) -> ResolvedSource:
    source = spec.source
    if source.fine_tune_job_ref is not None:
        resolved = _from_finetune_job(source.fine_tune_job_ref.name, locate_job, work)
    else:
        refs = [source.adapter] if source.adapter else list(source.adapters or [])
        field_of = "source.adapter.uri" if source.adapter else "source.adapters"
        adapters = {ref.name: _local_or_s3_dir(ref.uri, work, field_of) for ref in refs}
        first = next(iter(adapters.values()), None)
        resolved = ResolvedSource(
            base=source.model, adapter_dir=first, full_model_dir=None, dataset=None, adapters=adapters
        )
    if spec.evaluation.dataset is not None:
        resolved.dataset = spec.evaluation.dataset
    return resolved


# -- the models ------------------------------------------------------------------------------


def load_merged(source: ResolvedSource, base_path: Path, out_dir: Path):
    """The fine-tuned model with its adapter merged, fp32, saved to ``out_dir`` (also the reference)."""
    from transformers import AutoTokenizer

    trust = source.base.trust_remote_code
    if source.full_model_dir is not None:
        model_dir = source.full_model_dir
        model = load_causal_lm(model_dir, field="source", trust_remote_code=trust)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust)
        return model, tokenizer, model_dir
    tokenizer = AutoTokenizer.from_pretrained(source.adapter_dir or base_path, trust_remote_code=trust)
    model = load_causal_lm(base_path, field=_base_field(source), trust_remote_code=trust)
    if source.adapter_dir is None:
        return model, tokenizer, base_path
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, source.adapter_dir).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise InputError(
            f"the adapter at {source.adapter_dir} does not fit the base model {source.base.uri}: {str(exc)[:300]}",
            field="source",
        ) from exc
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return model, tokenizer, out_dir


# -- the run ---------------------------------------------------------------------------------


def _examples(spec: OptimizeJobSpec, source: ResolvedSource, tokenizer) -> list:
    if source.dataset is None:
        return []
    from slmops_pipelines.steps.data import evaluation_examples

    field = "evaluation.dataset" if spec.evaluation.dataset is not None else "source.fineTuneJobRef.dataset"
    examples = evaluation_examples(
        source.dataset, tokenizer=tokenizer, seed=0, cache_dir=cache_root(), field_prefix=field
    )
    limit = spec.evaluation.max_samples
    return examples[:limit] if limit else examples


def _deltas(metrics: dict[str, Any], against: dict[str, Any]) -> dict[str, float]:
    deltas = {}
    for key in ("accuracy", "perplexity", "rouge_l", "bleu"):
        if metrics.get(key) is not None and against.get(key) is not None:
            deltas[key] = metrics[key] - against[key]
    ours, theirs = metrics.get("latency"), against.get("latency")
    if ours and theirs:
        deltas["decode_speedup"] = ours["decode_tokens_per_s_p50"] / theirs["decode_tokens_per_s_p50"]
        deltas["prefill_speedup"] = theirs["prefill_ms_p50"] / ours["prefill_ms_p50"]
    return deltas


def run_optimize(
    *,
    name: str,
    namespace: str = "default",
    spec: OptimizeJobSpec,
    output_uri: str,
    locate_job: JobLocator,
    reporter: Reporter | None = None,
) -> JobOutcome:
    from slmops_pipelines.steps.optimize.gates import check_gates
    from slmops_pipelines.steps.optimize.measure import measure
    from slmops_pipelines.steps.optimize.providers import available_providers
    from slmops_pipelines.steps.optimize.reference import TorchEngine

    reporter = reporter or NullReporter()
    quiet_libraries()
    started = time.time()
    output_uri = spec.output.uri or output_uri
    identity = job_identity("OptimizeJob", namespace, name, spec)
    reporter.stage("output", f"checking {output_uri}")
    store, finished = open_output(output_uri, identity)
    if finished is not None:
        reporter.info(f"{output_uri} already holds this job's finished output: nothing to do")
        return JobOutcome(store.uri, publish.read_json(store, "metrics.json") or {}, already_complete=True)
    work = work_dir(store)

    reporter.stage("source", "resolving the model to optimize")
    source = resolve_source(spec, locate_job, work)
    base_path = resolve_model(source.base)
    model, tokenizer, merged_dir = load_merged(source, base_path, work / "merged")
    examples = _examples(spec, source, tokenizer)
    calibration = _calibration(spec, source, tokenizer)  # fails fast, before minutes of measuring
    wanted = set(spec.evaluation.metrics)
    common = dict(wanted=wanted, match=spec.evaluation.match, max_new_tokens=spec.evaluation.max_new_tokens)

    reporter.stage("reference", "measuring the fine-tuned PyTorch model (fp32)")
    reference = measure(
        TorchEngine(model, tokenizer), tokenizer, examples, size_mb=_folder_mb(merged_dir), **common
    )
    base_metrics = None
    if source.adapter_dir is not None and examples:
        reporter.stage("reference", "measuring the base model")
        base_model = _load_base(base_path, source)
        base_metrics = measure(
            TorchEngine(base_model, tokenizer),
            tokenizer,
            examples,
            size_mb=None,
            **{**common, "wanted": wanted - {"latency", "size"}},
        )
        del base_model
    del model

    available = available_providers()
    results: dict[str, dict[str, Any]] = {}
    gate_results = []
    for target in spec.targets:
        separate = not target.merge_adapter and bool(source.adapters)
        metrics = _build_and_measure(
            target,
            source,
            model_dir=base_path if separate else merged_dir,
            separate=separate,
            work=work,
            available=available,
            tokenizer=tokenizer,
            examples=examples,
            common=common,
            reporter=reporter,
            calibration=calibration,
        )
        gates = check_gates(target.name, spec.evaluation.gates, metrics, reference)
        gate_results += gates
        as_json = metrics.to_json()
        results[target.name] = {
            "provider": target.provider,
            "precision": target.precision,
            "mergeAdapter": target.merge_adapter,
            "adapters": sorted(source.adapters) if separate else [],
            "path": f"targets/{target.name}",
            "metrics": as_json,
            "vsFinetuned": _deltas(as_json, reference.to_json()),
            "vsBase": _deltas(as_json, base_metrics.to_json()) if base_metrics else {},
            "gates": [g.__dict__ for g in gates],
        }

    reporter.stage("report", "metrics, comparison and report")
    metrics_doc = {
        "job": {"name": name, "namespace": namespace},
        "source": source.description or {"model": source.base.uri},
        "evaluation": {"rows": len(examples), "metrics": sorted(wanted)},
        "reference": {
            "finetuned_pytorch": reference.to_json(),
            "base_pytorch": base_metrics.to_json() if base_metrics else None,
        },
        "targets": results,
        "gates": [g.__dict__ for g in gate_results],
        "wall_time_s": round(time.time() - started, 1),
    }
    (work / "metrics.json").write_text(json.dumps(metrics_doc, indent=2))
    from slmops_pipelines.steps.optimize.report import write_optimize_report

    write_optimize_report(metrics_doc, work, title=f"OptimizeJob {name}")
    violated = [g for g in gate_results if g.passed is False]
    if violated:
        if store.local_root() is None:
            for rel in ("metrics.json", "report.html"):
                store.upload_file(work / rel, rel)
        raise GateError("; ".join(g.describe() for g in violated))

    reporter.stage("publish", f"writing {output_uri}")
    shutil.rmtree(work / "merged", ignore_errors=True)  # a copy of base + adapter: not an output
    shutil.rmtree(work / "source", ignore_errors=True)
    publish.write_manifest(
        store,
        work,
        identity=identity,
        spec=spec.model_dump(mode="json", by_alias=True),
        inputs={"source": source.description or {"model": source.base.uri}, "baseModel": source.base.uri},
        exclude=(".slmops/",),
    )
    artifacts = {t: store.uri_of(f"targets/{t}") for t in results}
    artifacts.update(
        {
            "metrics": store.uri_of("metrics.json"),
            "report": store.uri_of("report.html"),
            "manifest": store.uri_of(publish.MANIFEST),
        }
    )
    return JobOutcome(store.uri, metrics_doc, artifacts)


def _build_and_measure(
    target,
    source: ResolvedSource,
    *,
    model_dir: Path,
    separate: bool,
    work: Path,
    available: set[str],
    tokenizer,
    examples: list,
    common: dict[str, Any],
    reporter: Reporter,
    calibration: list[list[int]] | None,
):
    """Export one target and measure it (or say why it cannot be measured here)."""
    from slmops_pipelines.steps.optimize.export import export_target
    from slmops_pipelines.steps.optimize.measure import measure
    from slmops_pipelines.steps.optimize.providers import PROVIDERS
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

    mode = f"{len(source.adapters)} separate adapter(s)" if separate else "merged"
    reporter.stage("export", f"{target.name}: {target.provider} {target.precision}, {mode}")
    adapters = source.adapters if separate else None
    exported = export_target(
        target,
        model_dir,
        work / "targets",
        cache_dir=cache_root() / "onnx-builder",
        adapters=adapters,
        calibration=calibration,
    )
    if target.provider not in available:
        reporter.info(f"{target.name}: built; evaluation skipped: provider not available")
        return measure_skipped(exported.size_bytes, common["wanted"])
    reporter.stage("evaluate", f"{target.name} with onnxruntime-genai")
    files = {name: exported.path / f"{name}.onnx_adapter" for name in adapters} if adapters else None
    engine = GenaiEngine(exported.path, provider=PROVIDERS[target.provider].genai_name, adapters=files)
    if adapters:
        engine.use_adapter(next(iter(adapters)))  # measured with the first adapter active
    return measure(engine, tokenizer, examples, size_mb=exported.size_bytes / 2**20, **common)


def _calibration(spec: OptimizeJobSpec, source: ResolvedSource, tokenizer) -> list[list[int]] | None:
    """Training rows for static int8 calibration; checked before anything is built."""
    static = [t for t in spec.targets if t.precision == "int8" and t.quantization.int8_mode == "static"]
    if not static:
        return None
    if source.dataset is None:
        raise InputError(
            f"target {static[0].name!r}: int8Mode static needs calibration rows: use a fineTuneJobRef source "
            "or set evaluation.dataset",
            field="targets",
        )
    from slmops_pipelines.steps.data import calibration_token_rows

    limit = max(t.quantization.calibration_samples for t in static)
    return calibration_token_rows(source.dataset, tokenizer=tokenizer, cache_dir=cache_root(), limit=limit)


def measure_skipped(size_bytes: int, wanted: set[str]):
    from slmops_pipelines.steps.optimize.measure import ModelMetrics

    return ModelMetrics(
        size_mb=size_bytes / 2**20 if "size" in wanted else None, skipped="provider not available"
    )


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20


def _load_base(base_path: Path, source: ResolvedSource):
    return load_causal_lm(
        base_path, field=_base_field(source), trust_remote_code=source.base.trust_remote_code
    )


def _base_field(source: ResolvedSource) -> str:
    return "source.fineTuneJobRef" if source.description.get("fineTuneJob") else "source.model.uri"
