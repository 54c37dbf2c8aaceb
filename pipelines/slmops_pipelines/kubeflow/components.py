"""The KFP components: typed signatures over one call into :mod:`slmops_pipelines.kubeflow.tasks`.

KFP ships each function's source to the pod (a "lightweight" component), so a body may use
only what it imports itself.  Every body is the same two lines: take the arguments, call the
task of the same name with the artifacts as their local paths (:func:`.tasks.paths`); the
task's parameters are the component's.  :func:`make_components` binds the functions to
images (``install_kfp_package=False``: the images carry kfp and slmops, nothing is
installed at run time).

No ``from __future__ import annotations`` here: KFP reads the annotations to type the
component's inputs and outputs.
"""

from typing import Callable, List, NamedTuple  # noqa: UP035 -- KFP's type parser wants typing's List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from slmops_pipelines.kubeflow import settings
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
        ("inputs", dict),
    ],
):
    """Claim the output location, fingerprint the dataset, derive each step's view of the spec."""
    arguments = dict(locals())
    from slmops_pipelines.kubeflow import tasks

    return tasks.inspect_finetune(**tasks.paths(arguments))


def prepare_data(
    spec: dict,
    output_uri: str,
    fingerprint: str,
    inputs: dict,
    data: Output[Dataset],
    data_metrics: Output[Metrics],
):
    """Render and tokenize the dataset."""
    arguments = dict(locals())
    from slmops_pipelines.kubeflow import tasks

    tasks.prepare_data(**tasks.paths(arguments))


def train(
    spec: dict,
    job: dict,
    output_uri: str,
    data: Input[Dataset],
    model: Output[Model],
    train_metrics: Output[Metrics],
):
    """Train the adapter (or model): torchrun here, or a PyTorchJob/TrainJob for several nodes."""
    arguments = dict(locals())
    from slmops_pipelines.kubeflow import tasks

    tasks.train(**tasks.paths(arguments))


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
    arguments = dict(locals())
    from slmops_pipelines.kubeflow import tasks

    tasks.evaluate_finetune(**tasks.paths(arguments))


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
    arguments = dict(locals())
    from slmops_pipelines.kubeflow import tasks

    return tasks.publish_finetune(**tasks.paths(arguments))


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
    arguments = dict(locals())
    from slmops_pipelines.kubeflow import tasks

    tasks.train_trial(**tasks.paths(arguments))


def pick_best(
    spec: dict,
    output_uri: str,
    trials: Input[List[Model]],  # noqa: UP006
    best: Output[Model],
    search: Output[Artifact],
) -> dict:
    """The leaderboard; the best trial's results become the model; its spec is returned."""
    arguments = dict(locals())
    from slmops_pipelines.kubeflow import tasks

    return tasks.pick_best(**tasks.paths(arguments))


# -- OptimizeJob -------------------------------------------------------------------------------


def inspect_optimize(
    spec: dict, job: dict, output_uri: str, source_uri: str, model: str = "", targets: str = ""
) -> NamedTuple("Inspection", [("fingerprint", str), ("started_at", float), ("source_spec", dict)]):
    """Claim the output location, fingerprint the source, derive the source step's view of the spec."""
    arguments = dict(locals())
    from slmops_pipelines.kubeflow import tasks

    return tasks.inspect_optimize(**tasks.paths(arguments))


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
    arguments = dict(locals())
    from slmops_pipelines.kubeflow import tasks

    tasks.prepare_source(**tasks.paths(arguments))


def build_target(
    spec: dict,
    output_uri: str,
    prepared: Input[Model],
    target: Output[Model],
    target_metrics: Output[Metrics],
):
    """Export the view's target to ONNX, quantize it, measure it and check its gates."""
    arguments = dict(locals())
    from slmops_pipelines.kubeflow import tasks

    tasks.build_target(**tasks.paths(arguments))


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
    arguments = dict(locals())
    from slmops_pipelines.kubeflow import tasks

    return tasks.publish_optimize(**tasks.paths(arguments))


# The inspect steps' parameters as the dashboard describes them, from the one table of settings
# (their shipped source keeps a one-line docstring; KFP reads this one when it binds them).
inspect_finetune.__doc__ = settings.docstring(
    inspect_finetune.__doc__ or "", (*settings.JOB_PARAMETERS, *settings.parameters(settings.FINETUNE))
)
inspect_optimize.__doc__ = settings.docstring(
    inspect_optimize.__doc__ or "",
    (*settings.JOB_PARAMETERS, settings.SOURCE_URI, *settings.parameters(settings.OPTIMIZE)),
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
