"""The operator's settings: environment variables (``SLMOPS_*``), overridden by ``slmops operator`` flags.

Every setting has a documented variable so that the Helm chart can set it without a
command line; the flags exist for laptops and tests.

=====================================  ===================================================
variable                               meaning
=====================================  ===================================================
``SLMOPS_BACKEND``                     ``kfp`` (default in a cluster) or ``local``
``SLMOPS_NAMESPACES``                  comma-separated namespaces to watch; empty: all
``SLMOPS_MAX_RUNNING_PER_NAMESPACE``   running jobs per namespace; the rest wait as Queued (0: no limit)
``SLMOPS_DELETE_ARTIFACTS``            ``true``: deleting a job also deletes its artifacts
``SLMOPS_DEFAULT_OUTPUT``              output root for jobs without ``output.uri`` (``s3://bucket/prefix``)
``SLMOPS_POLL_SECONDS``                how often a running job's run is polled
``SLMOPS_BACKEND_RETRIES``             failed backend calls (with exponential backoff) before status says so
``SLMOPS_FINALIZER_TIMEOUT``            seconds a deleted job's cleanup (cancel, artifacts) is retried
                                       before the finalizer is released with a Warning Event
``SLMOPS_KFP_HOST``                    KFP API endpoint, e.g. ``http://ml-pipeline.kubeflow:8888``
``SLMOPS_KFP_MULTI_USER``              ``true``: multi-user KFP (profiles), runs in the job's namespace;
                                       ``false``: standalone; empty: ask KFP (``/apis/v2beta1/healthz``)
``SLMOPS_KFP_NAMESPACE``               standalone KFP: the namespace its pipeline pods run in
``SLMOPS_KFP_UI``                      KFP dashboard URL for ``status.run.url`` (default: the host)
``SLMOPS_KFP_AUTH``                    ``serviceaccount`` (a projected token) or ``none``
``SLMOPS_KFP_TOKEN_PATH``              where that token is mounted
``SLMOPS_DISTRIBUTED_ENGINE``          ``pytorchjob`` or ``trainjob``, for ``resources.nodes > 1``
``SLMOPS_TRAINJOB_RUNTIME``             the ClusterTrainingRuntime of TrainJobs (``torch-distributed``)
``SLMOPS_CACHE_PVC``                   PersistentVolumeClaim for the pipelines' model cache
``SLMOPS_CACHE_MAX_GB``                the input cache's size limit (least recently used entries not
                                       in use are evicted); empty: no limit
``SLMOPS_IMAGE_REGISTRY``              registry of the trainer/optimizer images
``SLMOPS_LOCAL_WORKERS``               jobs the local backend runs at once
``SLMOPS_LOCAL_MAX_RESTARTS``          times a worker that died without a verdict is started again
                                       before the job fails with reason ``WorkerLost``
``SLMOPS_LOCAL_STATE_DIR``             where the local backend keeps run state
``SLMOPS_LOCAL_ALLOWED_ROOTS``         local backend: comma-separated folders that model, dataset and
                                       adapter paths must lie under (empty: any path but the
                                       operator's own, see :mod:`slmops_operator.policy`)
``SLMOPS_TENANT_ALLOW``                standalone KFP: what each namespace may name, as JSON
                                       ``{"team-a": {"serviceAccounts": [..], "claims": [..],
                                       "imagePullSecrets": [..], "images": [prefix, ..]}, "*": {..}}``
                                       (``*``: every namespace)
``SLMOPS_ALLOW_TRUST_REMOTE_CODE``     ``true``: jobs may set ``trustRemoteCode`` in standalone KFP and
                                       local mode (multi-user KFP always may: the pods are the tenant's)
``SLMOPS_METRICS_PORT``                Prometheus metrics port (0: off)
``SLMOPS_WEBHOOK_PORT``                validating webhook port (0: no webhook)
``SLMOPS_WEBHOOK_CERT_DIR``            ``tls.crt`` and ``tls.key`` for it (cert-manager's layout)
``SLMOPS_WEBHOOK_INSECURE``            ``true``: plain HTTP (behind a TLS-terminating proxy, or tests)
=====================================  ===================================================
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "SLMOPS_"

Mode = Literal["standalone", "multi-user", "local"]


class TenantAllowance(BaseModel):
    """What jobs of one namespace may name in standalone KFP, where every team's pods share a namespace."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    service_accounts: list[str] = Field(default_factory=list, alias="serviceAccounts")
    claims: list[str] = Field(default_factory=list, description="PersistentVolumeClaims (pvc://claim/...).")
    image_pull_secrets: list[str] = Field(default_factory=list, alias="imagePullSecrets")
    images: list[str] = Field(
        default_factory=list,
        description="Image name prefixes spec.image may start with (registry.example/team-a/).",
    )


class OperatorSettings(BaseModel):
    backend: Literal["kfp", "local"] = "kfp"
    namespaces: list[str] = Field(default_factory=list, description="Empty: all namespaces.")
    max_running_per_namespace: int = Field(default=0, ge=0)
    delete_artifacts: bool = False
    default_output: str = ""
    poll_seconds: float = Field(default=10.0, gt=0)
    backend_retries: int = Field(default=5, ge=1, description="Failed backend calls before status says so.")
    submit_grace_seconds: float = Field(
        default=15.0,
        ge=0,
        description="How long a run creation whose answer was lost (a failed call, an operator "
        "killed mid-call) may still land: the run is looked for again after it, never created twice.",
    )
    finalizer_timeout: float = Field(
        default=300.0, gt=0, description="Seconds a deleted job's cleanup is retried before giving up."
    )
    kfp_host: str = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    kfp_ui: str = ""
    kfp_auth: Literal["serviceaccount", "none"] = "serviceaccount"
    kfp_multi_user: bool | None = Field(default=None, description="None: ask KFP's healthz.")
    kfp_namespace: str = Field(default="kubeflow", description="Standalone KFP: where its pods run.")
    kfp_token_path: Path = Path("/var/run/secrets/kfp/token")
    distributed_engine: Literal["pytorchjob", "trainjob"] = "pytorchjob"
    trainjob_runtime: str = Field(
        default="torch-distributed",
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="The ClusterTrainingRuntime a TrainJob's runtimeRef names.",
    )
    cache_pvc: str = ""
    cache_max_gb: float | None = Field(
        default=None,
        gt=0,
        description="The input cache's size limit in GB (pipeline pods and local workers).",
    )
    image_registry: str = ""
    local_workers: int = Field(default=1, ge=1)
    local_max_restarts: int = Field(
        default=3, ge=0, description="Restarts of a worker lost without a verdict."
    )
    local_state_dir: Path = Path.home() / ".cache" / "slmops" / "operator"
    local_allowed_roots: list[Path] = Field(
        default_factory=list,
        description="Local backend: where model/dataset paths may point (empty: anywhere).",
    )
    tenant_allow: dict[str, TenantAllowance] = Field(
        default_factory=dict,
        description="Standalone KFP: namespace (or '*') -> the accounts, claims, pull secrets and images it may name.",
    )
    allow_trust_remote_code: bool = Field(
        default=False, description="Standalone KFP and local mode: let jobs run a model repository's code."
    )
    metrics_port: int = Field(default=8080, ge=0, le=65535)
    webhook_port: int = Field(default=9443, ge=0, le=65535)
    webhook_addr: str = "0.0.0.0"
    webhook_cert_dir: Path = Path("/tmp/k8s-webhook-server/serving-certs")
    webhook_insecure: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> OperatorSettings:
        """Read ``SLMOPS_*`` variables; explicit ``overrides`` (flags) win over them."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            if name in ("namespaces", "local_allowed_roots"):
                values[name] = [item.strip() for item in raw.split(",") if item.strip()]
            elif name == "tenant_allow":
                values[name] = json.loads(raw)
            elif field.annotation is bool:
                values[name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    @property
    def mode(self) -> Mode:
        """How tenants' pods run: what admission allows depends on it (:mod:`slmops_operator.policy`).

        KFP whose mode is not known yet (``SLMOPS_KFP_MULTI_USER`` empty and KFP not asked) is
        standalone: the stricter rules hold until KFP says otherwise.
        """
        if self.backend == "local":
            return "local"
        return "multi-user" if self.kfp_multi_user else "standalone"

    def allowance(self, namespace: str) -> TenantAllowance:
        """What ``namespace`` may name in standalone KFP: its own entry and the ``*`` entry together."""
        entries = [self.tenant_allow[key] for key in (namespace, "*") if key in self.tenant_allow]
        return TenantAllowance(
            **{
                name: [item for e in entries for item in getattr(e, name)]
                for name in TenantAllowance.model_fields
            }
        )

    def webhook_server(self):
        """kopf's webhook server for these settings (None: no webhook).

        Without its certificate the webhook does not start: the API server would refuse plain
        HTTP anyway, and a silent downgrade hides a broken cert-manager setup.  Plain HTTP is
        only ever the explicit ``SLMOPS_WEBHOOK_INSECURE=true``.
        """
        import kopf

        if not self.webhook_port:
            return None
        cert, key = self.webhook_cert_dir / "tls.crt", self.webhook_cert_dir / "tls.key"
        if self.webhook_insecure:
            return kopf.WebhookServer(addr=self.webhook_addr, port=self.webhook_port, insecure=True)
        missing = [str(path) for path in (cert, key) if not path.is_file()]
        if missing:
            raise WebhookCertificateMissing(
                f"SLMOPS_WEBHOOK_CERT_DIR: {', '.join(missing)} not found; the webhook serves only TLS "
                "(mount its certificate, set SLMOPS_WEBHOOK_PORT=0 for no webhook, or "
                "SLMOPS_WEBHOOK_INSECURE=true for plain HTTP behind a TLS-terminating proxy)"
            )
        from slmops_operator.handlers.webhook_server import ReloadingWebhookServer

        return ReloadingWebhookServer(  # a renewed certificate is served without a restart
            addr=self.webhook_addr, port=self.webhook_port, certfile=str(cert), pkeyfile=str(key)
        )

    @property
    def dashboard(self) -> str:
        return (self.kfp_ui or self.kfp_host).rstrip("/")


class WebhookCertificateMissing(RuntimeError):
    """The webhook is on, TLS is asked for, and its certificate or key is not there."""
