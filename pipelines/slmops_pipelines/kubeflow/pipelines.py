"""The pipelines: ``finetune``, ``optimize``, and ``finetune-optimize`` chaining both.

Each is built by a factory from a :class:`~.placement.Placement` and the
:class:`~.images.Images`, so that the operator can compile one per job (its GPUs, nodes and
Secret) while ``slmops compile`` writes general-purpose ones to ``pipelines/compiled/``.

Parameters of every pipeline: the resource's ``spec`` (a dict, camelCase: what
``kubectl get -o json`` shows), a ``job`` context (name, namespace, uid, labels; see
:class:`~.tasks.JobContext`) and the ``output_uri``; ``optimize`` also takes the
``source_uri`` of the FineTuneJob it optimizes (empty for a model/adapter source).

The graphs::

    finetune:  inspect -> prepare-data -> train -> evaluate-finetune -> publish-finetune
    finetune-search:  inspect -> prepare-data -> ParallelFor(plan-trials: train-trial) -> pick-best
                      -> evaluate-finetune -> publish-finetune (with the trials)
    optimize:  inspect -> prepare-source -> ParallelFor(plan-targets: build-target) -> publish-optimize

``inspect`` and ``publish`` look at the world (claims, fingerprints, the output location) and
are never cached; every other step is cached on its inputs: the spec, the dataset (or
source) fingerprint, and the artifacts of the step before it.
"""

# No ``from __future__ import annotations``: KFP reads the pipeline functions' annotations.
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmops_pipelines.kubeflow import settings
from slmops_pipelines.kubeflow.components import Components, make_components
from slmops_pipelines.kubeflow.images import Images
from slmops_pipelines.kubeflow.placement import Placement

COMPILED_DIR = Path(__file__).resolve().parents[2] / "compiled"


def _inspect_and_prepare(c: Components, p: Placement, *, spec: Any, job: Any, output_uri: Any, shown: Any):
    """The first two steps of every FineTuneJob pipeline (``shown``: its typed settings, checked)."""
    inspect = p.uncached(
        c.inspect_finetune(spec=spec, job=job, output_uri=output_uri, **shown), name="inspect"
    )
    data = p.common(
        c.prepare_data(
            spec=inspect.outputs["data_spec"],
            output_uri=output_uri,
            fingerprint=inspect.outputs["fingerprint"],
            inputs=inspect.outputs["inputs"],
        ),
        name="prepare data",
    )
    return inspect, data


def _evaluate_and_publish(
    c: Components, p: Placement, run: dict[str, Any], *, inspect, data, eval_spec, model, **extra
):
    """The last two steps of every FineTuneJob pipeline: evaluate ``model``, then publish."""
    evaluate = p.compute(
        c.evaluate_finetune(
            spec=eval_spec, output_uri=run["output_uri"], data=data.outputs["data"], model=model
        ),
        name="evaluate",
        gpus=min(p.gpus, 1),  # generation is one process: one GPU is all it uses
        requests=False,
    )
    publish = p.uncached(
        c.publish_finetune(
            **run,
            fingerprint=inspect.outputs["fingerprint"],
            started_at=inspect.outputs["started_at"],
            data=data.outputs["data"],
            model=model,
            evaluation=evaluate.outputs["evaluation"],
            merged=evaluate.outputs["merged"],
            **extra,
        ),
        name="publish",
    )
    return publish


def _finetune_steps(c: Components, p: Placement, *, spec: Any, job: Any, output_uri: Any, shown: Any = None):
    inspect, data = _inspect_and_prepare(c, p, spec=spec, job=job, output_uri=output_uri, shown=shown or {})
    task = c.train(
        spec=inspect.outputs["train_spec"], job=job, output_uri=output_uri, data=data.outputs["data"]
    )
    # Several nodes: the step only launches and follows the PyTorchJob/TrainJob, whose nodes get the GPUs.
    train = p.launcher(task, name="train") if p.multi_node else p.compute(task, gpus=p.gpus, name="train")
    p.retried(train)
    run = {"spec": spec, "job": job, "output_uri": output_uri}
    evaluated = {"eval_spec": inspect.outputs["eval_spec"], "model": train.outputs["model"]}
    return _evaluate_and_publish(c, p, run, inspect=inspect, data=data, **evaluated)


def _finetune_search_steps(c: Components, p: Placement, *, spec: Any, job: Any, output_uri: Any, shown: Any):
    from kfp import dsl

    inspect, data = _inspect_and_prepare(c, p, spec=spec, job=job, output_uri=output_uri, shown=shown)
    plan = p.common(c.plan_trials(spec=spec), name="plan trials")
    with dsl.ParallelFor(items=plan.output, parallelism=p.trial_parallelism) as trial_item:
        trial = p.retried(
            p.compute(
                c.train_trial(spec=spec, trial=trial_item, output_uri=output_uri, data=data.outputs["data"]),
                gpus=p.gpus,
                name="trial",
            )
        )
    best = p.common(
        c.pick_best(spec=spec, output_uri=output_uri, trials=dsl.Collected(trial.outputs["trial_model"])),
        name="pick the best trial",
    )
    run = {"spec": spec, "job": job, "output_uri": output_uri}
    return _evaluate_and_publish(
        c,
        p,
        run,
        inspect=inspect,
        data=data,
        eval_spec=best.outputs["Output"],  # the best trial's spec
        model=best.outputs["best"],
        search=best.outputs["search"],  # its trials and leaderboard go into the output too
    )


def _optimize_steps(
    c: Components, p: Placement, *, spec: Any, job: Any, output_uri: Any, source_uri: Any, shown: Any = None
):
    inspected = c.inspect_optimize(
        spec=spec, job=job, output_uri=output_uri, source_uri=source_uri, **(shown or {})
    )
    inspect = p.uncached(inspected, name="inspect")
    prepared = p.common(
        c.prepare_source(
            spec=inspect.outputs["source_spec"],
            output_uri=output_uri,
            source_uri=source_uri,
            fingerprint=inspect.outputs["fingerprint"],
        ),
        name="prepare source",
    )
    built = [
        _build_targets(c, p, family, spec=spec, output_uri=output_uri, prepared=prepared)
        for family in p.target_families
    ]
    more = {"more_targets": built[1]} if len(built) > 1 else {}
    publish = p.uncached(
        c.publish_optimize(
            spec=spec,
            job=job,
            output_uri=output_uri,
            started_at=inspect.outputs["started_at"],
            prepared=prepared.outputs["prepared"],
            targets=built[0],
            **more,
        ),
        name="publish",
    )
    return publish


def _build_targets(c: Components, p: Placement, family: str, *, spec: Any, output_uri: Any, prepared: Any):
    """One ParallelFor over the targets of one optimizer image: ``cpu``, or ``cuda`` (GPU providers).

    With one family the loop takes every target (the general-purpose pipeline builds them
    all in the CPU image); with two, each loop takes its own.
    """
    from kfp import dsl

    only = len(p.target_families) == 1
    cuda = family == "cuda"
    # A task of its own: kfp.local (like the dashboard) iterates over a task's single output.
    plan = p.common(
        c.plan_targets(spec=spec, family="" if only else family),
        name="plan targets" if only else f"plan {family} targets",
    )
    builder = c.build_target_cuda if cuda else c.build_target
    with dsl.ParallelFor(items=plan.output, parallelism=p.target_parallelism) as target_spec:
        target = p.compute(
            builder(spec=target_spec, output_uri=output_uri, prepared=prepared.outputs["prepared"]),
            gpus=p.target_gpus if cuda or only else 0,
            name="build target" if only else f"build {family} target",
        )
    return dsl.Collected(target.outputs["target"])


# The FineTuneJob pipelines: name -> (steps, pipeline name, description).
_FINETUNE_FAMILY: dict[str, tuple[Callable, str, str]] = {
    "finetune": (
        _finetune_steps,
        "slmops-finetune",
        "slmops fine-tuning: data prep, LoRA/QLoRA/DoRA or full fine-tuning, evaluation, publish.",
    ),
    "finetune-search": (
        _finetune_search_steps,
        "slmops-finetune-search",
        "slmops fine-tuning with spec.search: trials side by side, the best one published.",
    ),
}


def _finetune_family(member: str, placement: Placement | None, images: Images | None) -> Callable:
    """A FineTuneJob pipeline: the parameters every one of them takes, over its own steps."""
    from kfp import dsl

    steps, name, description = _FINETUNE_FAMILY[member]
    c, p = make_components(images or Images.default()), placement or Placement.default()

    def pipeline(**arguments: Any) -> str:
        run = {key: arguments[key] for key in ("spec", "job", "output_uri")}
        shown = settings.taken(arguments, "", settings.FINETUNE)
        return steps(c, p, **run, shown=shown).outputs["Output"]

    groups = {"": (*settings.JOB_PARAMETERS, *settings.parameters(settings.FINETUNE))}
    return dsl.pipeline(name=name, description=description)(settings.sign(pipeline, description, groups))


def finetune_pipeline(*, placement: Placement | None = None, images: Images | None = None) -> Callable:
    return _finetune_family("finetune", placement, images)


def finetune_search_pipeline(*, placement: Placement | None = None, images: Images | None = None) -> Callable:
    return _finetune_family("finetune-search", placement, images)


def _optimize_parameters() -> tuple[settings.Parameter, ...]:
    return (*settings.JOB_PARAMETERS, settings.SOURCE_URI, *settings.parameters(settings.OPTIMIZE))


def optimize_pipeline(*, placement: Placement | None = None, images: Images | None = None) -> Callable:
    from kfp import dsl

    c, p = make_components(images or Images.default()), placement or Placement.default(gpus=0)
    description = "slmops optimization: ONNX export and quantization per target, measured and gated."

    def optimize(**arguments: Any) -> str:
        run = {key: arguments[key] for key in ("spec", "job", "output_uri", "source_uri")}
        shown = settings.taken(arguments, "", settings.OPTIMIZE)
        return _optimize_steps(c, p, **run, shown=shown).outputs["Output"]

    signed = settings.sign(optimize, description, {"": _optimize_parameters()})
    return dsl.pipeline(name="slmops-optimize", description=description)(signed)


def finetune_optimize_pipeline(
    *,
    finetune_placement: Placement | None = None,
    optimize_placement: Placement | None = None,
    images: Images | None = None,
) -> Callable:
    """Both jobs in one run: the fine-tuning job's parameters as ``finetune_*``, the optimization's as ``optimize_*``."""
    from kfp import dsl

    c = make_components(images or Images.default())
    fp = finetune_placement or Placement.default()
    op = optimize_placement or Placement.default(gpus=0)
    description = "slmops fine-tuning followed by the optimization of its result, in one run."

    def finetune_optimize(**arguments: Any) -> str:
        def run(prefix: str) -> dict[str, Any]:
            return {key: arguments[prefix + key] for key in ("spec", "job", "output_uri")}

        published = _finetune_steps(
            c, fp, **run("finetune_"), shown=settings.taken(arguments, "finetune_", settings.FINETUNE)
        )
        shown = settings.taken(arguments, "optimize_", settings.OPTIMIZE)
        steps = _optimize_steps(
            c, op, **run("optimize_"), source_uri=published.outputs["Output"], shown=shown
        )
        return steps.outputs["Output"]

    groups = {
        "finetune_": (*settings.JOB_PARAMETERS, *settings.parameters(settings.FINETUNE)),
        "optimize_": (*settings.JOB_PARAMETERS, *settings.parameters(settings.OPTIMIZE)),
    }
    signed = settings.sign(finetune_optimize, description, groups)
    return dsl.pipeline(name="slmops-finetune-optimize", description=description)(signed)


PIPELINES: dict[str, Callable[..., Callable]] = {
    "finetune": finetune_pipeline,
    "finetune-search": finetune_search_pipeline,
    "optimize": optimize_pipeline,
    "finetune-optimize": finetune_optimize_pipeline,
}


def compile_pipeline(pipeline: Callable, path: Path) -> Path:
    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(path))
    return path


def with_values(shared: Path, path: Path, values: dict[str, str]) -> Path:
    """``shared`` written to ``path`` with every string equal to a key of ``values`` replaced.

    The YAML is parsed and written again rather than edited as text, so that a value stays a
    string whatever it looks like (a job named ``123`` or ``true``).
    """
    if not values and shared == path:
        return path
    import yaml

    def swap(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: swap(value) for key, value in node.items()}
        if isinstance(node, list):
            return [swap(value) for value in node]
        return values.get(node, node) if isinstance(node, str) else node

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    documents = [swap(doc) for doc in yaml.load_all(shared.read_text(), Loader=loader)]
    path.write_text(yaml.dump_all(documents, Dumper=dumper, sort_keys=False))
    return path


def compile_all(out_dir: Path = COMPILED_DIR, *, images: Images | None = None) -> list[Path]:
    """Write every pipeline, with the default placement, as ``<name>.yaml`` in ``out_dir``."""
    return [
        compile_pipeline(factory(images=images), out_dir / f"{name}.yaml")
        for name, factory in PIPELINES.items()
    ]


def queued_steps(path: Path) -> dict[str, str]:
    """Step -> Kueue queue, for the steps of a compiled pipeline whose pods carry a queue label."""
    import yaml

    from slmops_pipelines.kubeflow.placement import QUEUE_LABEL

    documents = list(yaml.safe_load_all(path.read_text()))
    if len(documents) < 2:  # no platform spec: nothing Kubernetes-specific
        return {}
    executors = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return {
        name.removeprefix("exec-"): labels[QUEUE_LABEL]
        for name, config in sorted(executors.items())
        if QUEUE_LABEL in (labels := (config.get("podMetadata") or {}).get("labels") or {})
    }
