"""Where an OptimizeJob's source comes from: a finished FineTuneJob, or a model with adapters.

The source is a finished FineTuneJob (found through a :data:`JobLocator`: ``slmops run``
passes where the jobs of the same invocation, or ``./runs/<name>``, wrote their outputs; a
pipeline passes the FineTuneJob's output URI) or a model with optional adapters, local or
on S3.  A FineTuneJob output without ``manifest.json`` has not succeeded, and is refused.
:func:`load_merged` gives the fine-tuned model with its adapter merged (fp32), the fair
reference every target is compared with.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmops_pipelines.credentials import s3_credentials
from slmops_pipelines.errors import InputError
from slmops_pipelines.models.load import load_causal_lm
from slmops_pipelines.specs import DatasetSpec, FineTuneJobSpec, ModelSpec, OptimizeJobSpec
from slmops_pipelines.specs.optimize import AdapterRef, default_adapter_name
from slmops_pipelines.steps import publish
from slmops_pipelines.storage import ArtifactStore, open_store

JobLocator = Callable[[str], str]  # FineTuneJob name -> its output URI


def source_locator(source_uri: str) -> JobLocator:
    """The locator of an engine that was handed the source FineTuneJob's output location."""

    def locate(name: str) -> str:
        if not source_uri:
            raise InputError(
                f"source job {name!r}: the run was started without its output location",
                field="source.fineTuneJobRef",
            )
        return source_uri

    return locate


@dataclass
class ResolvedSource:
    base: ModelSpec
    adapter_dir: Path | None  # the PEFT adapter to merge (the first one when there are several)
    full_model_dir: Path | None  # a fully fine-tuned model (no adapter)
    dataset: DatasetSpec | None  # evaluation data
    description: dict[str, Any] = field(default_factory=dict)
    adapters: dict[str, Path] = field(default_factory=dict)  # name -> PEFT folder, kept separate on request


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
            f"source job {name!r} has not succeeded: no manifest.json at {store.uri}",
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
        description={
            "kind": manifest["job"].get("kind", ""),
            "fineTuneJob": name,
            "output": store.uri,
            "specHash": manifest["job"].get("specHash"),
        },
        adapters={name: adapter} if adapter is not None else {},
    )


def _local_or_s3_dir(uri: str, work: Path, field_name: str) -> Path:
    from slmops_pipelines.uris import parse_uri

    parsed = parse_uri(uri)
    if parsed.scheme == "s3":  # an adapter is part of the model: read with the model's Secret
        from slmops_pipelines.models import input_cache

        store = open_store(uri, field=field_name, credentials=s3_credentials("model"))
        return input_cache.fetch(store, "", field=field_name, kind="adapter")
    path = parsed.local_path.expanduser().resolve()
    if not path.is_dir():
        raise InputError(f"adapter folder not found: {path}", field=field_name)
    return path


def adapter_refs(spec: OptimizeJobSpec) -> list[tuple[str, AdapterRef]]:
    """The adapters of a model source, each with the spec field its URI is read under."""
    return [(f"{spec.source.adapter_field(n)}.uri", ref) for n, ref in enumerate(spec.source.adapter_refs())]


def resolve_source(spec: OptimizeJobSpec, locate_job: JobLocator, work: Path) -> ResolvedSource:
    source = spec.source
    if source.fine_tune_job_ref is not None:
        resolved = _from_finetune_job(source.fine_tune_job_ref.name, locate_job, work)
    else:
        if source.model is None:  # not reached: OptimizeSource requires fineTuneJobRef or model
            raise InputError("set exactly one of fineTuneJobRef and model", field="source")
        adapters = {
            # AdapterRef's validator fills in every name; the default is spelled out for the type.
            (ref.name or default_adapter_name(ref.uri)): _local_or_s3_dir(ref.uri, work, uri_field)
            for uri_field, ref in adapter_refs(spec)
        }
        first = next(iter(adapters.values()), None)
        resolved = ResolvedSource(
            base=source.model, adapter_dir=first, full_model_dir=None, dataset=None, adapters=adapters
        )
    if spec.evaluation.dataset is not None:
        resolved.dataset = spec.evaluation.dataset
    return resolved


def base_field(source: ResolvedSource) -> str:
    return "source.fineTuneJobRef" if source.description.get("fineTuneJob") else "source.model.uri"


def load_merged(source: ResolvedSource, base_path: Path, out_dir: Path):
    """The fine-tuned model with its adapter merged, fp32, saved to ``out_dir`` (also the reference)."""
    from transformers import AutoTokenizer

    trust = source.base.trust_remote_code
    if source.full_model_dir is not None:
        model_dir = source.full_model_dir
        model = load_causal_lm(model_dir, field="source", trust_remote_code=trust)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust)
        return model, tokenizer, model_dir
    # An adapter may ship the tokenizer it was trained with; many PEFT folders hold none: the base's.
    with_tokenizer = source.adapter_dir and (source.adapter_dir / "tokenizer_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(
        source.adapter_dir if with_tokenizer else base_path, trust_remote_code=trust
    )
    model = load_causal_lm(base_path, field=base_field(source), trust_remote_code=trust)
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
