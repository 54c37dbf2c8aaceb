"""Build and run the operator: settings -> backend -> handlers on a private registry -> kopf.

``slmops operator`` calls :func:`run`; tests call :func:`build_operator` and run
``kopf.operator`` themselves (against an API emulator), so everything the operator is made
of is assembled here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import kopf

from slmops_operator.backends import Backend, make_backend
from slmops_operator.credentials import Credentials
from slmops_operator.handlers import jobs, validation
from slmops_operator.handlers.kube import KubeApi
from slmops_operator.handlers.reconciler import Reconciler
from slmops_operator.metrics import OperatorMetrics
from slmops_operator.settings import OperatorSettings


@dataclass
class Operator:
    registry: kopf.OperatorRegistry
    settings: OperatorSettings
    kopf_settings: kopf.OperatorSettings
    reconciler: Reconciler

    @property
    def backend(self) -> Backend:
        return self.reconciler.backend

    @property
    def metrics(self) -> OperatorMetrics:
        return self.reconciler.metrics

    async def run(self, *, stop_flag=None, ready_flag=None, liveness_endpoint: str | None = None) -> None:
        await kopf.operator(
            registry=self.registry,
            settings=self.kopf_settings,
            clusterwide=not self.settings.namespaces,
            namespaces=self.settings.namespaces,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            liveness_endpoint=liveness_endpoint,
        )


def default_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: its service account; elsewhere: KUBECONFIG."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def kopf_settings_for(settings: OperatorSettings) -> kopf.OperatorSettings:
    ks = kopf.OperatorSettings()
    # One replica (Deployment strategy Recreate): kopf's peering pauses operators, it does not elect.
    ks.peering.standalone = True
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="slmops.io")
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="slmops.io")
    ks.persistence.finalizer = "slmops.io/finalizer"
    ks.posting.level = logging.WARNING  # Events come from the handlers, one per transition
    ks.networking.error_backoffs = [1, 2, 5, 10, 30]
    ks.watching.server_timeout = 300
    ks.batching.error_delays = [1, 2, 5, 10, 30]
    if settings.namespaces:
        # A list of namespaces gets Roles, not a ClusterRole: no cluster-wide scanning.
        ks.scanning.disabled = True
    return ks


async def learn_kfp_mode(settings: OperatorSettings, backend: Backend, logger: kopf.Logger) -> None:
    """Ask KFP whether it is multi-user when the settings do not say: admission depends on it.

    Until KFP answers, the standalone rules (the stricter ones) hold; the backend asks again
    with its first run and updates the settings then.
    """
    multi_user = getattr(backend, "multi_user", None)
    if settings.backend != "kfp" or settings.kfp_multi_user is not None or multi_user is None:
        return
    try:
        settings.kfp_multi_user = await asyncio.to_thread(multi_user)
    except ConnectionError as exc:
        logger.warning(
            f"KFP's mode is unknown ({exc}): admission applies the standalone rules until it answers"
        )


def build_operator(
    settings: OperatorSettings,
    *,
    backend: Backend | None = None,
    login=default_login,
    serve_metrics: bool = True,
) -> Operator:
    registry = kopf.OperatorRegistry()
    ks = kopf_settings_for(settings)
    kube = KubeApi(login)  # the operator's own calls, with the credentials kopf gets
    metrics = OperatorMetrics()
    credentials = Credentials(kube)
    backend = backend or make_backend(settings, credentials=credentials)
    reconciler = Reconciler(settings, backend, metrics, kube, credentials=credentials)

    @kopf.on.login(registry=registry)
    def login_handler(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = login(**kwargs)
        kube.connect(info)  # kopf's watches and our own calls use the same credentials
        return info

    @kopf.on.startup(registry=registry)
    async def startup(logger: kopf.Logger, **_: Any) -> None:
        if serve_metrics and settings.metrics_port:
            metrics.serve(settings.metrics_port)
        await learn_kfp_mode(settings, backend, logger)
        scope = ", ".join(settings.namespaces) if settings.namespaces else "all namespaces"
        logger.info(f"slmops operator: {settings.backend} backend ({settings.mode}), watching {scope}")

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await reconciler.backend.close()
        await kube.close()

    jobs.register(registry, reconciler)
    webhook = settings.webhook_server()
    if webhook is not None:
        validation.register(registry, settings)
        ks.admission.server = webhook
    return Operator(registry, settings, ks, reconciler)


class KopfRoutine(logging.Filter):
    """Drops kopf's line per handler success: a timer per job makes one per job and poll
    (100 lines a second for 1000 jobs at 10 s), which buries the transitions the handlers log."""

    ROUTINE = re.compile(
        r"(Timer|Handler|Activity) '[^']*' succeeded\.$"
        r"|(Creation|Deletion|Resumption|Update(s)?) (is|are) processed: \d+ succeeded; 0 failed\.$"
        r"|Initial authentication has (been initiated|finished)\.$"
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.ROUTINE.match(record.getMessage())


def run(
    settings: OperatorSettings, *, liveness_port: int = 8081, webhook: kopf.WebhookServer | None = None
) -> None:
    """Run until SIGINT/SIGTERM: structured JSON logs, a liveness endpoint, metrics, the webhook."""
    kopf.configure(log_format=kopf.LogFormat.JSON, verbose=False)
    if os.environ.get("SLMOPS_DEBUG") != "1":  # `slmops --debug operator` keeps them
        for handler in logging.getLogger().handlers:
            handler.addFilter(KopfRoutine())
    operator = build_operator(settings)
    if webhook is not None:
        operator.kopf_settings.admission.server = webhook
    asyncio.run(operator.run(liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz"))
