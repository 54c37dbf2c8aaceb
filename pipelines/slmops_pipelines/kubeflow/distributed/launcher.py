"""Submit a training workload, follow it to the end, delete it when the run is cancelled.

Against the Kubernetes API with the official client (in-cluster service account, or
KUBECONFIG).  The rules:

* **one workload per run**: the name is deterministic (see
  :func:`.manifests.workload_name`); when it already exists -- a retried step, a restarted
  pod -- it is adopted, not duplicated.  A previous attempt that *failed* is deleted and
  submitted again (its checkpoints are in the output, so the new one resumes);
* **status**: the engines' conditions (PyTorchJob: Created/Running/Restarting/Succeeded/
  Failed/Suspended; TrainJob: Suspended/Complete/Failed) become one phase; every change is
  reported, and a failure raises with the condition's message;
* **cancellation**: KFP cancels a run by deleting its pods (SIGTERM).  The waiting step
  then deletes the workload (foreground: its pods go too) before it exits.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slmops_pipelines.errors import JobError
from slmops_pipelines.kubeflow.distributed.manifests import ENGINES, SUPPORTED_RELEASES


class Cancelled(Exception):
    """The run was cancelled while the workload ran; the workload has been deleted."""


@dataclass(frozen=True)
class Phase:
    name: str  # Pending, Suspended, Running, Restarting, Succeeded, Failed
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.name in ("Succeeded", "Failed")


def phase_of(engine: str, obj: dict[str, Any]) -> Phase:
    """The phase of a PyTorchJob or a TrainJob from its latest true condition."""
    conditions = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    types = {c.get("type"): c for c in conditions}
    terminal = {"Succeeded": "Succeeded", "Complete": "Succeeded", "Failed": "Failed"}
    for condition_type, phase in terminal.items():
        if condition_type in types:
            condition = types[condition_type]
            return Phase(phase, condition.get("message") or condition.get("reason") or "")
    for condition_type in ("Suspended", "Restarting", "Running"):
        if condition_type in types:
            return Phase(condition_type, types[condition_type].get("message") or "")
    return Phase("Pending")


def kubernetes_api():
    """A CustomObjectsApi from the pod's service account, or from KUBECONFIG."""
    import os

    from kubernetes import client, config

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config()
    return client.CustomObjectsApi()


class WorkloadClient:
    """Create, read and delete one engine's workloads."""

    def __init__(self, engine: str, api=None) -> None:
        self.engine = engine
        self.group, self.version, self.plural, self.kind = ENGINES[engine]
        self.api = api if api is not None else kubernetes_api()

    def _args(self, namespace: str) -> dict[str, str]:
        return {"group": self.group, "version": self.version, "namespace": namespace, "plural": self.plural}

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(name=name, **self._args(namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._error("read", name, exc) from exc

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            # Strict: a field this cluster's release does not declare is refused, not pruned
            # (a pruned podTemplateOverrides would start pods without their volumes and account).
            return self.api.create_namespaced_custom_object(
                body=body, field_validation="Strict", **self._args(body["metadata"]["namespace"])
            )
        except ApiException as exc:
            if exc.status == 400 and "unknown field" in str(exc.body):
                raise self._unsupported(exc) from exc
            if exc.status == 404:
                raise JobError(
                    f"the cluster has no {self.kind} API ({self.group}/{self.version}): install "
                    f"{'the Kubeflow Training Operator' if self.engine == 'pytorchjob' else 'Kubeflow Trainer v2'} "
                    "or choose the other distributed engine",
                    field="resources.nodes",
                    reason="DistributedEngineMissing",
                ) from exc
            raise self._error("create", body["metadata"]["name"], exc) from exc

    def delete(self, namespace: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.delete_namespaced_custom_object(
                name=name, body={"propagationPolicy": "Foreground"}, **self._args(namespace)
            )
        except ApiException as exc:
            if exc.status != 404:
                raise self._error("delete", name, exc) from exc

    def _unsupported(self, exc) -> JobError:
        """The cluster runs a release whose API lacks a field we send: say which releases work."""
        fields = sorted(set(re.findall(r'unknown field \\?"([^"\\]+)', str(exc.body))))
        works = SUPPORTED_RELEASES[self.engine]
        return JobError(
            f"this cluster's {self.kind} API ({self.group}/{self.version}) does not declare "
            f"{', '.join(fields) or 'a field slmops sends'}: slmops creates {self.kind}s for {works}; "
            "install one of those or choose the other distributed engine",
            field="resources.nodes",
            reason="DistributedEngineVersion",
        )

    def _error(self, verb: str, name: str, exc) -> JobError:
        return JobError(
            f"could not {verb} {self.kind} {name}: {exc.status} {exc.reason}", reason="DistributedEngineError"
        )


def submit(client: WorkloadClient, body: dict[str, Any], *, say: Callable[[str, str], None]) -> None:
    """Create the workload, or adopt the one a previous attempt of this step created."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    existing = client.get(namespace, name)
    if existing is not None and phase_of(client.engine, existing).name == "Failed":
        say("train", f"{client.kind} {namespace}/{name} failed before: deleting it to try again")
        client.delete(namespace, name)
        for _ in range(120):  # foreground deletion waits for the pods
            if client.get(namespace, name) is None:
                break
            time.sleep(1)
        existing = None
    if existing is None:
        client.create(body)
        say("train", f"submitted {client.kind} {namespace}/{name}")
    else:
        say("train", f"adopted the running {client.kind} {namespace}/{name}")


def wait(
    client: WorkloadClient,
    namespace: str,
    name: str,
    *,
    say: Callable[[str, str], None],
    on_poll: Callable[[], None] = lambda: None,
    cancelled: threading.Event | None = None,
    poll_s: float = 10.0,
) -> None:
    """Follow the workload to Succeeded; raise JobError on Failed, Cancelled on cancellation."""
    cancelled = cancelled or threading.Event()
    last: Phase | None = None
    try:
        while True:
            obj = client.get(namespace, name)
            if obj is None:
                raise JobError(f"{client.kind} {namespace}/{name} was deleted", reason="TrainingFailed")
            phase = phase_of(client.engine, obj)
            if phase != last:
                say(
                    "train",
                    f"{client.kind} {name}: {phase.name}{': ' + phase.message if phase.message else ''}",
                )
                last = phase
            on_poll()
            if phase.name == "Succeeded":
                return
            if phase.name == "Failed":
                raise JobError(
                    f"{client.kind} {namespace}/{name} failed: {phase.message or 'no message'}",
                    reason="TrainingFailed",
                )
            if cancelled.wait(poll_s):
                raise Cancelled()
    except (Cancelled, KeyboardInterrupt):
        say("train", f"cancelled: deleting {client.kind} {namespace}/{name}")
        client.delete(namespace, name)
        raise
