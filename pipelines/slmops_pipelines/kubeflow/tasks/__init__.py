"""What each KFP component does: the shared stages over the folders of its artifacts.

A component's body is one call into this package (see :mod:`..components`), so the logic is
ordinary, importable, testable Python; KFP only decides where it runs and moves the
artifacts.  Artifacts are folders (``Dataset``, ``Model``) or files (``HTML``,
``Markdown``); ``Metrics`` artifacts get the scalars the dashboard shows.

Every task takes the job's ``spec`` (the resource's ``spec``, camelCase, as a dict) and a
``job`` context (:class:`~.common.JobContext`) as parameters, so the spec is part of every
cache key; data prep also takes the dataset fingerprint, and what follows it takes its
output artifact.  One module per pipeline part:

* :mod:`.common` -- the job context, dashboard metrics, error recording, folder helpers;
* :mod:`.finetune` -- inspect, prepare data, train, evaluate, publish (with or without a search);
* :mod:`.search` -- plan the trials, train one, pick the best;
* :mod:`.optimize` -- inspect, prepare the source, build a target, publish.

The component bodies call ``tasks.<name>``: the names below are the components' contract.
"""

from slmops_pipelines.kubeflow.tasks.common import JobContext, MetricsArtifact, paths, reports_errors
from slmops_pipelines.kubeflow.tasks.finetune import (
    evaluate_finetune,
    inspect_finetune,
    prepare_data,
    publish_finetune,
    train,
)
from slmops_pipelines.kubeflow.tasks.optimize import (
    build_target,
    inspect_optimize,
    plan_targets,
    prepare_source,
    publish_optimize,
    source_fingerprint,
)
from slmops_pipelines.kubeflow.tasks.search import pick_best, plan_trials, train_trial

__all__ = [
    "JobContext",
    "MetricsArtifact",
    "build_target",
    "evaluate_finetune",
    "inspect_finetune",
    "inspect_optimize",
    "paths",
    "pick_best",
    "plan_targets",
    "plan_trials",
    "prepare_data",
    "prepare_source",
    "publish_finetune",
    "publish_optimize",
    "reports_errors",
    "source_fingerprint",
    "train",
    "train_trial",
]
