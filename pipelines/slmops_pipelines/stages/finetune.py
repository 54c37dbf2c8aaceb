"""The stages of a FineTuneJob: inspect -> prepare data -> train -> evaluate -> report -> publish.

Both engines run these functions and nothing else: the local engine
(:mod:`slmops_pipelines.local.finetune`) calls them in one process over one work folder;
the KFP components (:mod:`slmops_pipelines.kubeflow.tasks.finetune`) call one each, in their own
pods, over the folders of their input and output artifacts.  So every stage takes and
returns plain folders and JSON-able values, never objects that live in memory between
stages.

Folder contract (what a stage reads and writes):

* data folder: ``train/``, ``eval/`` (datasets on disk), ``eval_prompts.jsonl``, ``stats.json``
* train folder: ``adapter/`` or ``model/``, ``tensorboard/``, ``logs/train_result.json``;
  ``checkpoints/`` while it runs (mirrored to a checkpoint store when the folder is not
  the output itself, so that a new pod resumes)
* the published output: the train folder's results, ``merged/`` (optional), ``metrics.json``,
  ``loss_curve.png``, ``report.html``, then ``manifest.json`` last
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops_pipelines.errors import InputError
from slmops_pipelines.models import cache_root, input_cache, resolve_model
from slmops_pipelines.specs import FineTuneJobSpec
from slmops_pipelines.stages import usage
from slmops_pipelines.stages.outputs import JobRun, open_output
from slmops_pipelines.stages.tracking import record_tracking
from slmops_pipelines.steps import publish
from slmops_pipelines.steps.train.checkpoints import CHECKPOINTS, restore_checkpoint, sync_checkpoint
from slmops_pipelines.storage import ArtifactStore

TRAIN_RESULT = "logs/train_result.json"

# Artifact name -> file, or folder (trailing slash), relative to the output root.
OUTPUT_ARTIFACTS = {
    "adapter": "adapter/",
    "model": "model/",
    "merged": "merged/",
    "tensorboard": "tensorboard/",
    "metrics": "metrics.json",
    "report": "report.html",
    "lossCurve": "loss_curve.png",
    "manifest": publish.MANIFEST,
}


@dataclass
class Inspection:
    """What the first stage found out: where the output goes and whether the job is done."""

    store: ArtifactStore
    identity: dict[str, Any]
    finished: dict[str, Any] | None  # this job's manifest, when a previous run completed it


# -- inspect -----------------------------------------------------------------------------------


def check_placement(spec: FineTuneJobSpec, *, multi_node: bool) -> None:
    """What this placement cannot do fails before anything is written."""
    if spec.resources.nodes > 1 and not multi_node:
        raise InputError(
            f"{spec.resources.nodes} nodes need a cluster (the kfp backend); the local engine runs on one node",
            field="resources.nodes",
        )
    if spec.training.precision == "fp16":
        import torch

        if not torch.cuda.is_available() and not multi_node:
            raise InputError(
                "fp16 training needs a CUDA GPU; use bf16 or fp32 on CPU", field="training.precision"
            )


def check_inputs(spec: FineTuneJobSpec, *, multi_node: bool) -> None:
    """Everything that can be checked before a byte is written or read: placement, metric and loss
    names, claimed inputs that link out of their claim."""
    from slmops_pipelines.stages.preflight import claims_stay_inside
    from slmops_pipelines.steps.metrics import check_metrics
    from slmops_pipelines.steps.train.losses import get_loss

    claims_stay_inside(spec)
    check_placement(spec, multi_node=multi_node)
    check_metrics(spec.evaluation.metrics)
    get_loss(spec.training.loss)


def inspect_output(run: JobRun) -> Inspection:
    """Check and claim the output location (refusing another job's); find a finished run."""
    identity = run.identity()
    store, finished = open_output(run.output_uri, identity)
    return Inspection(store=store, identity=identity, finished=finished)


def dataset_fingerprint(spec: FineTuneJobSpec) -> str:
    """The fingerprint of the dataset's content and rendering: part of every cache key downstream."""
    from slmops_pipelines.steps.data import fingerprint_dataset

    return fingerprint_dataset(spec.dataset, seed=spec.training.seed, cache_dir=cache_root())


# -- data ----------------------------------------------------------------------------------------


def load_tokenizer(spec: FineTuneJobSpec, model_path: Path):
    """The job's tokenizer (pad token included) as every step of the job loads it."""
    from slmops_pipelines.models.load import load_tokenizer as load_padded_tokenizer

    return load_padded_tokenizer(model_path, trust_remote_code=spec.model.trust_remote_code)


def prepare_data(spec: FineTuneJobSpec, *, data_dir: Path, model_path: Path, loaded=None):
    """Render and tokenize the dataset into ``data_dir``; return its DataStats."""
    from slmops_pipelines.steps.data import prepare_data as prepare

    shutil.rmtree(data_dir, ignore_errors=True)
    return prepare(
        spec.dataset,
        tokenizer=load_tokenizer(spec, model_path),
        out_dir=data_dir,
        seed=spec.training.seed,
        cache_dir=cache_root(),
        loaded=loaded,
    )


def read_data_stats(data_dir: Path) -> dict[str, Any]:
    return json.loads((data_dir / "stats.json").read_text())


# -- train ---------------------------------------------------------------------------------------


def train(
    spec: FineTuneJobSpec,
    *,
    model_path: Path,
    data_dir: Path,
    work: Path,
    checkpoint_store: ArtifactStore | None = None,
    on_event: Callable[[dict], None] | None = None,
):
    """Train on this node with torchrun; return the TrainResult (also in ``logs/train_result.json``).

    With a ``checkpoint_store`` (the output, when ``work`` is not the output itself) training
    resumes from the latest complete checkpoint stored there and mirrors new ones as saved.
    """
    from slmops_pipelines.steps.train.launch import run_training
    from slmops_pipelines.steps.train.request import TrainRequest

    if checkpoint_store is not None:
        restore_checkpoint(checkpoint_store, work)

    def handle(event: dict) -> None:
        if on_event is not None:
            on_event(event)
        if checkpoint_store is not None and event.get("event") == "save":
            sync_checkpoint(checkpoint_store, work, int(event["step"]))

    request = TrainRequest(spec=spec, model_path=model_path, data_dir=data_dir, work_dir=work)
    result = run_training(request, on_event=handle)
    if result is not None:
        usage.hold_gpus(result.gpus)
    return result


def read_train_result(work: Path):
    from slmops_pipelines.steps.train.request import TrainResult

    return TrainResult.model_validate_json((work / TRAIN_RESULT).read_text())


# -- evaluate ------------------------------------------------------------------------------------


def evaluate(
    spec: FineTuneJobSpec,
    *,
    model_path: Path,
    train_dir: Path,
    data_dir: Path,
    merged_dir: Path | None,
) -> dict[str, Any] | None:
    """Task accuracy of the fine-tuned (and base) model; the merged model when asked for."""
    from slmops_pipelines.steps.data import read_eval_examples
    from slmops_pipelines.steps.evaluate import evaluate_finetune

    result = read_train_result(train_dir)
    evaluation = evaluate_finetune(
        spec,
        base_path=model_path,
        result_dir=train_dir / result.output,
        examples=read_eval_examples(data_dir),
        merged_dir=merged_dir,
    )
    return evaluation.to_json() if evaluation else None


# -- report and publish --------------------------------------------------------------------------


def write_report(
    run: JobRun,
    *,
    data_stats: dict[str, Any],
    train_dir: Path,
    evaluation: dict[str, Any] | None,
    out_dir: Path,
    wall_time_s: float,
    search: dict[str, Any] | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
    """``metrics.json``, ``loss_curve.png`` and ``report.html`` into ``out_dir``; return the metrics."""
    from slmops_pipelines.steps.report.finetune import plot_loss_curve
    from slmops_pipelines.steps.report.finetune import write_report as render

    spec: FineTuneJobSpec = run.spec
    result = read_train_result(train_dir)
    metrics = {
        "job": {
            "kind": run.kind,
            "name": run.name,
            "namespace": run.namespace,
            "method": spec.method,
            "model": spec.model.uri,
            "dataset": spec.dataset.uri,
        },
        "data": data_stats,
        "train": result.model_dump(exclude={"log_history"}),
        "evaluation": evaluation,
        "log_history": result.log_history,
        "wall_time_s": round(wall_time_s, 1),
        **({"started_at": round(started_at, 3)} if started_at else {}),
        "usage": usage.of_output(run.output_uri),
        **({"search": search} if search else {}),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_loss_curve(result.log_history, out_dir / "loss_curve.png", title=f"{run.name}: {spec.method}")
    search_plot = None
    if search:
        from slmops_pipelines.stages.search import plot_search

        search_plot = plot_search(search, out_dir / "search.png")
    render(metrics, out_dir, title=f"{run.kind} {run.name}", search_plot=search_plot)
    record_tracking(run, metrics, out_dir)  # MLflow, when the spec asks: never fails the job
    return metrics


def publish_output(
    inspection: Inspection,
    *,
    spec: FineTuneJobSpec,
    out_dir: Path,
    model_path: Path,
    fingerprint: str,
    search: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Drop the resume state, upload ``out_dir`` when the store is remote, write the manifest last."""
    store = inspection.store
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    root = store.local_root()
    if root is None or root.resolve() != out_dir.resolve():
        store.delete_prefix(CHECKPOINTS)
    return publish.write_manifest(
        store,
        out_dir,
        identity=inspection.identity,
        spec=spec.model_dump(mode="json", by_alias=True),
        inputs={
            "model": {"uri": spec.model.uri, "resolvedPath": str(model_path)},
            "dataset": {"uri": spec.dataset.uri, "fingerprint": fingerprint},
            # What each remote input held when it was read (a digest of its listing).
            "digests": input_cache.read_digests(spec),
            # The result is the best trial's: the manifest says which, with its settings.
            **(
                {"search": {"bestTrial": search["best_trial"], "params": search["best_params"]}}
                if search
                else {}
            ),
        },
        exclude=(".slmops/",),
    )


def output_artifacts(store: ArtifactStore, manifest: dict[str, Any]) -> dict[str, str]:
    """Artifact name -> URI for what the manifest lists."""
    paths = [entry["path"] for entry in manifest.get("files", [])] + [publish.MANIFEST]
    return {
        name: store.uri_of(rel.rstrip("/"))
        for name, rel in OUTPUT_ARTIFACTS.items()
        if any(path == rel or (rel.endswith("/") and path.startswith(rel)) for path in paths)
    }


def stored_metrics(store: ArtifactStore) -> dict[str, Any]:
    return publish.read_json(store, "metrics.json") or {}


def resolve_base_model(spec: FineTuneJobSpec) -> Path:
    return resolve_model(spec.model)
