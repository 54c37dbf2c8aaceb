"""Where a job's runs are tracked: MLflow, where teams already look (``spec.tracking``)."""

from __future__ import annotations

from pydantic import Field

from slmops_pipelines.specs.base import SECRET_NAME, SpecModel


class MlflowTracking(SpecModel):
    """An MLflow tracking server the job logs to: off unless set; never a reason for the job to fail."""

    tracking_uri: str = Field(
        pattern=r"^https?://[^\s/?#]+[^\s]*$",
        max_length=2048,
        description=(
            "The tracking server (http:// or https://), as the job's pods reach it; the server should proxy "
            "artifacts (mlflow server --serve-artifacts, its default) so that the pods need no store credentials."
        ),
    )
    experiment: str = Field(
        default="slmops",
        min_length=1,
        max_length=500,
        description="The experiment the runs go to (created if missing).",
    )
    credentials_secret: str | None = Field(
        default=None,
        pattern=SECRET_NAME,
        max_length=253,
        description=(
            "Secret in the job's namespace with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or "
            "MLFLOW_TRACKING_TOKEN, for a server that asks for them."
        ),
    )


class TrackingSpec(SpecModel):
    """Experiment tracking for the job's runs."""

    mlflow: MlflowTracking | None = Field(
        default=None,
        description=(
            "Log the run to MLflow: a FineTuneJob its parameters, losses, evaluation and adapter; an "
            "OptimizeJob each target's metrics and gate verdicts, linked to the FineTuneJob's run.  An "
            "unreachable server never fails the job: the Tracked condition says so."
        ),
    )
