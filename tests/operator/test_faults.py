"""The operator when things go wrong: edits, KFP down or losing runs, unreadable results, dying workers.

Each test pins one defect of an earlier release (see docs/operator.md, "Under faults"):
a second run on an edit, a job stuck Terminating, a job stuck Running, a leaking
namespace slot, a worker restarted for ever.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import kmock

from tests.conftest import finetune_manifest
from tests.fixtures.kube_emulator import StrictKubernetesEmulator, declare_slmops
from tests.operator.conftest import (
    _no_keepalive,
    create,
    current,
    delete,
    events,
    local_settings,
    patch,
    running_operator,
    wait_until,
)
from tests.operator.test_kfp_backend import job, kfp_settings, phase, publish_outputs


def status_of(kube, name: str) -> dict:
    return (current(kube, "default", "finetunejobs", name) or {}).get("status") or {}


def condition(kube, name: str, type_: str) -> dict | None:
    return next((c for c in status_of(kube, name).get("conditions", []) if c["type"] == type_), None)


# -- 1. at most one active run per job ---------------------------------------------------------------


async def test_editing_the_ttl_of_a_running_job_starts_no_second_run(kube, fake_kfp, tiny_model, tmp_path):
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        await create(kube, "default", "finetunejobs", job("edited", tiny_model))
        await wait_until(lambda: phase(kube, "edited") == "Running", what="Running")
        run = status_of(kube, "edited")["run"]
        await patch(kube, "default", "finetunejobs", "edited", {"spec": {"ttlSecondsAfterFinished": 3600}})
        await wait_until(
            lambda: status_of(kube, "edited").get("observedGeneration") == 2, what="the edit seen"
        )
        await asyncio.sleep(1)  # a few more polls
        assert len(fake_kfp.created) == 1 and status_of(kube, "edited")["run"] == run
        # A quick suspend and resume: unseen, the same run goes on; seen, that run is cancelled
        # before the next one starts.  Either way, one active run.
        await patch(kube, "default", "finetunejobs", "edited", {"spec": {"suspend": True}})
        await patch(kube, "default", "finetunejobs", "edited", {"spec": {"suspend": False}})
        await wait_until(
            lambda: (
                status_of(kube, "edited").get("observedGeneration") == 4
                and phase(kube, "edited") == "Running"
            ),
            what="the toggles seen",
        )
        await asyncio.sleep(1)
        active = [r for r in fake_kfp.runs.values() if r["state"] in ("PENDING", "RUNNING")]
        assert [r["run_id"] for r in active] == [status_of(kube, "edited")["run"]["id"]]
        assert len(fake_kfp.created) == status_of(kube, "edited")["runAttempt"]
        for earlier in fake_kfp.created[:-1]:
            assert earlier["run_id"] in fake_kfp.terminated


async def test_suspend_cancels_and_resume_starts_exactly_one_new_run(kube, fake_kfp, tiny_model, tmp_path):
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        await create(kube, "default", "finetunejobs", job("paused", tiny_model))
        await wait_until(lambda: phase(kube, "paused") == "Running", what="Running")
        first = fake_kfp.created[0]
        await patch(kube, "default", "finetunejobs", "paused", {"spec": {"suspend": True}})
        await wait_until(lambda: first["run_id"] in fake_kfp.terminated, what="the run cancelled")
        await wait_until(
            lambda: (condition(kube, "paused", "Suspended") or {}).get("status") == "True", what="Suspended"
        )
        await patch(kube, "default", "finetunejobs", "paused", {"spec": {"suspend": False}})
        await wait_until(lambda: len(fake_kfp.created) == 2, what="the resumed run")
        await wait_until(lambda: status_of(kube, "paused").get("runAttempt") == 2, what="runAttempt 2")
        second = fake_kfp.created[1]
        assert second["display_name"] != first["display_name"]
        assert status_of(kube, "paused")["run"]["id"] == second["run_id"]
        active = [r for r in fake_kfp.runs.values() if r["state"] not in ("CANCELED", "FAILED", "SUCCEEDED")]
        assert [r["run_id"] for r in active] == [second["run_id"]]
        # The resumed run reads the same output (it resumes from the last checkpoint there).
        assert (
            second["runtime_config"]["parameters"]["output_uri"]
            == first["runtime_config"]["parameters"]["output_uri"]
        )
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):  # a restart adopts run 2
        await wait_until(lambda: phase(kube, "paused") == "Running", what="Running")
        assert len(fake_kfp.created) == 2


# -- 2. never stuck Terminating ---------------------------------------------------------------------


async def test_a_run_already_gone_does_not_hold_the_finalizer(kube, fake_kfp, tiny_model, tmp_path):
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        await create(kube, "default", "finetunejobs", job("gone", tiny_model))
        await wait_until(lambda: phase(kube, "gone") == "Running", what="Running")
        fake_kfp.runs.clear()  # deleted in the KFP dashboard: terminate answers 404
        await delete(kube, "default", "finetunejobs", "gone")
        await wait_until(
            lambda: current(kube, "default", "finetunejobs", "gone") is None, timeout=20, what="deletion"
        )
    assert not [e for e in events(kube, "default", "gone") if e.get("reason") == "CleanupIncomplete"]


async def test_kfp_down_releases_the_finalizer_after_the_timeout_naming_what_was_left(
    kube, fake_kfp, tiny_model, tmp_path
):
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp, finalizer_timeout=2)):
        await create(kube, "default", "finetunejobs", job("stuck", tiny_model))
        await wait_until(lambda: phase(kube, "stuck") == "Running", what="Running")
        run_name = status_of(kube, "stuck")["run"]["name"]
        fake_kfp.down = True
        await delete(kube, "default", "finetunejobs", "stuck")
        await wait_until(
            lambda: current(kube, "default", "finetunejobs", "stuck") is None, timeout=60, what="deletion"
        )
        [warning] = await wait_until(  # kopf posts Events in the background
            lambda: [e for e in events(kube, "default", "stuck") if e.get("reason") == "CleanupIncomplete"],
            what="the CleanupIncomplete Event",
        )
    assert warning["type"] == "Warning" and f"run {run_name} not cancelled" in warning["message"]


# -- 3. never stuck Running, conditions that recover ------------------------------------------------------


async def test_a_run_lost_in_kfp_fails_the_job(kube, fake_kfp, tiny_model, tmp_path):
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        await create(kube, "default", "finetunejobs", job("lost", tiny_model))
        await wait_until(lambda: phase(kube, "lost") == "Running", what="Running")
        fake_kfp.runs.clear()
        await wait_until(lambda: phase(kube, "lost") == "Failed", what="Failed")
    assert (condition(kube, "lost", "Failed") or {}).get("reason") == "RunLost"
    assert "no longer exists in KFP" in status_of(kube, "lost")["message"]


class LaggingWatch(StrictKubernetesEmulator):
    """Watch events arrive late (a busy API server, a watch being re-established): a timer's body
    lags the status the operator itself wrote."""

    lag_s = 1.5

    async def _serve_watch(self, request):
        async for item in super()._serve_watch(request):
            if item:
                await asyncio.sleep(self.lag_s)
            yield item


async def test_a_run_lost_while_the_status_lags_is_not_submitted_again(fake_kfp, tiny_model, tmp_path):
    async with LaggingWatch() as kube, kmock.Server(kube, client_fct=_no_keepalive):
        declare_slmops(kube)
        async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
            await create(kube, "default", "finetunejobs", job("lagging", tiny_model))
            await wait_until(lambda: fake_kfp.created, what="a run")
            fake_kfp.runs.clear()  # deleted in the dashboard before the operator saw its own status
            await wait_until(lambda: phase(kube, "lagging") == "Failed", timeout=30, what="Failed")
    assert len(fake_kfp.created) == 1
    assert (condition(kube, "lagging", "Failed") or {}).get("reason") == "RunLost"


async def test_unreadable_results_are_a_condition_then_a_failure(kube, fake_kfp, tiny_model, tmp_path):
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        await create(kube, "default", "finetunejobs", job("unreadable", tiny_model))
        await wait_until(lambda: phase(kube, "unreadable") == "Running", what="Running")
        out = tmp_path / "outputs" / "default" / "unreadable"
        out.mkdir(parents=True, exist_ok=True)  # the operator claimed it before the run
        (out / "manifest.json").write_text("{torn")
        fake_kfp.set_state(fake_kfp.created[0]["run_id"], "SUCCEEDED")
        await wait_until(
            lambda: (condition(kube, "unreadable", "OutputsReadable") or {}).get("status") == "False",
            what="OutputsReadable=False",
        )
        assert phase(kube, "unreadable") == "Running"
        await wait_until(lambda: phase(kube, "unreadable") == "Failed", what="Failed")
    assert (condition(kube, "unreadable", "Failed") or {}).get("reason") == "OutputsUnreadable"


async def test_backend_available_recovers(kube, fake_kfp, tiny_model, tmp_path):
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        await create(kube, "default", "finetunejobs", job("flaky", tiny_model))
        await wait_until(lambda: phase(kube, "flaky") == "Running", what="Running")
        fake_kfp.down = True
        await wait_until(
            lambda: (condition(kube, "flaky", "BackendAvailable") or {}).get("status") == "False",
            timeout=60,
            what="BackendAvailable=False",
        )
        fake_kfp.down = False
        publish_outputs(tmp_path / "outputs" / "default" / "flaky")
        fake_kfp.set_state(fake_kfp.created[0]["run_id"], "SUCCEEDED")
        await wait_until(lambda: phase(kube, "flaky") == "Succeeded", timeout=90, what="Succeeded")
    assert (condition(kube, "flaky", "BackendAvailable") or {}).get("status") == "True"


# -- 4. namespace slots never leak --------------------------------------------------------------------------


async def test_a_run_that_fails_before_the_first_poll_frees_its_slot(kube, fake_kfp, tiny_model, tmp_path):
    settings = kfp_settings(tmp_path, fake_kfp, max_running_per_namespace=1, poll_seconds=2)
    async with running_operator(kube, settings):
        await create(kube, "default", "finetunejobs", job("first", tiny_model))
        await wait_until(lambda: len(fake_kfp.created) == 1, interval=0.02, what="the first run")
        fake_kfp.set_state(
            fake_kfp.created[0]["run_id"], "FAILED", error="image pull failed"
        )  # before any poll
        await create(kube, "default", "finetunejobs", job("second", tiny_model))
        await wait_until(lambda: phase(kube, "first") == "Failed", what="the first to fail")
        await wait_until(lambda: len(fake_kfp.created) == 2, timeout=30, what="the second to get the slot")


# -- 6. a worker that keeps dying ----------------------------------------------------------------------------


async def test_a_worker_that_keeps_dying_fails_the_job_with_worker_lost(kube, tiny_model, tmp_path):
    settings = local_settings(tmp_path, local_max_restarts=1)
    training = {"maxSteps": 400, "saveSteps": 50, "loggingSteps": 1}
    async with running_operator(kube, settings):
        await create(kube, "default", "finetunejobs", finetune_manifest("oom", tiny_model, training=training))
        killed = []
        for _ in range(2):  # the first death is resumed, the second is one too many

            def fresh_worker():
                run = (status_of(kube, "oom").get("run") or {}).get("name")
                state = tmp_path / "operator-state" / f"{run}.state.json"
                try:
                    pid = json.loads(state.read_text())["pid"]
                except (OSError, ValueError, KeyError):
                    return None
                return pid if pid not in killed and Path(f"/proc/{pid}").exists() else None

            pid = await wait_until(fresh_worker, what="a worker")
            os.killpg(pid, signal.SIGKILL)
            killed.append(pid)
        await wait_until(lambda: phase(kube, "oom") == "Failed", what="Failed")
    status = status_of(kube, "oom")
    assert (condition(kube, "oom", "Failed") or {}).get("reason") == "WorkerLost"
    assert "killed by SIGKILL" in status["message"] and "2 time(s)" in status["message"]


# -- found by the chaos suite ------------------------------------------------------------------------------


async def test_jobs_of_a_namespace_submitted_side_by_side_share_one_experiment(
    kube, fake_kfp, tiny_model, tmp_path
):
    """Two experiments of one name made every later submission fail ("Multiple experiments is found")."""
    async with running_operator(kube, kfp_settings(tmp_path, fake_kfp)):
        for i in range(6):
            await create(kube, "default", "finetunejobs", job(f"side-{i}", tiny_model))
        await wait_until(lambda: len(fake_kfp.created) == 6, what="six runs")
    assert [e["display_name"] for e in fake_kfp.experiments.values()] == ["slmops-default"]


async def test_a_queued_job_whose_run_an_earlier_process_started_runs_instead_of_waiting(
    kube, fake_kfp, tiny_model, tmp_path
):
    """A process killed between creating a run and writing status left the job Queued (the
    namespace full) while its run went on: the next process finds the run and says Running."""
    from slmops_operator.backends.base import JobRequest
    from slmops_operator.backends.kfp import KfpBackend
    from slmops_pipelines.specs import FineTuneJobSpec

    settings = kfp_settings(tmp_path, fake_kfp, max_running_per_namespace=1)
    async with running_operator(kube, settings):
        await create(kube, "default", "finetunejobs", job("first", tiny_model))
        await wait_until(lambda: phase(kube, "first") == "Running", what="the first to run")
        await create(kube, "default", "finetunejobs", job("late", tiny_model))
        await wait_until(lambda: phase(kube, "late") == "Queued", what="the second to queue")
    # What the killed process did: the job's own run, created, its status never written.
    body = current(kube, "default", "finetunejobs", "late")
    spec = FineTuneJobSpec.model_validate(body["spec"])
    earlier = KfpBackend(settings)
    request = JobRequest("FineTuneJob", "default", "late", body["metadata"]["uid"], 1, spec, "unused")
    run = await earlier.submit(request)
    await earlier.close()
    async with running_operator(kube, settings):
        await wait_until(lambda: phase(kube, "late") == "Running", what="the run found")
        assert status_of(kube, "late")["run"]["id"] == run.id
        assert "found (started before an operator restart)" in status_of(kube, "late")["message"]
        assert phase(kube, "first") == "Running"  # the limit does not stop a run that runs
    assert [r["display_name"] for r in fake_kfp.created].count(request.run_name) == 1
