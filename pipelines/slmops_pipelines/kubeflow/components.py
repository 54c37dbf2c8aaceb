"""The KFP components: one-line bodies that call :mod:`slmops_pipelines.kubeflow.tasks`.

KFP ships each function's source to the pod (a "lightweight" component), so a body may use
only what it imports itself; it imports :mod:`.tasks` from the slmops installed in the
image.  :func:`make_components` binds the functions to images (``install_kfp_package=False``:
the images carry kfp and slmops, nothing is installed at run time).

No ``from __future__ import annotations`` here: KFP reads the annotations to type the
component's inputs and outputs.
"""

from typing import Callable, List, NamedTuple  # noqa: UP035 -- KFP's type parser wants typing's List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from slmops_pipelines.kubeflow.images import Images

# -- FineTuneJob -------------------------------------------------------------------------------


def inspect_finetune(
    spec: dict,
    job: dict,
    output_uri: str,
    model: str = "",
    dataset: str = "",
    method: str = "",
    learning_rate: float = 0.0,
    max_steps: int = 0,
) -> NamedTuple(
    "Inspection",
    [
        ("fingerprint", str),
        ("started_at", float),
        ("data_spec", dict),
        ("train_spec", dict),
        ("eval_spec", dict),
    ],
):
    """Claim the output location, fingerprint the dataset, derive each step's view of the spec.

    Args:
        spec: The FineTuneJob's spec (JSON, as the resource has it): what runs.
        job: Who the run is for: kind, name, namespace, uid, labels.
        output_uri: Where the job's output goes.
        model: The base model (spec.model.uri); empty: as the spec says.
        dataset: The training data (spec.dataset.uri); empty: as the spec says.
        method: lora, qlora, dora or full (spec.method); empty: as the spec says.
        learning_rate: Peak learning rate (spec.training.learningRate); 0: as the spec says.
        max_steps: Optimizer steps (spec.training.maxSteps); 0: as the spec says.
    """
    from collections import namedtuple

    from slmops_pipelines.kubeflow import tasks

    shown = {
        "model": model,
        "dataset": dataset,
        "method": method,
        "learning_rate": learning_rate,
        "max_steps": max_steps,
    }
    outputs = tasks.inspect_finetune(spec=spec, job=job, output_uri=output_uri, shown=shown)
    return namedtuple("Inspection", ["fingerprint", "started_at", "data_spec", "train_spec", "eval_spec"])(
        *outputs
    )


def prepare_data(
    spec: dict, output_uri: str, fingerprint: str, data: Output[Dataset], data_metrics: Output[Metrics]
):
    """Render and tokenize the dataset."""
    from slmops_pipelines.kubeflow import tasks

    tasks.prepare_data(
        spec=spec, output_uri=output_uri, fingerprint=fingerprint, data_dir=data.path, metrics=data_metrics
    )


def train(
    spec: dict,
    job: dict,
    output_uri: str,
    data: Input[Dataset],
    model: Output[Model],
    train_metrics: Output[Metrics],
):
    """Train the adapter (or model): torchrun here, or a PyTorchJob/TrainJob for several nodes."""
    from slmops_pipelines.kubeflow import tasks

    tasks.train(
        spec=spec,
        job=job,
        output_uri=output_uri,
        data_dir=data.path,
        model_dir=model.path,
        metrics=train_metrics,
    )


def evaluate_finetune(
    spec: dict,
    output_uri: str,
    data: Input[Dataset],
    model: Input[Model],
    evaluation: Output[Artifact],
    merged: Output[Model],
    eval_metrics: Output[Metrics],
):
    """Task accuracy of the fine-tuned and the base model; the merged model when asked for."""
    from slmops_pipelines.kubeflow import tasks

    tasks.evaluate_finetune(
        spec=spec,
        output_uri=output_uri,
        data_dir=data.path,
        model_dir=model.path,
        evaluation_path=evaluation.path,
        merged_dir=merged.path,
        metrics=eval_metrics,
    )


def publish_finetune(
    spec: dict,
    job: dict,
    output_uri: str,
    fingerprint: str,
    started_at: float,
    data: Input[Dataset],
    model: Input[Model],
    evaluation: Input[Artifact],
    merged: Input[Model],
    report: Output[HTML],
    artifacts: Output[Markdown],
    summary: Output[Metrics],
    search: Input[Artifact] = None,
) -> str:
    """Write metrics, loss curve and report; upload everything (with a search's trials); manifest last."""
    from slmops_pipelines.kubeflow import tasks

    return tasks.publish_finetune(
        spec=spec,
        job=job,
        output_uri=output_uri,
        fingerprint=fingerprint,
        started_at=started_at,
        data_dir=data.path,
        model_dir=model.path,
        evaluation_path=evaluation.path,
        merged_dir=merged.path,
        report_path=report.path,
        summary_path=artifacts.path,
        metrics=summary,
        search_dir=search.path if search is not None else "",
    )


# -- hyperparameter search -------------------------------------------------------------------


def plan_trials(spec: dict) -> list:
    """The trials of spec.search, drawn from its seed: one ParallelFor iteration each."""
    from slmops_pipelines.kubeflow import tasks

    return tasks.plan_trials(spec=spec)


def train_trial(
    spec: dict,
    trial: dict,
    output_uri: str,
    data: Input[Dataset],
    trial_model: Output[Model],
    trial_metrics: Output[Metrics],
):
    """Train and score one trial (a failed trial is recorded, not raised)."""
    from slmops_pipelines.kubeflow import tasks

    tasks.train_trial(
        spec=spec,
        trial=trial,
        output_uri=output_uri,
        data_dir=data.path,
        trial_dir=trial_model.path,
        metrics=trial_metrics,
    )


def pick_best(
    spec: dict,
    output_uri: str,
    trials: Input[List[Model]],  # noqa: UP006
    best: Output[Model],
    search: Output[Artifact],
) -> dict:
    """The leaderboard; the best trial's results become the model; its spec is returned."""
    from slmops_pipelines.kubeflow import tasks

    return tasks.pick_best(
        spec=spec,
        output_uri=output_uri,
        trial_dirs=[t.path for t in trials],
        best_dir=best.path,
        search_dir=search.path,
    )


# -- OptimizeJob -------------------------------------------------------------------------------


def inspect_optimize(
    spec: dict, job: dict, output_uri: str, source_uri: str, model: str = "", targets: str = ""
) -> NamedTuple("Inspection", [("fingerprint", str), ("started_at", float), ("source_spec", dict)]):
    """Claim the output location, fingerprint the source, derive the source step's view of the spec.

    Args:
        spec: The OptimizeJob's spec (JSON, as the resource has it): what runs.
        job: Who the run is for: kind, name, namespace, uid, labels.
        output_uri: Where the job's output goes.
        source_uri: The output of the FineTuneJob it optimizes (empty for a model source).
        model: What is optimized: a model URI, or `job <name>`; empty: as the spec says.
        targets: The targets, name=provider/precision, comma separated; empty: as the spec says.
    """
    from collections import namedtuple

    from slmops_pipelines.kubeflow import tasks

    shown = {"model": model, "targets": targets}
    outputs = tasks.inspect_optimize(
        spec=spec, job=job, output_uri=output_uri, source_uri=source_uri, shown=shown
    )
    return namedtuple("Inspection", ["fingerprint", "started_at", "source_spec"])(*outputs)


def plan_targets(spec: dict, family: str = "") -> list:
    """One view of the spec per target (of one image family), one ParallelFor iteration each."""
    from slmops_pipelines.kubeflow import tasks

    return tasks.plan_targets(spec=spec, family=family)


def prepare_source(
    spec: dict,
    output_uri: str,
    source_uri: str,
    fingerprint: str,
    prepared: Output[Model],
    reference_metrics: Output[Metrics],
):
    """Merge the adapter, render the evaluation rows and measure the PyTorch references."""
    from slmops_pipelines.kubeflow import tasks

    tasks.prepare_optimize_source(
        spec=spec,
        output_uri=output_uri,
        source_uri=source_uri,
        fingerprint=fingerprint,
        prepared_dir=prepared.path,
        metrics=reference_metrics,
    )


def build_target(
    spec: dict,
    output_uri: str,
    prepared: Input[Model],
    target: Output[Model],
    target_metrics: Output[Metrics],
):
    """Export the view's target to ONNX, quantize it, measure it and check its gates."""
    from slmops_pipelines.kubeflow import tasks

    tasks.build_target(
        spec=spec,
        output_uri=output_uri,
        prepared_dir=prepared.path,
        target_dir=target.path,
        metrics=target_metrics,
    )


def publish_optimize(
    spec: dict,
    job: dict,
    output_uri: str,
    started_at: float,
    prepared: Input[Model],
    targets: Input[List[Model]],  # noqa: UP006
    report: Output[HTML],
    artifacts: Output[Markdown],
    summary: Output[Metrics],
    more_targets: Input[List[Model]] = None,  # noqa: UP006 -- the targets built in the other image
) -> str:
    """Collect the targets, write the comparison report, apply the gates, publish."""
    from slmops_pipelines.kubeflow import tasks

    return tasks.publish_optimize(
        spec=spec,
        job=job,
        output_uri=output_uri,
        started_at=started_at,
        prepared_dir=prepared.path,
        target_dirs=[t.path for t in [*targets, *(more_targets or [])]],
        report_path=report.path,
        summary_path=artifacts.path,
        metrics=summary,
    )


class Components(NamedTuple):
    inspect_finetune: Callable
    prepare_data: Callable
    train: Callable
    evaluate_finetune: Callable
    publish_finetune: Callable
    plan_trials: Callable
    train_trial: Callable
    pick_best: Callable
    inspect_optimize: Callable
    plan_targets: Callable
    prepare_source: Callable
    build_target: Callable
    publish_optimize: Callable
    build_target_cuda: Callable  # build_target in the CUDA optimizer image


_TRAINER = (
    inspect_finetune,
    prepare_data,
    train,
    evaluate_finetune,
    publish_finetune,
    plan_trials,
    train_trial,
    pick_best,
)
_OPTIMIZER = (inspect_optimize, plan_targets, prepare_source, build_target, publish_optimize)


def make_components(images: Images) -> Components:
    """The components, each bound to the image of its family."""

    def bind(func, image: str):
        return dsl.component(func, base_image=image, install_kfp_package=False)

    bound = {f.__name__: bind(f, images.trainer) for f in _TRAINER}
    bound.update({f.__name__: bind(f, images.optimizer) for f in _OPTIMIZER})
    bound["build_target_cuda"] = bind(build_target, images.optimizer_cuda)
    return Components(**bound)
