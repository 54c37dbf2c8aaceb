"""Run a FineTuneJob locally: model -> data -> train -> evaluate -> report -> publish.

Every stage writes into a work folder: the output folder itself for a local output, or a
staging folder under the cache for S3 (uploaded as it goes: checkpoints when saved,
everything else at publish).  Resumption and idempotence come from the output location:

* ``manifest.json`` present and ours    -> the job is done: nothing is retrained;
* complete checkpoints present           -> training resumes from the latest one;
* another job's claim or manifest there  -> refused (nothing is overwritten).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from slmops_pipelines.errors import InputError
from slmops_pipelines.local.outputs import JobOutcome, job_identity, open_output, work_dir
from slmops_pipelines.local.reporting import NullReporter, Reporter
from slmops_pipelines.models import cache_root, resolve_model
from slmops_pipelines.quiet import quiet_libraries
from slmops_pipelines.specs import FineTuneJobSpec
from slmops_pipelines.steps import publish
from slmops_pipelines.storage import ArtifactStore

CHECKPOINTS = "checkpoints"


def default_output_uri(name: str, runs_dir: Path | str = "runs") -> str:
    return str(Path(runs_dir) / name)


def _restore_remote_checkpoint(store: ArtifactStore, work: Path) -> int | None:
    """Download the latest complete checkpoint from a remote store; return its step."""
    from slmops_pipelines.steps.train.checkpoints import COMPLETE_MARKER, checkpoint_step

    steps = sorted(
        {
            checkpoint_step(Path(info.key).parent)
            for info in store.list(CHECKPOINTS)
            if info.key.endswith("/" + COMPLETE_MARKER)
        }
        - {None}
    )
    if not steps:
        return None
    name = f"checkpoint-{steps[-1]}"
    target = work / CHECKPOINTS / name
    if not (target / COMPLETE_MARKER).exists():
        shutil.rmtree(target, ignore_errors=True)
        store.download_dir(f"{CHECKPOINTS}/{name}", target)
    return steps[-1]


def _sync_checkpoint(store: ArtifactStore, work: Path, step: int) -> None:
    """Upload checkpoint-N if complete (its marker last), and drop remote ones gone locally."""
    from slmops_pipelines.steps.train.checkpoints import COMPLETE_MARKER

    folder = work / CHECKPOINTS / f"checkpoint-{step}"
    marker = folder / COMPLETE_MARKER
    for _ in range(20):  # the marker follows the Trainer's save by a moment
        if marker.exists():
            break
        time.sleep(0.1)
    if marker.exists():
        prefix = f"{CHECKPOINTS}/checkpoint-{step}"
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p != marker):
            store.upload_file(path, f"{prefix}/{path.relative_to(folder).as_posix()}")
        store.upload_file(marker, f"{prefix}/{COMPLETE_MARKER}")
    # The Trainer rotates old checkpoints away (saveTotalLimit): mirror that remotely.
    local_names = {p.name for p in (work / CHECKPOINTS).iterdir()} if (work / CHECKPOINTS).is_dir() else set()
    remote_names = {info.key.split("/")[1] for info in store.list(CHECKPOINTS) if info.key.count("/") >= 2}
    for stale in sorted(remote_names - local_names):
        store.delete_prefix(f"{CHECKPOINTS}/{stale}")


def _check_local_resources(spec: FineTuneJobSpec) -> None:
    """What this machine cannot do fails before anything is written."""
    if spec.resources.nodes > 1:
        raise InputError(
            f"{spec.resources.nodes} nodes need a cluster (the kfp backend); the local engine runs on one node",
            field="resources.nodes",
        )
    if spec.training.precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise InputError(
                "fp16 training needs a CUDA GPU; use bf16 or fp32 on CPU", field="training.precision"
            )


def _load_stored_metrics(store: ArtifactStore) -> dict[str, Any]:
    return publish.read_json(store, "metrics.json") or {}


def run_finetune(
    *,
    name: str,
    namespace: str = "default",
    spec: FineTuneJobSpec,
    output_uri: str | None = None,
    reporter: Reporter | None = None,
) -> JobOutcome:
    """Run the job to completion (or resume it); raise JobError with a clear message on failure."""
    reporter = reporter or NullReporter()
    quiet_libraries()
    started = time.time()
    output_uri = spec.output.uri or output_uri or default_output_uri(name)
    identity = job_identity("FineTuneJob", namespace, name, spec)

    _check_local_resources(spec)
    reporter.stage("output", f"checking {output_uri}")
    if spec.output.credentials_secret and output_uri.startswith("s3://"):
        reporter.info(
            f"output.credentialsSecret ({spec.output.credentials_secret}) is mounted on a cluster; "
            "this local run uses the AWS_* environment"
        )
    store, finished = open_output(output_uri, identity)
    if finished is not None:
        reporter.info(f"{output_uri} already holds this job's finished output: nothing to do")
        return JobOutcome(
            output_uri=store.uri,
            metrics=_load_stored_metrics(store),
            artifacts=_artifacts(store, finished),
            already_complete=True,
        )
    work = work_dir(store)
    remote = store.local_root() is None
    if remote:
        _restore_remote_checkpoint(store, work)

    from slmops_pipelines.steps.data import check_dataset, prepare_data, read_eval_examples

    cache = cache_root()
    reporter.stage("data", f"loading {spec.dataset.uri}")
    loaded = check_dataset(spec.dataset, seed=spec.training.seed, cache_dir=cache)

    reporter.stage("model", f"resolving {spec.model.uri}")
    model_path = resolve_model(spec.model)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=spec.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    reporter.stage("data", "rendering and tokenizing")
    data_dir = work / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    stats = prepare_data(
        spec.dataset,
        tokenizer=tokenizer,
        out_dir=data_dir,
        seed=spec.training.seed,
        cache_dir=cache,
        loaded=loaded,
    )
    reporter.info(
        f"data: {stats.train.rows} training rows ({stats.train.tokens} tokens, {stats.train.truncated} truncated), "
        f"{stats.eval.rows if stats.eval else 0} eval rows, fingerprint {stats.fingerprint[:19]}"
    )

    from slmops_pipelines.steps.train.launch import run_training
    from slmops_pipelines.steps.train.request import TrainRequest

    reporter.stage("train", f"{spec.method} with {spec.resources.processes_per_node} process(es)")

    def on_event(event: dict) -> None:
        reporter.training_event(event)
        if remote and event.get("event") == "save":
            _sync_checkpoint(store, work, int(event["step"]))

    request = TrainRequest(spec=spec, model_path=model_path, data_dir=data_dir, work_dir=work)
    result = run_training(request, on_event=on_event)

    from slmops_pipelines.steps.evaluate import evaluate_finetune

    reporter.stage("evaluate", "generating answers for the eval split")
    merged_dir = work / "merged" if spec.output.merged_model else None
    evaluation = evaluate_finetune(
        spec,
        base_path=model_path,
        result_dir=work / result.output,
        examples=read_eval_examples(data_dir),
        merged_dir=merged_dir,
    )

    reporter.stage("report", "metrics, loss curve and report")
    from slmops_pipelines.steps.report import plot_loss_curve, write_report

    metrics = {
        "job": {"name": name, "namespace": namespace, "method": spec.method},
        "data": stats.to_json(),
        "train": result.model_dump(exclude={"log_history"}),
        "evaluation": evaluation.to_json() if evaluation else None,
        "log_history": result.log_history,
        "wall_time_s": round(time.time() - started, 1),
    }
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot = plot_loss_curve(result.log_history, work / "loss_curve.png", title=f"{name}: {spec.method}")
    write_report(metrics, work, title=f"FineTuneJob {name}", plot=plot)

    reporter.stage("publish", f"writing {output_uri}")
    # The job is done: checkpoints were only resume state.
    shutil.rmtree(work / CHECKPOINTS, ignore_errors=True)
    if remote:
        store.delete_prefix(CHECKPOINTS)
    manifest = publish.write_manifest(
        store,
        work,
        identity=identity,
        spec=spec.model_dump(mode="json", by_alias=True),
        inputs={
            "model": {"uri": spec.model.uri, "resolvedPath": str(model_path)},
            "dataset": {"uri": spec.dataset.uri, "fingerprint": stats.fingerprint},
        },
        exclude=(".slmops/",),
    )
    if remote:
        shutil.rmtree(work, ignore_errors=True)
    return JobOutcome(output_uri=store.uri, metrics=metrics, artifacts=_artifacts(store, manifest))


# Artifact name -> file, or folder (trailing slash), relative to the output root.
_ARTIFACTS = {
    "adapter": "adapter/",
    "model": "model/",
    "merged": "merged/",
    "tensorboard": "tensorboard/",
    "metrics": "metrics.json",
    "report": "report.html",
    "lossCurve": "loss_curve.png",
    "manifest": publish.MANIFEST,
}


def _artifacts(store: ArtifactStore, manifest: dict[str, Any]) -> dict[str, str]:
    paths = [entry["path"] for entry in manifest.get("files", [])] + [publish.MANIFEST]
    return {
        name: store.uri_of(rel.rstrip("/"))
        for name, rel in _ARTIFACTS.items()
        if any(path == rel or (rel.endswith("/") and path.startswith(rel)) for path in paths)
    }


__all__ = ["run_finetune"]
