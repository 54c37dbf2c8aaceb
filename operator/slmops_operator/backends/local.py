"""The local backend: each job in a worker process next to the operator.

For laptops, tests and clusters without Kubeflow Pipelines.  A job's run is the process
``python -m slmops_operator.backends.local_worker`` with a request file and a state file in
``SLMOPS_LOCAL_STATE_DIR``, both named after the run -- the name the operator computes from
the job's kind, namespace, name, uid and attempt, never ``status.run`` (anyone who may patch
``*/status`` writes that).  The state file is the only channel:

* ``submit`` starts the worker unless the state file shows one alive (its pid) or finished,
  so a retried handler or a restarted operator adopts the run instead of starting another;
* ``state`` reads the file; a worker that died without finishing (the operator's pod was
  replaced, the machine rebooted) is started again, and the local engine resumes it from
  its last complete checkpoint -- at most ``SLMOPS_LOCAL_MAX_RESTARTS`` times: a worker
  that keeps dying (killed for memory, say) fails the job with reason ``WorkerLost`` and
  how it died;
* ``cancel`` sends SIGTERM to the worker's session (the engine stops its trainers).

A worker never inherits the operator's own credentials (``AWS_*``, ``HF_TOKEN``...): it
starts from the operator's environment less those, plus the job's Secrets, read in the
job's namespace (see :mod:`slmops_operator.credentials`).  Values are passed in the
environment only, never written to the state folder.

Workers run in their own session: they outlive an operator restart and are adopted by pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from slmops_operator.api.status import RunRef
from slmops_operator.backends.base import JobRequest, RunState
from slmops_pipelines.jobs import without_ambient_credentials


def _alive(pid: int | None, run_name: str) -> bool:
    """True when ``pid`` is a live worker of this run (not a recycled pid)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and "local_worker" in cmdline and run_name in cmdline


class LocalBackend:
    name = "local"

    def __init__(self, settings, *, credentials=None) -> None:
        self.credentials = credentials
        self.max_restarts = settings.local_max_restarts
        self.exits: dict[str, int] = {}  # run -> exit status of our own child that ended
        self.state_dir = Path(settings.local_state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.children: dict[str, subprocess.Popen] = {}

    # -- files ---------------------------------------------------------------------------------

    def _paths(self, run: str) -> tuple[Path, Path, Path]:
        return (
            self.state_dir / f"{run}.request.json",
            self.state_dir / f"{run}.state.json",
            self.state_dir / f"{run}.log",
        )

    def _read_state(self, run: str) -> dict[str, Any] | None:
        path = self._paths(run)[1]
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    # -- the worker ----------------------------------------------------------------------------

    def _start(self, request: JobRequest, *, restarts: int = 0) -> None:
        request_path, state_path, log_path = self._paths(request.run_name)
        request_path.write_text(
            json.dumps(
                {
                    "runName": request.run_name,
                    "kind": request.kind,
                    "namespace": request.namespace,
                    "name": request.name,
                    "uid": request.uid,
                    "spec": request.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
                    "outputUri": request.output_uri,
                    "sourceUri": request.source_uri,
                }
            )
        )
        with log_path.open("a") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "slmops_operator.backends.local_worker",
                    str(request_path),
                    str(state_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self._worker_env(request),
            )
        self.children[request.run_name] = proc
        with (self.state_dir / f"{request.run_name}.starts").open("a") as starts:  # an audit trail of starts
            starts.write(f"{proc.pid}\n")
        state_path.write_text(
            json.dumps(
                {"pid": proc.pid, "runName": request.run_name, "phase": "Pending", "restarts": restarts}
            )
        )

    @staticmethod
    def _worker_env(request: JobRequest) -> dict[str, str]:
        env = without_ambient_credentials(dict(os.environ))
        for secret in request.secrets or []:
            env.update(secret.env())
        return {**env, "PYTHONUNBUFFERED": "1"}

    async def _with_secrets(self, request: JobRequest) -> JobRequest:
        """A worker started again (after a crash or restart) needs the job's Secrets again."""
        if request.secrets is None and request.secrets_named and self.credentials is not None:
            request.secrets = await self.credentials.resolve(request.namespace, request.spec)
        return request

    def _reap(self, run: str) -> None:
        child = self.children.get(run)
        if child is not None and child.poll() is not None:
            self.exits[run] = child.returncode
            del self.children[run]

    def _how_it_died(self, run: str) -> str:
        code = self.exits.get(run)
        if code is None:
            return "exit status unknown: it was not started by this operator process"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}" + (
                " (out of memory?)" if code == -signal.SIGKILL else ""
            )
        return f"exit code {code}"

    async def _worker_lost(self, request: JobRequest, state: dict[str, Any]) -> RunState:
        """The worker died without a verdict: start it again (it resumes), or give up after the limit."""
        run_id = request.run_name
        restarts = int(state.get("restarts") or 0)
        if restarts < self.max_restarts:
            await asyncio.to_thread(self._start, await self._with_secrets(request), restarts=restarts + 1)
            return RunState(
                phase="Running", message=f"the worker stopped unexpectedly: resumed ({restarts + 1})"
            )
        message = (
            f"the worker died without a verdict {restarts + 1} time(s) "
            f"(SLMOPS_LOCAL_MAX_RESTARTS={self.max_restarts}); last: {self._how_it_died(run_id)}"
        )
        failed = {**state, "phase": "Failed", "reason": "WorkerLost", "message": message}
        (self.state_dir / f"{run_id}.state.json").write_text(json.dumps(failed))
        return RunState(phase="Failed", reason="WorkerLost", message=message, progress=state.get("progress"))

    def _ref(self, request: JobRequest) -> RunRef:
        return RunRef(backend="local", id=request.run_name, name=request.run_name, url=None)

    # -- the Backend protocol ------------------------------------------------------------------

    async def submit(self, request: JobRequest) -> RunRef:
        state = self._read_state(request.run_name)
        self._reap(request.run_name)
        finished = state is not None and state.get("phase") in ("Succeeded", "Failed", "Cancelled")
        if not finished and not _alive((state or {}).get("pid"), request.run_name):
            await asyncio.to_thread(self._start, await self._with_secrets(request))
        return self._ref(request)

    async def find(self, request: JobRequest) -> RunRef | None:
        """The job's run, if an earlier operator process started it: still running, or finished."""
        state = self._read_state(request.run_name) or {}
        finished = state.get("phase") in ("Succeeded", "Failed", "Cancelled")
        return self._ref(request) if finished or _alive(state.get("pid"), request.run_name) else None

    async def state(self, run: RunRef, request: JobRequest) -> RunState:
        run_id = request.run_name  # never status.run: its files are named by the operator
        self._reap(run_id)
        state = self._read_state(run_id) or {}
        phase = state.get("phase", "Pending")
        if phase in ("Succeeded", "Failed", "Cancelled"):
            return RunState(
                phase=phase,
                message=state.get("message", ""),
                reason=state.get("reason", ""),
                spec_field=state.get("field"),
                progress=state.get("progress"),
                artifacts=state.get("artifacts") or {},
                metrics=state.get("metrics") or {},
                usage=state.get("usage"),
                tracking=state.get("tracking"),
            )
        if not _alive(state.get("pid"), run_id):
            return await self._worker_lost(request, state)
        return RunState(phase="Running" if phase == "Running" else "Pending", progress=state.get("progress"))

    async def cancel(self, run: RunRef, request: JobRequest) -> None:
        run_id = request.run_name
        state = self._read_state(run_id) or {}
        pid = state.get("pid")
        if pid is not None and _alive(pid, run_id):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            for _ in range(300):  # the engine stops its trainers first
                if not _alive(pid, run_id):
                    break
                self._reap(run_id)
                await asyncio.sleep(0.1)
            else:
                os.killpg(pid, signal.SIGKILL)
        state = self._read_state(run_id) or {}
        if state.get("phase") not in ("Succeeded", "Failed", "Cancelled"):
            (self.state_dir / f"{run_id}.state.json").write_text(
                json.dumps({**state, "phase": "Cancelled", "message": "cancelled", "reason": "Cancelled"})
            )

    async def close(self) -> None:
        """Workers keep running: a restarted operator adopts them."""
        for run in list(self.children):
            self._reap(run)
