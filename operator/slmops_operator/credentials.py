"""A job's Secrets on a shared cluster: read only in the job's own namespace, handed only to its run.

The promise to a platform team: **a job can use only credentials its own namespace holds.**
Whatever backend runs it, the operator reads each Secret the spec names (see
:mod:`slmops_pipelines.credentials`) from the job's namespace through the API, and:

* a Secret that does not exist, or holds none of the keys its purpose uses, fails the job at
  start with reason ``MissingCredentials``, naming the field and the Secret;
* **multi-user KFP** (profiles): runs are created in the job's namespace, so their pods
  mount the job's own Secret, with exactly the keys it holds (never ``optional``);
* **standalone KFP**: pods run in the KFP namespace, where a tenant's Secret does not exist
  (and where the operator-wide Secret does).  The operator copies the job's Secret into the
  KFP namespace under a name owned by the run (``<run>-<purpose>``, labelled
  ``slmops.io/run``), mounts the copy, and deletes it when the run finishes, is cancelled or
  its job deleted.  Cost: ``get`` on Secrets where jobs live, ``create``/``update``/``delete``
  on Secrets in the KFP namespace (docs/operator.md);
* **local backend**: the worker process starts from the operator's environment *less* every
  credential variable (``AWS_*``, ``HF_TOKEN``...) and gets the job's Secrets as variables.

Values live in memory only: never in status, events, logs, KFP parameters or files (the
Secret copy is an API object, as the original is).

**The operator never lends its own keys to a tenant's URI** (:func:`output_access`): it
reads a job's results, progress and recorded failure, claims its output before the run
starts and deletes it with the job, either with the job's own output Secret or, without
one, only inside the job's namespace slot of the operator's default output root (a
location the operator chose).  Anywhere else it does not look: the results stay in the
output, and KFP's own message says why a run failed.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from slmops_operator import policy
from slmops_operator.settings import OperatorSettings
from slmops_pipelines.jobs import S3Credentials, SecretRef, s3_credentials_from, secret_refs

RUN_LABEL = "slmops.io/run"


class MissingCredentials(Exception):
    """A Secret the spec names cannot be used: the job fails, naming the field and the Secret."""

    def __init__(self, ref: SecretRef, namespace: str, why: str) -> None:
        super().__init__(f"spec.{ref.field}: Secret {ref.name!r} {why} in namespace {namespace}")
        self.ref, self.namespace = ref, namespace


@dataclasses.dataclass(frozen=True)
class ResolvedSecret:
    """A Secret read from the job's namespace: only the keys its purpose uses (base64, as stored)."""

    ref: SecretRef
    data: dict[str, str] = dataclasses.field(repr=False)  # never printed

    def env(self) -> dict[str, str]:
        """Variables for a process (the local backend's worker)."""
        return {self.ref.env_name(k): base64.b64decode(v).decode() for k, v in sorted(self.data.items())}

    def key_to_env(self) -> dict[str, str]:
        """Secret key -> variable, for a pod's ``secretKeyRef``s."""
        return {k: self.ref.env_name(k) for k in sorted(self.data)}


def copy_name(run_name: str, purpose: str) -> str:
    return f"{run_name}-{purpose}"


class Credentials:
    """Reads, copies and releases Secrets through the operator's API connection."""

    def __init__(self, kube) -> None:
        self.kube = kube

    async def resolve(self, namespace: str, spec: Any) -> list[ResolvedSecret]:
        """Every Secret the spec names, read in ``namespace``; MissingCredentials if one is unusable."""
        resolved = []
        for ref in secret_refs(spec):
            try:
                secret = await self.kube.get(f"/api/v1/namespaces/{namespace}/secrets/{ref.name}")
            except PermissionError:
                raise MissingCredentials(
                    ref, namespace, "cannot be read by the operator (its service account may not get Secrets)"
                ) from None
            if secret is None:
                raise MissingCredentials(ref, namespace, "does not exist")
            data = {k: v for k, v in (secret.get("data") or {}).items() if k in ref.keys and v}
            if not data:
                raise MissingCredentials(ref, namespace, f"holds none of the keys {', '.join(ref.keys)}")
            resolved.append(ResolvedSecret(ref, data))
        return resolved

    async def stage_copies(
        self, secrets: list[ResolvedSecret], *, run_name: str, namespace: str, job: dict[str, str]
    ) -> list[dict[str, Any]]:
        """Copy each Secret into ``namespace`` under a name the run owns; return the mounts.

        A Secret of that name that the operator did not make for this run is never
        overwritten: the job fails, naming it (RBAC cannot limit writes by name, so the code does).
        """
        mounts = []
        collection = f"/api/v1/namespaces/{namespace}/secrets"
        for secret in secrets:
            name = copy_name(run_name, secret.ref.purpose)
            body: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {RUN_LABEL: run_name, "app.kubernetes.io/managed-by": "slmops"},
                    "annotations": {
                        "slmops.io/source": f"{job['namespace']}/{secret.ref.name}",
                        "slmops.io/job": f"{job['kind']} {job['namespace']}/{job['name']}",
                    },
                },
                "data": dict(secret.data),
            }
            if not await self.kube.create(collection, body):  # a retried call: it exists
                existing = await self._own_copy(f"{collection}/{name}", run_name)
                if existing is None:
                    raise MissingCredentials(
                        secret.ref,
                        namespace,
                        f"cannot be copied: a Secret {name!r} the operator did not make exists",
                    )
                stale = {key: None for key in existing.get("data") or {} if key not in secret.data}
                patch = {
                    "metadata": {
                        **body["metadata"],
                        "resourceVersion": existing["metadata"]["resourceVersion"],
                    },
                    "data": {**stale, **secret.data},
                }
                await self.kube.merge(f"{collection}/{name}", patch)
            mounts.append({"name": name, "keyToEnv": secret.key_to_env()})
        return mounts

    async def _own_copy(self, path: str, run_name: str) -> dict[str, Any] | None:
        """The Secret at ``path`` if the operator made it for ``run_name``; None otherwise (or gone)."""
        existing = await self.kube.get(path)
        labels = ((existing or {}).get("metadata") or {}).get("labels") or {}
        return existing if existing is not None and labels.get(RUN_LABEL) == run_name else None

    async def release_copies(self, *, run_name: str, namespace: str) -> None:
        """Delete the run's Secret copies (idempotent); a Secret the operator did not make stays."""
        for purpose in ("output", "model", "dataset"):
            path = f"/api/v1/namespaces/{namespace}/secrets/{copy_name(run_name, purpose)}"
            ours = await self._own_copy(path, run_name)
            if ours is not None:
                await self.kube.delete(path, uid=ours["metadata"].get("uid"))


def own_mounts(secrets: list[ResolvedSecret]) -> list[dict[str, Any]]:
    """Mounts of the job's own Secrets (multi-user KFP: the pods run in the job's namespace)."""
    return [{"name": s.ref.name, "keyToEnv": s.key_to_env()} for s in secrets]


@dataclasses.dataclass(frozen=True)
class OutputAccess:
    """With whose keys the operator may read, claim and delete a job's output."""

    credentials: S3Credentials | None  # {}: the operator's own (its own root); None: not at all
    why_not: str = ""


def output_access(
    output_uri: str, namespace: str, secrets: list[ResolvedSecret] | None, settings: OperatorSettings
) -> OutputAccess:
    """The job's own output Secret; else the operator's keys, only inside the job's slot of its root."""
    own = next((s for s in secrets or [] if s.ref.purpose == "output"), None)
    if own is not None and output_uri.startswith("s3://"):
        return OutputAccess(s3_credentials_from(own.env()))
    slot, where = policy.namespace_slot(settings, namespace), policy.location(output_uri)
    if slot and policy.contains(slot, where) and where != slot:
        return OutputAccess({})
    if output_uri.startswith("pvc://"):
        return OutputAccess(None, "it is on a PersistentVolumeClaim, which the operator does not mount")
    if policy.local_path(output_uri) is not None and settings.backend == "local":
        return OutputAccess({})  # the workers' own filesystem, which admission keeps in its lane
    return OutputAccess(
        None,
        "it lies outside the operator's output root (SLMOPS_DEFAULT_OUTPUT) and spec.output.credentialsSecret "
        "names no Secret, and the operator reads no location a tenant chose with its own keys",
    )
