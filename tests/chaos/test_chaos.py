"""The chaos suite: the real operator process under faults, 50 jobs at a time, checked at the end.

What happens, decided by a seeded random generator (``SLMOPS_CHAOS_SEEDS=1,2,3`` picks the
seeds; the default runs two), while ``slmops operator`` runs as its own process against the
strict Kubernetes emulator and a fake KFP in this one:

* 50 jobs in three namespaces, with a running limit of 3 per namespace: FineTuneJobs, and
  OptimizeJobs chained to some of them (``fineTuneJobRef``);
* the operator is SIGKILLed at random moments and started again (at least 5 times);
* the fake KFP answers 500, or answers late, to 20% of calls; it loses one run; it
  terminates runs slowly (CANCELING for a while); the runs themselves start, succeed or
  fail after random delays, writing what a pipeline would write;
* the emulator drops watch connections (kopf reconnects);
* "users" edit ``ttlSecondsAfterFinished``, suspend and resume, and delete jobs midway.

At the end: every job that was not deleted is finished; every deleted one is gone (no
finalizer left); no job is Queued or Running (every namespace slot free); for every job,
exactly one run per run number (``status.runAttempt``), counted at the fake KFP, not from
status, and no run of it still active; conditions agree with the phase.  The figures
(jobs, kills, injected faults, runs per job) are printed; a failure names its seed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import kmock
import pytest

from tests.conftest import REPO
from tests.fixtures.fake_kfp import FakeKfp, pipeline_ir
from tests.fixtures.kube_emulator import ForgetfulRawHandler, StrictKubernetesEmulator, declare_slmops
from tests.fixtures.seaweedfs import free_ports
from tests.operator.test_kfp_backend import claimed_by, publish_outputs

SEEDS = [int(s) for s in os.environ.get("SLMOPS_CHAOS_SEEDS", "1,2").split(",") if s.strip()]
NAMESPACES = ("team-a", "team-b", "team-c")
JOBS = 50
LIMIT = 3
DEADLINE_S = 200
FINISHED = ("Succeeded", "Failed", "Cancelled")
CONDITIONS = {  # phase -> Ready, Succeeded, Failed (handlers/conditions.py)
    "Succeeded": ("True", "True", "False"),
    "Failed": ("False", "False", "True"),
    "Cancelled": ("False", "False", "False"),
}


class ChaosKfp(FakeKfp):
    """A fake KFP that fails, answers late, loses a run and terminates slowly."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng
        self.faults: Counter[str] = Counter()
        self.lost: str | None = None
        self.lost_at = 0.0
        self.landed: dict[str, tuple[float, float]] = {}  # run id -> (request seen, run created)

    def _answer(self, request: kmock.Request):
        roll, seen = self.rng.random(), time.time()
        if roll < 0.10:
            self.faults["kfp 500"] += 1
            return kmock.Response(status=500, payload={"error": "injected", "code": 13})
        if roll < 0.20:
            self.faults["kfp late"] += 1
            return self._late(request, seen)
        return self._noted(request, seen)

    async def _late(self, request: kmock.Request, seen: float):
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        return self._noted(request, seen)

    def _noted(self, request: kmock.Request, seen: float):
        """The answer; a run it created is noted with when its request was seen."""
        before = len(self.created)
        answer = super()._answer(request)
        if len(self.created) > before:
            self.landed[self.created[-1]["run_id"]] = (seen, time.time())
        return answer

    def dispatch(self, request: kmock.Request):
        path = request.url.path
        if path.endswith(":terminate") and str(request.method).upper().endswith("POST"):
            run_id = path.rsplit("/", 1)[-1].split(":")[0]
            if run_id in self.runs:
                self.terminated.append(run_id)
                if self.runs[run_id]["state"] not in ("SUCCEEDED", "FAILED", "CANCELED"):
                    self.runs[run_id]["state"] = "CANCELING"  # the driver finishes it later
                return {}
        return super().dispatch(request)


class DroppingEmulator(StrictKubernetesEmulator):
    """Watch connections end after a random few seconds, as API servers and proxies do."""

    rng: random.Random = random.Random(0)
    drops: int = 0

    async def _serve_watch(self, request: kmock.Request):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.rng.uniform(2.0, 8.0)
        stream = super()._serve_watch(request).__aiter__()
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    DroppingEmulator.drops += 1
                    return
                try:
                    item = await asyncio.wait_for(stream.__anext__(), remaining)
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    DroppingEmulator.drops += 1
                    return
                yield item
        finally:
            await stream.aclose()


def manifests(rng: random.Random) -> list[dict]:
    """30 FineTuneJobs and 20 OptimizeJobs, some chained to a FineTuneJob of their namespace."""
    jobs = []
    for i in range(30):
        jobs.append(
            {
                "apiVersion": "slmops.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": f"ft-{i:02d}", "namespace": NAMESPACES[i % 3]},
                "spec": {
                    "model": {"uri": "s3://models/tiny"},
                    "dataset": {
                        "uri": "s3://data/tone",
                        "promptTemplate": "{q}",
                        "completionTemplate": "{a}",
                    },
                    "training": {"maxSteps": 10},
                },
            }
        )
    for i in range(JOBS - 30):
        ref = rng.randrange(30)
        jobs.append(
            {
                "apiVersion": "slmops.io/v1alpha1",
                "kind": "OptimizeJob",
                "metadata": {"name": f"opt-{i:02d}", "namespace": NAMESPACES[ref % 3]},
                "spec": {
                    "source": {"fineTuneJobRef": {"name": f"ft-{ref:02d}"}},
                    "targets": [
                        {"name": "cpu-int4", "provider": "CPUExecutionProvider", "precision": "int4"}
                    ],
                },
            }
        )
    rng.shuffle(jobs)
    return jobs


def plural(body: dict) -> str:
    return "finetunejobs" if body["kind"] == "FineTuneJob" else "optimizejobs"


def path_of(body: dict) -> str:
    meta = body["metadata"]
    return f"/apis/slmops.io/v1alpha1/namespaces/{meta['namespace']}/{plural(body)}/{meta['name']}"


def stored(kube, body: dict) -> dict | None:
    meta = body["metadata"]
    try:
        obj = kube.objects[f"slmops.io/v1alpha1/{plural(body)}", meta["namespace"], meta["name"]]
    except KeyError:
        return None
    return None if obj.deleted else obj.raw


def write_kubeconfig(path: Path, server: str) -> None:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "chaos", "user": {"token": "chaos"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "chaos"}}],
                "current-context": "emulator",
            }
        )
    )


class Operator:
    """``slmops operator`` as its own process, killed and started again at will."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.process, self.kills = env, log, None, 0
        self.lives: list[list[float]] = []  # [started, killed] per process, wall clock

    async def start(self) -> None:
        self.lives.append([time.time()])
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from slmops_operator.cli.main import main; main()",
                "operator",
                "--liveness-port",
                str(free_ports(1)[0]),
                env=self.env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
            self.kills += 1
            self.lives[-1].append(time.time())

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except asyncio.TimeoutError:
                os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()


async def drive_runs(
    kfp: ChaosKfp, rng: random.Random, outputs_ready: dict[str, float], stop: asyncio.Event
) -> None:
    """What the pipelines would do: start, then succeed (writing their outputs) or fail; finish cancelling."""
    born: dict[str, float] = {}
    while not stop.is_set():
        now = time.monotonic()
        for run_id, run in list(kfp.runs.items()):
            born.setdefault(run_id, now)
            age = now - born[run_id]
            if run["state"] == "CANCELING" and rng.random() < 0.3:
                kfp.set_state(run_id, "CANCELED")
            elif run["state"] == "PENDING" and age > rng.uniform(0.2, 1.0):
                kfp.set_state(run_id, "RUNNING")
            elif run["state"] == "RUNNING" and age > rng.uniform(1.0, 4.0):
                if kfp.lost is None and rng.random() < 0.2:
                    kfp.lost, kfp.lost_at = run_id, time.time()  # deleted in the dashboard
                    del kfp.runs[run_id]
                    continue
                parameters = run["runtime_config"]["parameters"]
                if rng.random() < 0.15:
                    kfp.set_state(run_id, "FAILED", error="injected pipeline failure")
                    continue
                out = Path(parameters["output_uri"])
                if pipeline_ir(run)["pipelineInfo"]["name"].startswith("slmops-finetune"):
                    publish_outputs(out)
                else:
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "metrics.json").write_text(json.dumps({"targets": {"cpu-int4": {}}}))
                    (out / "manifest.json").write_text(json.dumps({"files": [], **claimed_by(out)}))
                kfp.set_state(run_id, "SUCCEEDED")
        await asyncio.sleep(0.2)


async def act_as_users(
    session: aiohttp.ClientSession, kube, jobs: list[dict], rng: random.Random, actions: Counter, deleted: set
) -> None:
    """Create every job, then edit, suspend/resume and delete some of them midway."""
    for body in jobs:
        async with session.post(path_of(body).rsplit("/", 1)[0], json=body) as response:
            assert response.status in (200, 201), await response.text()
        await asyncio.sleep(rng.uniform(0.0, 0.1))
    merge = {"Content-Type": "application/merge-patch+json"}
    # A FineTuneJob an OptimizeJob refers to is not deleted: the OptimizeJob would wait for it
    # to be created again (as a Deployment waits for its ConfigMap), which is not an end state.
    referenced = {
        (b["metadata"]["namespace"], b["spec"]["source"]["fineTuneJobRef"]["name"])
        for b in jobs
        if b["kind"] == "OptimizeJob"
    }
    for _ in range(25):
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        body = rng.choice(jobs)
        if stored(kube, body) is None:
            continue
        action = rng.choice(["ttl", "ttl", "suspend", "suspend", "delete"])
        if action == "delete" and (body["metadata"]["namespace"], body["metadata"]["name"]) in referenced:
            action = "ttl"
        actions[action] += 1
        if action == "ttl":
            patch = {"spec": {"ttlSecondsAfterFinished": rng.choice([3600, 7200, 86400])}}
            async with session.patch(path_of(body), json=patch, headers=merge) as response:
                assert response.status in (200, 404), await response.text()
        elif action == "suspend":
            async with session.patch(
                path_of(body), json={"spec": {"suspend": True}}, headers=merge
            ) as response:
                assert response.status in (200, 404), await response.text()
            await asyncio.sleep(rng.uniform(0.1, 3.0))
            async with session.patch(
                path_of(body), json={"spec": {"suspend": False}}, headers=merge
            ) as response:
                assert response.status in (200, 404), await response.text()
        else:
            deleted.add((body["metadata"]["namespace"], body["metadata"]["name"]))
            async with session.delete(path_of(body)) as response:
                assert response.status in (200, 202, 404), await response.text()


async def kill_and_restart(operator: Operator, rng: random.Random, stop: asyncio.Event) -> None:
    while not stop.is_set() or operator.kills < 5:
        await asyncio.sleep(rng.uniform(2.0, 6.0))
        await operator.kill()
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        await operator.start()
        if stop.is_set() and operator.kills >= 5:
            return


class LoopLag:
    """How late this process's event loop wakes up: the fake KFP and the emulator share it."""

    def __init__(self) -> None:
        self.worst, self.over_1s = 0.0, 0

    async def watch(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            asked = loop.time()
            await asyncio.sleep(0.1)
            late = loop.time() - asked - 0.1
            self.worst, self.over_1s = max(self.worst, late), self.over_1s + (late > 1.0)

    def __str__(self) -> str:
        return f"event loop lag: worst {self.worst:.2f} s, {self.over_1s} wake-ups over 1 s late"


def settled(kube, jobs: list[dict], deleted: set) -> bool:
    for body in jobs:
        obj = stored(kube, body)
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if key in deleted:
            if obj is not None:
                return False
        elif obj is None or (obj.get("status") or {}).get("phase") not in FINISHED:
            return False
        elif (obj.get("status") or {}).get("observedGeneration") != obj["metadata"]["generation"]:
            return False
    return True


def submitted_twice(kfp: ChaosKfp, operator: Operator, lag: LoopLag, names: Counter) -> str:
    """Each run created more than once: when each creation's request was seen and landed,
    against the operator processes' lives and this loop's lag (seconds from the first start)."""
    t0 = operator.lives[0][0]
    twice = {name for name, count in names.items() if count > 1}
    landed = [
        (
            run["display_name"],
            *(round(t - t0, 2) for t in kfp.landed.get(run["run_id"], ())),
            "lost" if run["run_id"] == kfp.lost else "",
        )
        for run in kfp.created
        if run["display_name"] in twice
    ]
    lives = [[round(t - t0, 2) for t in life] for life in operator.lives]
    return f"a run name submitted twice: (name, seen, created, lost) {landed}; operator lives {lives}; {lag}"


def counted_runs(kfp: ChaosKfp) -> list[dict]:
    """Every run created, less the lost one where the operator created it again.

    An operator killed mid-creation leaves a run its status never named; the job may wait
    Queued while that run goes on, until a later process finds it.  Deleted in the dashboard
    before that, the run is gone for the operator too, and the job's run is created (once)
    when it starts.
    """
    lost = next((run for run in kfp.created if run["run_id"] == kfp.lost), None)
    again = [
        run
        for run in kfp.created
        if lost is not None
        and run is not lost
        and run["display_name"] == lost["display_name"]
        and kfp.landed.get(run["run_id"], (0.0, 0.0))[1] > kfp.lost_at
    ]
    return [run for run in kfp.created if not (again and run is lost)]


def check_the_end(
    kube, kfp: ChaosKfp, jobs: list[dict], deleted: set, operator: Operator, lag: LoopLag
) -> Counter:
    """Every promise, checked; returns the runs per job."""
    runs_by_uid: dict[str, list[dict]] = defaultdict(list)
    created = counted_runs(kfp)
    for run in created:
        runs_by_uid[run["runtime_config"]["parameters"]["job"]["uid"]].append(run)
    names = Counter(run["display_name"] for run in created)
    assert max(names.values()) == 1, submitted_twice(kfp, operator, lag, names)
    per_job: Counter[int] = Counter()
    for body in jobs:
        obj = stored(kube, body)
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if key in deleted:
            assert obj is None, f"{key} still there: finalizers {obj['metadata'].get('finalizers')}"
            continue
        status = obj["status"]
        runs = runs_by_uid.get(obj["metadata"]["uid"], [])
        per_job[len(runs)] += 1
        if runs:
            assert len(runs) == status.get("runAttempt", 1), (key, len(runs), status.get("runAttempt"))
        for run in runs:
            state = kfp.runs.get(run["run_id"], {}).get("state", "LOST")
            assert state in ("SUCCEEDED", "FAILED", "CANCELED", "CANCELING", "LOST"), (key, state)
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        ready, succeeded, failed = CONDITIONS[status["phase"]]
        assert (
            conditions["Ready"]["status"],
            conditions["Succeeded"]["status"],
            conditions["Failed"]["status"],
        ) == (
            ready,
            succeeded,
            failed,
        ), (key, status["phase"], conditions)
        for trouble in ("BackendAvailable", "OutputsReadable"):
            if status["phase"] == "Succeeded" and trouble in conditions:
                assert conditions[trouble]["status"] == "True", (key, conditions[trouble])
    return per_job


def stuck(kube, jobs: list[dict]) -> list[tuple]:
    """The jobs not finished: name, phase, status message and when status last moved."""
    found = []
    for body in jobs:
        obj = stored(kube, body)
        status = (obj or {}).get("status") or {}
        if obj is not None and status.get("phase") not in FINISHED:
            moved = max((c.get("lastTransitionTime", "") for c in status.get("conditions", [])), default="")
            found.append(
                (
                    body["metadata"]["namespace"],
                    body["metadata"]["name"],
                    status.get("phase"),
                    status.get("message"),
                    moved,
                )
            )
    return found


def _phase_and_reason(obj: dict | None) -> str:
    if obj is None:
        return "deleted"
    status = obj.get("status") or {}
    failed = next((c for c in status.get("conditions", []) if c["type"] == "Failed"), {})
    return (
        f"{status.get('phase')} ({failed.get('reason')})"
        if status.get("phase") == "Failed"
        else status.get("phase")
    )


async def run_chaos(seed: int, workdir: Path) -> dict:
    rng = random.Random(seed)
    DroppingEmulator.rng, DroppingEmulator.drops = random.Random(seed + 1), 0
    kfp = ChaosKfp(random.Random(seed + 2))
    jobs = manifests(rng)
    actions: Counter[str] = Counter()
    deleted: set[tuple[str, str]] = set()
    started = time.monotonic()

    def no_keepalive(url):
        return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(force_close=True))

    async with (
        # Requests are forgotten once answered: KMock matches each one against its log (O(n)),
        # and this run makes tens of thousands.
        DroppingEmulator(keep_requests=False) as kube,
        kmock.Server(kube, client_fct=no_keepalive),
        ForgetfulRawHandler() as kfp_handler,
        kmock.Server(kfp_handler, client_fct=no_keepalive),
    ):
        declare_slmops(kube)
        kfp.attach(kfp_handler)
        kubeconfig = workdir / "kubeconfig"
        write_kubeconfig(kubeconfig, str(kube.url).rstrip("/"))
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "SLMOPS_BACKEND": "kfp",
            "SLMOPS_KFP_HOST": str(kfp_handler.url).rstrip("/"),
            "SLMOPS_KFP_AUTH": "none",
            "SLMOPS_KFP_MULTI_USER": "false",
            "SLMOPS_WEBHOOK_PORT": "0",
            "SLMOPS_METRICS_PORT": "0",
            "SLMOPS_POLL_SECONDS": "0.5",
            "SLMOPS_BACKEND_RETRIES": "4",
            "SLMOPS_SUBMIT_GRACE_SECONDS": "3",  # late answers take up to 2 s
            "SLMOPS_MAX_RUNNING_PER_NAMESPACE": str(LIMIT),
            "SLMOPS_DELETE_ARTIFACTS": "true",
            "SLMOPS_FINALIZER_TIMEOUT": "10",
            "SLMOPS_DEFAULT_OUTPUT": str(workdir / "outputs"),
            "SLMOPS_LOCAL_STATE_DIR": str(workdir / "state"),
            "PYTHONPATH": os.pathsep.join([str(REPO / "pipelines"), str(REPO / "operator")]),
        }
        operator = Operator(env, workdir / "operator.log")
        await operator.start()
        stop_driving, users_done = asyncio.Event(), asyncio.Event()
        outputs_ready: dict[str, float] = {}
        driver = asyncio.create_task(drive_runs(kfp, random.Random(seed + 3), outputs_ready, stop_driving))
        lag = LoopLag()
        lagging = asyncio.create_task(lag.watch(stop_driving))
        killer = asyncio.create_task(kill_and_restart(operator, random.Random(seed + 4), users_done))
        try:
            async with aiohttp.ClientSession(str(kube.url)) as session:
                await act_as_users(session, kube, jobs, random.Random(seed + 5), actions, deleted)
            users_done.set()
            await asyncio.wait_for(killer, 90)  # at least 5 kills, then the operator runs in peace
            deadline = time.monotonic() + DEADLINE_S
            while not settled(kube, jobs, deleted):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"seed {seed}: not settled after {DEADLINE_S} s: {stuck(kube, jobs)}"
                    )
                await asyncio.sleep(0.5)
            per_job = check_the_end(kube, kfp, jobs, deleted, operator, lag)
            phases = Counter(_phase_and_reason(stored(kube, b)) for b in jobs)
        finally:
            stop_driving.set()
            users_done.set()
            killer.cancel()
            await operator.stop()
            await asyncio.gather(driver, killer, lagging, return_exceptions=True)
    return {
        "seed": seed,
        "seconds": round(time.monotonic() - started, 1),
        "jobs": len(jobs),
        "kills": operator.kills,
        "faults": dict(kfp.faults),
        "watch drops": DroppingEmulator.drops,
        "run lost": kfp.lost is not None,
        "user actions": dict(actions),
        "runs per job": dict(sorted(per_job.items())),
        "phases": dict(phases),
        "loop lag worst s": round(lag.worst, 2),
    }


@pytest.mark.parametrize("seed", SEEDS)
async def test_chaos(seed, tmp_path):
    figures = await run_chaos(seed, tmp_path)
    print(f"\nchaos {json.dumps(figures)}")
    assert figures["kills"] >= 5


def test_a_run_lost_then_created_again_counts_once_and_a_true_duplicate_still_counts_twice():
    """The end check's own logic: only a creation after the loss replaces the lost run."""
    kfp = ChaosKfp(random.Random(0))
    for run_id, landed in (("a1", 1.0), ("a2", 5.0), ("b1", 1.0), ("b2", 2.0)):
        kfp.created.append({"run_id": run_id, "display_name": run_id[0]})
        kfp.landed[run_id] = (landed, landed)
    kfp.lost, kfp.lost_at = "a1", 3.0  # a1 lost at 3 s, created again at 5 s
    assert [run["run_id"] for run in counted_runs(kfp)] == ["a2", "b1", "b2"]
    kfp.lost, kfp.lost_at = "b1", 3.0  # b1 lost after b2 was created: a duplicate all the same
    assert [run["run_id"] for run in counted_runs(kfp)] == ["a1", "a2", "b1", "b2"]
