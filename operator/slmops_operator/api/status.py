"""The status shared by FineTuneJob and OptimizeJob.

The status is written by the operator (and by ``slmops run``'s local engine into its run
folder): it mirrors the run's phase, progress, results and failures.  Conditions follow the
Kubernetes API conventions (type, status, reason, message, lastTransitionTime,
observedGeneration), so ``kubectl wait --for=condition=Succeeded`` works.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from slmops_pipelines.specs import SpecModel

JobPhase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Cancelled"]
PHASES: tuple[JobPhase, ...] = get_args(JobPhase)  # the same six, in order, for code that iterates


class Condition(SpecModel):
    """A standard Kubernetes condition."""

    type: str = Field(description="Condition type: Ready, Succeeded, Failed, ...")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str | None = Field(default=None, description="RFC 3339 time of the last change.")
    observed_generation: int | None = Field(default=None, description="Generation the condition was set for.")


class Progress(SpecModel):
    """Where a running job is."""

    stage: str | None = Field(default=None, description="Current stage: data, train, evaluate, publish, ...")
    step: int | None = Field(default=None, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.")
    percent: int | None = Field(default=None, ge=0, le=100, description="Overall progress in percent.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    eval_loss: float | None = Field(default=None, description="Latest eval loss.")
    eta_seconds: int | None = Field(default=None, description="Estimated seconds to the end of training.")
    trials: TrialsProgress | None = Field(default=None, description="Hyperparameter search: trials so far.")


class TrialsProgress(SpecModel):
    """Where a hyperparameter search is."""

    total: int | None = Field(default=None, description="Trials planned.")
    done: int | None = Field(default=None, description="Trials finished (complete, pruned or failed).")
    running: int | None = Field(default=None, description="Trials running now.")
    pruned: int | None = Field(default=None, description="Trials stopped early by the pruner.")
    failed: int | None = Field(default=None, description="Trials that failed.")
    best_trial: int | None = Field(default=None, description="The best trial so far.")
    best_value: float | None = Field(default=None, description="Its value of search.metric.")


class RunRef(SpecModel):
    """The backend run that executes the job."""

    backend: str | None = Field(default=None, description="local or kfp.")
    id: str | None = Field(default=None, description="Backend run id.")
    name: str | None = Field(default=None, description="Backend run name.")
    url: str | None = Field(default=None, description="Dashboard URL of the run.")


class TargetStatus(SpecModel):
    """Where one built target is (a job that builds targets), as KServe's storageUri takes it."""

    storage_uri: str | None = Field(default=None, description="The target's folder (s3://, pvc://, a path).")
    provider: str | None = Field(default=None, description="Its ONNX Runtime execution provider.")
    precision: str | None = Field(default=None, description="Its weight precision.")


class ServingStatus(SpecModel):
    """The InferenceService ``spec.serve`` asked for (a job that may be served)."""

    name: str | None = Field(default=None, description="The InferenceService, in the job's namespace.")
    target: str | None = Field(default=None, description="The target it serves.")
    storage_uri: str | None = Field(default=None, description="What KServe downloads: the target's folder.")
    url: str | None = Field(default=None, description="Its URL (the OpenAI API under /openai/v1 and /v1).")
    ready: bool | None = Field(default=None, description="Whether KServe says it is ready.")
    replaced_by: str | None = Field(
        default=None, description="A later job that now serves under this name (this one no longer acts)."
    )


class StageUsageStatus(SpecModel):
    """What one stage cost (its runs added up: retries, resumed attempts, search trials)."""

    runs: int = Field(default=0, description="How many times it ran.")
    gpus: int = Field(default=0, description="GPUs it held (the most of any run).")
    wall_seconds: float = Field(default=0.0, description="Wall time, seconds.")
    cpu_seconds: float = Field(default=0.0, description="CPU time of its processes, seconds.")
    gpu_seconds: float = Field(default=0.0, description="GPUs x wall time, seconds.")


class UsageStatus(SpecModel):
    """What the job cost: GPU-seconds (GPUs x wall time of the steps that held them), CPU-seconds, wall time."""

    gpu_seconds: float = Field(default=0.0, description="GPUs x wall time of the stages that held GPUs.")
    cpu_seconds: float = Field(default=0.0, description="CPU time of every stage's processes.")
    wall_seconds: float = Field(default=0.0, description="Wall time of the stages, added up.")
    stages: dict[str, StageUsageStatus] = Field(default_factory=dict, description="Stage name to its usage.")


class MlflowRunStatus(SpecModel):
    """The job's run in MLflow, or why it is not there."""

    tracking_uri: str | None = Field(default=None, description="The tracking server.")
    experiment_id: str | None = Field(default=None, description="The experiment's id.")
    run_id: str | None = Field(default=None, description="The run's id.")
    url: str | None = Field(default=None, description="The run's page.")
    error: str | None = Field(default=None, description="Why it could not be logged (the job itself stands).")


class TrackingStatus(SpecModel):
    """Where the job's run is tracked (spec.tracking)."""

    mlflow: MlflowRunStatus | None = Field(default=None, description="MLflow.")


class JobStatus(SpecModel):
    """Observed state of a job."""

    phase: JobPhase | None = Field(
        default=None, description="Pending, Queued, Running, Succeeded, Failed, Cancelled."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions.")
    observed_generation: int | None = Field(
        default=None, description="Generation of the spec last acted upon."
    )
    progress: Progress | None = Field(default=None, description="Progress of the running job.")
    run: RunRef | None = Field(default=None, description="The backend run.")
    run_attempt: int | None = Field(
        default=None,
        ge=1,
        description="The job's run number: 1, then one more each time a suspended job resumes after its run was cancelled.",
    )
    artifacts: dict[str, str] = Field(default_factory=dict, description="Artifact name to URI.")
    targets: dict[str, TargetStatus] = Field(
        default_factory=dict, description="The built targets (a job that builds targets): name to location."
    )
    serving: ServingStatus | None = Field(
        default=None, description="What spec.serve made (a job that may be served)."
    )
    metrics: dict[str, float] = Field(default_factory=dict, description="Summary metrics.")
    usage: UsageStatus | None = Field(default=None, description="What the job cost, per stage.")
    tracking: TrackingStatus | None = Field(default=None, description="Where the job's run is tracked.")
    message: str | None = Field(default=None, description="Latest human-readable message.")
    start_time: str | None = Field(default=None, description="RFC 3339 time the run started.")
    completion_time: str | None = Field(default=None, description="RFC 3339 time the run ended.")
