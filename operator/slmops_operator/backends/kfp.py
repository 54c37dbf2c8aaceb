"""The KFP backend: each job is a Kubeflow Pipelines run.

* **submit** compiles the job's pipeline with its own placement (GPUs, node selector,
  tolerations, Secrets; no torch), then looks in the namespace's experiment
  (``slmops-<namespace>``) for a run named after the job (namespace, name, uid, run
  number) and submits one only if there is none: an operator restart or a retried
  handler never starts a second run.  With **multi-user KFP** (Kubeflow profiles;
  ``SLMOPS_KFP_MULTI_USER``, or what ``/apis/v2beta1/healthz`` says) the experiment and the
  run are created in the job's namespace, so its pods mount the job's own Secrets; with
  standalone KFP the pods run in ``SLMOPS_KFP_NAMESPACE`` and mount run-owned copies of
  them (see :mod:`slmops_operator.credentials`), deleted when the run ends.  Which
  pipeline, placement and arguments a job gets is its kind's business
  (:func:`slmops_pipelines.jobs.pipeline_for`).  A compiled package depends only on the
  pipeline and the placement, not on the job's spec (that is a run argument): packages are
  kept per placement (the last 64), since building and dumping one is most of an
  operator's CPU per job.  Experiment ids are kept per namespace and forgotten when a
  submission fails (the experiment may have been deleted);
* **state** maps the run's state; once it succeeded the artifacts and summary metrics come
  from the job's output location (:func:`slmops_pipelines.jobs.read_outcome`), and a
  failure's reason and spec field from what the failing step recorded there
  (:func:`slmops_pipelines.jobs.read_failure`) -- read with the job's own output Secret, or
  the operator's keys only inside the job's slot of its own root
  (:func:`slmops_operator.credentials.output_access`); elsewhere the status says where the
  results are and KFP's own message says why a run failed;
* **cancel** terminates the run; a run KFP no longer knows (404) is cancelled already;
* ``status.run`` is not trusted (anyone who may patch ``*/status`` writes it): state and
  cancel act on the run KFP knows under the name the operator gives the job's attempt, in
  the namespace's experiment, and Secret copies are released under that name;
* a run KFP no longer knows while the job waits for it (deleted in the dashboard, a KFP
  database restored from backup) fails the job with reason ``RunLost``; a succeeded run
  whose results cannot be read is reported as such (``RunState.outputs_error``), and the
  reconciler retries before failing the job.

``kfp.Client`` is synchronous: every call runs in a thread, off the operator's event loop.
The service-account token (``SLMOPS_KFP_AUTH=serviceaccount``) is read again when it
changes on disk (projected tokens rotate).
"""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from slmops_operator.api.status import RunRef
from slmops_operator.backends.base import JobRequest, RunPhase, RunState
from slmops_operator.credentials import MissingCredentials, OutputAccess, ResolvedSecret, output_access

# KFP v2beta1 runtime states -> our run phases.
STATES: dict[str, RunPhase] = {
    "PENDING": "Pending",
    "RUNTIME_STATE_UNSPECIFIED": "Pending",
    "PAUSED": "Pending",
    "RUNNING": "Running",
    "CANCELING": "Running",
    "SUCCEEDED": "Succeeded",
    "SKIPPED": "Succeeded",
    "FAILED": "Failed",
    "CANCELED": "Cancelled",
}


PACKAGES_KEPT = 64  # compiled pipeline packages kept, one per distinct placement


class KfpBackend:
    name = "kfp"

    def __init__(self, settings, *, client_factory=None, credentials=None) -> None:
        self.settings = settings
        self.credentials = credentials
        self._multi_user: bool | None = settings.kfp_multi_user
        self._client_factory = client_factory
        self._client = None
        self._token_stamp: float | None = None
        self._lock = threading.Lock()
        self._experiments: dict[str, str] = {}
        self._experiment_lock = threading.Lock()
        self._packages: collections.OrderedDict[str, Path] = collections.OrderedDict()
        self._packages_lock = threading.Lock()
        self._package_dir: Path | None = None
        self._output_secrets: dict[str, list[ResolvedSecret]] = {}  # run -> its job's output Secret
        self._started = time.time()
        self._unsure: dict[str, float] = {}  # run -> when a creation of it failed (it may still land)
        self._looked_for: set[str] = set()  # runs find() looked for in this process

    # -- the client ----------------------------------------------------------------------------

    def _token(self) -> tuple[str | None, float | None]:
        path = Path(self.settings.kfp_token_path)
        if self.settings.kfp_auth != "serviceaccount" or not path.exists():
            return None, None
        return path.read_text().strip(), path.stat().st_mtime

    def _probe(self, token: str | None) -> None:
        """One quick health check: kfp.Client's own retries take half a minute to give up."""
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"{self.settings.kfp_host.rstrip('/')}/apis/v2beta1/healthz")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(f"KFP is not reachable at {self.settings.kfp_host}: {exc}") from exc

    def multi_user(self) -> bool:
        """Multi-user KFP (profiles)?  The setting, else what KFP's healthz says (asked once)."""
        if self._multi_user is None:
            import urllib.request

            request = urllib.request.Request(f"{self.settings.kfp_host.rstrip('/')}/apis/v2beta1/healthz")
            token, _ = self._token()
            if token:
                request.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    self._multi_user = bool(json.loads(response.read() or b"{}").get("multi_user"))
            except (OSError, ValueError) as exc:
                raise ConnectionError(f"KFP is not reachable at {self.settings.kfp_host}: {exc}") from exc
            self.settings.kfp_multi_user = self._multi_user  # admission's rules depend on it (policy.py)
        return self._multi_user

    def client(self):
        with self._lock:
            token, stamp = self._token()
            if self._client is None or stamp != self._token_stamp:
                if self._client_factory is None:
                    self._probe(token)
                if self._client_factory is not None:
                    self._client = self._client_factory()
                else:
                    import kfp

                    self._client = kfp.Client(host=self.settings.kfp_host, existing_token=token)
                self._token_stamp = stamp
            return self._client

    # -- submit --------------------------------------------------------------------------------

    def _experiment_id(self, client, request: JobRequest) -> str:
        """The namespace's experiment, created once: jobs of a namespace submit side by side."""
        namespace = request.namespace
        with self._experiment_lock:
            if namespace not in self._experiments:
                owner = namespace if self.multi_user() else None  # standalone KFP has no namespaces
                found = self._find_experiment(client, f"slmops-{namespace}", owner)
                if found is None:
                    try:
                        found = client.create_experiment(
                            name=f"slmops-{namespace}", namespace=owner
                        ).experiment_id
                    except Exception:  # created meanwhile (another replica, an answer lost): look again
                        found = self._find_experiment(client, f"slmops-{namespace}", owner)
                        if found is None:
                            raise
                self._experiments[namespace] = found
            return self._experiments[namespace]

    @staticmethod
    def _find_experiment(client, name: str, namespace: str | None) -> str | None:
        """The oldest experiment of that name (an older release may have made two)."""
        flt = json.dumps(
            {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]}
        )
        response = client.list_experiments(filter=flt, namespace=namespace, page_size=10)
        found = [e for e in (response.experiments or []) if e.display_name == name]
        found.sort(key=lambda e: (str(getattr(e, "created_at", "") or ""), e.experiment_id))
        return found[0].experiment_id if found else None

    def _find_run(self, client, experiment_id: str, request: JobRequest):
        flt = json.dumps(
            {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": request.run_name}]}
        )
        namespace = request.namespace if self.multi_user() else None
        response = client.list_runs(
            experiment_id=experiment_id, namespace=namespace, filter=flt, page_size=10
        )
        runs = [r for r in (response.runs or []) if r.display_name == request.run_name]
        return runs[0] if runs else None

    def _package(self, request: JobRequest, mounts: list[dict[str, Any]]) -> Path:
        """This job's pipeline package: the one compiled for its pipeline and placement (kept,
        LRU), with the job's own name and namespace in its pods' labels.  The caller removes it."""
        from slmops_pipelines import jobs

        pipeline = jobs.pipeline_for(
            request.kind,
            request.spec,
            registry=self.settings.image_registry or None,
            cache_pvc=self.settings.cache_pvc or None,
            cache_max_gb=self.settings.cache_max_gb,
            secrets=mounts,
            meta=jobs.JobMeta(request.name, request.namespace, dict(request.labels)),
        )
        with self._packages_lock:
            if self._package_dir is None:
                self._package_dir = Path(tempfile.mkdtemp(prefix="slmops-pipelines-"))
            shared = self._packages.get(pipeline.key)
            if shared is not None:
                self._packages.move_to_end(pipeline.key)
            else:
                shared = self._package_dir / f"{pipeline.name}-{abs(hash(pipeline.key)):x}.yaml"
                pipeline.compile_shared(shared)
                self._packages[pipeline.key] = shared
                while len(self._packages) > PACKAGES_KEPT:
                    _, old = self._packages.popitem(last=False)
                    old.unlink(missing_ok=True)
            own = (
                self._package_dir
                / f"{pipeline.name}-{request.namespace}-{request.name}-{uuid.uuid4().hex[:8]}.yaml"
            )
            return pipeline.for_this_job(shared, own)

    def _trainer_image(self, request: JobRequest) -> str:
        """The image of a multi-node job's training nodes: the one its train step runs in."""
        from slmops_pipelines import jobs

        return jobs.job_images(
            request.kind, request.spec, registry=self.settings.image_registry or None
        ).trainer

    def _arguments(self, request: JobRequest, mounts: list[dict[str, Any]]) -> dict[str, Any]:
        from slmops_pipelines import jobs

        job = request.job_context(
            distributed_engine=self.settings.distributed_engine,
            trainjob_runtime=self.settings.trainjob_runtime,
            trainer_image=self._trainer_image(request),
        )
        if mounts:  # names and keys only: multi-node workers mount the same Secrets
            job["secrets"] = mounts
        return jobs.run_arguments(
            request.kind, request.spec, job=job, output_uri=request.output_uri, source_uri=request.source_uri
        )

    def _ref(self, run_id: str, run_name: str) -> RunRef:
        return RunRef(
            backend="kfp", id=run_id, name=run_name, url=f"{self.settings.dashboard}/#/runs/details/{run_id}"
        )

    def _existing(self, request: JobRequest) -> RunRef | None:
        client = self.client()
        found = self._find_run(client, self._experiment_id(client, request), request)
        return None if found is None else self._ref(found.run_id, request.run_name)

    def _submit(self, request: JobRequest, mounts: list[dict[str, Any]]) -> RunRef:
        client = self.client()
        try:
            existing = self._existing(request)
            if existing is not None:
                self._unsure.pop(request.run_name, None)
                return existing
            experiment_id = self._experiment_id(client, request)  # found above: remembered
            package = self._package(request, mounts)
            try:
                result = client.create_run_from_pipeline_package(
                    str(package),
                    arguments=self._arguments(request, mounts),
                    run_name=request.run_name,
                    experiment_id=experiment_id,
                    namespace=request.namespace if self.multi_user() else None,
                    # Every pod of the run runs as the job's ServiceAccount (KFP's default otherwise).
                    service_account=request.spec.service_account_name,
                )
            except Exception:
                self._unsure[request.run_name] = time.time()  # the run may be created all the same
                raise
            finally:
                package.unlink(missing_ok=True)
        except Exception:
            self._experiments.pop(request.namespace, None)  # it may have been deleted
            raise
        self._unsure.pop(request.run_name, None)
        return self._ref(result.run_id, request.run_name)

    def _settled_at(self, request: JobRequest) -> float:
        """When every creation of the job's run that may still be in flight has landed.

        KFP takes no idempotency key: a creation whose answer was lost (the call failed, or an
        earlier operator process was killed mid-call) may land after the run was looked for,
        and a second creation would start a second run.  So the run is looked for again only
        once such a creation has had ``submit_grace_seconds`` to land: after this process's
        own failed call, or, for a job older than this process, after its start.
        """
        since = self._unsure.get(request.run_name)
        if since is None and request.created is not None and request.created <= self._started:
            since = self._started
        return 0.0 if since is None else since + self.settings.submit_grace_seconds

    async def _mounts(self, request: JobRequest) -> list[dict[str, Any]]:
        """The Secrets the run's pods mount: the job's own (multi-user) or run-owned copies."""
        from slmops_operator.credentials import own_mounts

        secrets = request.secrets or []
        if not secrets:
            return []
        if await asyncio.to_thread(self.multi_user):
            return own_mounts(secrets)
        if self.credentials is None:
            raise RuntimeError("standalone KFP needs the operator's API connection to copy Secrets")
        return await self.credentials.stage_copies(
            secrets,
            run_name=request.run_name,
            namespace=self.settings.kfp_namespace,
            job={"kind": request.kind, "namespace": request.namespace, "name": request.name},
        )

    async def submit(self, request: JobRequest) -> RunRef:
        mounts = await self._mounts(request)
        if request.secrets is not None:
            self._output_secrets[request.run_name] = [s for s in request.secrets if s.ref.purpose == "output"]
        wait = self._settled_at(request) - time.time()
        if wait > 0:  # a creation may be in flight: take the run if it is there, else let it land
            existing = await asyncio.to_thread(self._existing, request)
            if existing is not None:
                return existing
            await asyncio.sleep(wait)
        return await asyncio.to_thread(self._submit, request, mounts)

    async def find(self, request: JobRequest) -> RunRef | None:
        """The job's run, if a creation this process cannot rule out landed (``_settled_at``)."""
        if request.run_name in self._looked_for or not self._settled_at(request):
            return None
        found = await asyncio.to_thread(self._existing, request)
        self._looked_for.add(request.run_name)
        return found

    async def output_access(self, request: JobRequest) -> OutputAccess:
        """Whose keys read the job's output: its own Secret (read again after a restart), or the operator's in its root."""
        from slmops_pipelines import jobs

        secrets = (
            request.secrets if request.secrets is not None else self._output_secrets.get(request.run_name)
        )
        names_one = any(ref.purpose == "output" for ref in jobs.secret_refs(request.spec))
        if secrets is None and names_one and self.credentials is not None:
            try:
                resolved = await self.credentials.resolve(request.namespace, request.spec)
            except MissingCredentials as exc:
                return OutputAccess(None, str(exc))
            secrets = self._output_secrets[request.run_name] = [
                s for s in resolved if s.ref.purpose == "output"
            ]
        return output_access(request.output_uri, request.namespace, secrets, self.settings)

    async def _release(self, run_name: str) -> None:
        """Delete the run's Secret copies (standalone KFP; nothing to do in multi-user mode)."""
        if self.credentials is not None and not await asyncio.to_thread(self.multi_user):
            await self.credentials.release_copies(run_name=run_name, namespace=self.settings.kfp_namespace)

    # -- state ---------------------------------------------------------------------------------

    def _failure(self, request: JobRequest, run, access: OutputAccess) -> RunState:
        from slmops_pipelines import jobs

        recorded = None
        if access.credentials is not None:
            try:
                recorded = jobs.read_failure(request.output_uri, credentials=access.credentials)
            except Exception:  # the output itself may be unreachable: fall back to KFP's message
                recorded = None
        if recorded is not None:
            return RunState(
                phase="Failed", message=recorded.message, reason=recorded.reason, spec_field=recorded.field
            )
        error = getattr(run, "error", None)
        message = getattr(error, "message", None) or "the pipeline run failed"
        return RunState(phase="Failed", message=message, reason="PipelineFailed")

    @staticmethod
    def _progress(run, request: JobRequest, access: OutputAccess) -> dict[str, Any] | None:
        """The running step from the run's task details; the rest from the output location."""
        from slmops_pipelines import jobs

        progress: dict[str, Any] = {}
        if access.credentials is not None:
            progress = jobs.read_progress(
                request.kind, request.spec, request.output_uri, credentials=access.credentials
            )
        details = getattr(run, "run_details", None)
        tasks = getattr(details, "task_details", None) or []
        running = [
            t.display_name for t in tasks if str(getattr(t, "state", "")) == "RUNNING" and t.display_name
        ]
        if running:
            progress["stage"] = running[-1]
        return progress or None

    @staticmethod
    def _succeeded(request: JobRequest, access: OutputAccess) -> RunState:
        """The artifacts and summary metrics of a succeeded run, from the job's output location."""
        from slmops_pipelines import jobs

        if access.credentials is None:
            return RunState(
                phase="Succeeded",
                message=f"the pipeline run succeeded; its results are in {request.output_uri} "
                f"(not read by the operator: {access.why_not})",
                artifacts={"output": request.output_uri},
            )
        try:
            outcome = jobs.read_outcome(request.kind, request.output_uri, credentials=access.credentials)
        except Exception as exc:  # a bucket the operator may not read, a torn manifest
            return RunState(phase="Succeeded", outputs_error=f"{type(exc).__name__}: {exc}"[:500])
        return RunState(
            phase="Succeeded",
            message="the pipeline run succeeded",
            artifacts={"output": outcome.output_uri, **outcome.artifacts},
            metrics=jobs.summary_metrics(request.kind, outcome.metrics),
            usage=jobs.usage_status(outcome.metrics),
            tracking=jobs.tracking_status(outcome.metrics),
        )

    def _own_run(self, client, run_ref: RunRef, request: JobRequest):
        """The KFP run of this job's current attempt, or None when KFP has none.

        ``status.run`` is written by whoever may patch ``*/status``: its id is used only when KFP
        says that run carries the name the operator gives this job's attempt and sits in the
        namespace's experiment; otherwise the run is looked up by that name.
        """
        experiment_id = self._experiment_id(client, request)
        if run_ref.id:
            try:
                run = client.get_run(run_ref.id)
            except Exception as exc:
                if not _not_found(exc):
                    raise
            else:
                if run.display_name == request.run_name and run.experiment_id == experiment_id:
                    return run
        found = self._find_run(client, experiment_id, request)
        return client.get_run(found.run_id) if found is not None else None

    def _state(self, run_ref: RunRef, request: JobRequest, access: OutputAccess) -> RunState:
        run = self._own_run(self.client(), run_ref, request)
        if run is None:
            return RunState(
                phase="Failed",
                reason="RunLost",
                message=f"run {request.run_name} no longer exists in KFP: deleted outside slmops?",
            )
        phase = STATES.get(str(run.state or "RUNTIME_STATE_UNSPECIFIED"), "Running")
        if phase == "Succeeded":
            return self._succeeded(request, access)
        if phase == "Failed":
            return self._failure(request, run, access)
        if phase == "Cancelled":
            return RunState(phase="Cancelled", message="the pipeline run was terminated")
        return RunState(phase=phase, progress=self._progress(run, request, access))

    async def state(self, run: RunRef, request: JobRequest) -> RunState:
        access = await self.output_access(request)
        state = await asyncio.to_thread(self._state, run, request, access)
        if state.finished:
            self._output_secrets.pop(request.run_name, None)
            if request.secrets_named:
                await self._release(request.run_name)
        return state

    def _terminate(self, run_ref: RunRef, request: JobRequest) -> None:
        client = self.client()
        run = self._own_run(client, run_ref, request)
        if run is None:  # gone is as good as terminated
            return
        try:
            client.terminate_run(run.run_id)
        except Exception as exc:
            if not _not_found(exc):
                raise

    async def cancel(self, run: RunRef, request: JobRequest) -> None:
        await asyncio.to_thread(self._terminate, run, request)
        self._output_secrets.pop(request.run_name, None)
        await self._release(request.run_name)

    async def close(self) -> None:
        self._client = None
        if self._package_dir is not None:
            shutil.rmtree(self._package_dir, ignore_errors=True)
            self._package_dir, self._packages = None, collections.OrderedDict()


def _not_found(exc: Exception) -> bool:
    """A KFP API answer 404 (kfp_server_api's ApiException carries the HTTP status)."""
    return getattr(exc, "status", None) == 404
