"""The operator under load: time from ``kubectl apply`` to a submitted KFP run, and its memory.

(Not ``bench/operator.py``: a module of that name beside the other scripts would shadow the
standard library's ``operator`` for every script run from this folder.)

    .venv/bin/python bench/operator_load.py                 # 1, 100 and 1000 FineTuneJobs
    .venv/bin/python bench/operator_load.py --jobs 1 10     # any sizes

For each size, one after the other and each from scratch:

1. the strict Kubernetes API emulator (KMock, ``tests/fixtures/kube_emulator.py``) and the
   fake KFP API (``tests/fixtures/fake_kfp.py``) start on loopback, in this process;
2. ``slmops operator`` starts as its own process, exactly as in a pod: KUBECONFIG pointing at
   the emulator, ``SLMOPS_*`` variables for the KFP backend (auth off, no webhook, no metrics);
3. once its liveness endpoint answers, N FineTuneJobs are created through the API (32 requests
   in flight at a time, as ``kubectl apply`` of a folder or Argo CD's sync would);
4. the clock of each job runs from its create call's answer to the moment the fake KFP receives
   the run for it; the operator's RSS is sampled from ``/proc`` every 0.2 s;
5. after the last run, the benchmark waits ``--settle`` seconds more (polls, status patches and
   kopf's re-reconciliations happen meanwhile) and counts the runs of each job: exactly one
   each is the correctness half of the benchmark, and the script exits 1 otherwise.

Reported per size: create-to-submitted p50/p95/max, jobs/s over the whole batch, the
operator's RSS idle / peak (VmHWM) / at the end, its CPU seconds per job, and runs per job.
The emulator and the fake KFP share this process, not the operator's: their cost does not
count in the operator's RSS or CPU, but their latency does count in the clock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(REPO),
    str(REPO / "bench"),
    str(REPO / "scripts"),
    str(REPO / "pipelines"),
    str(REPO / "operator"),
]

from _measure import machine, provenance  # noqa: E402
from bench_tables import operator_table  # noqa: E402  (scripts/: the docs' table, from these figures)

API = "/apis/slmops.io/v1alpha1/namespaces/default/finetunejobs"


def job_manifest(index: int) -> dict:
    """A realistic FineTuneJob (the demo's shape); the KFP backend never reads the model."""
    return {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"bench-{index:05d}", "labels": {"team": "bench"}},
        "spec": {
            "model": {"uri": "s3://models/SmolLM2-135M-Instruct"},
            "dataset": {
                "uri": "s3://datasets/tone",
                "trainSplit": "train",
                "evalSplit": "eval",
                "chatTemplate": True,
                "promptTemplate": "What is the tone of this phrase?\n\n{phrase}",
                "completionTemplate": "{tone}",
                "maxSeqLength": 128,
            },
            "method": "lora",
            "lora": {"r": 16, "alpha": 32},
            "training": {"maxSteps": 60, "batchSize": 8, "learningRate": 1e-3},
            "resources": {"gpusPerNode": 1, "memory": "24Gi"},
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


class ProcStats:
    """RSS and CPU time of one process, read from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_sampled = 0

    def _status(self) -> dict[str, int]:
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
        return values

    def rss(self) -> int:
        value = self._status()["VmRSS"]
        self.peak_sampled = max(self.peak_sampled, value)
        return value

    def hwm(self) -> int:
        return self._status()["VmHWM"]

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_kubeconfig(path: Path, server: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "bench", "user": {"token": "bench"}}],
        "contexts": [
            {"name": "emulator", "context": {"cluster": "emulator", "user": "bench", "namespace": "default"}}
        ],
        "current-context": "emulator",
    }
    path.write_text(json.dumps(config))


async def wait_healthy(url: str, process: asyncio.subprocess.Process, timeout: float = 60) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"the operator exited with {process.returncode}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the operator's liveness endpoint {url} did not answer in {timeout} s")


async def bench_size(n: int, *, concurrency: int, settle: float, poll_seconds: float, workdir: Path) -> dict:
    import aiohttp
    import kmock

    from tests.fixtures.fake_kfp import FakeKfp
    from tests.fixtures.kube_emulator import ForgetfulRawHandler, StrictKubernetesEmulator, declare_slmops
    from tests.fixtures.seaweedfs import free_ports

    submitted_at: dict[str, float] = {}
    created_at: dict[str, float] = {}
    all_submitted = asyncio.Event()

    class TimedFakeKfp(FakeKfp):
        def dispatch(self, request):
            answer = super().dispatch(request)
            if len(self.created) > len(submitted_at):
                for run in self.created[len(submitted_at) :]:
                    job = run["runtime_config"]["parameters"]["job"]["name"]
                    submitted_at.setdefault(job, time.monotonic())
                if len(submitted_at) >= n:
                    all_submitted.set()
            return answer

    def no_keepalive(url):
        return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(force_close=True))

    fake = TimedFakeKfp()
    async with (
        StrictKubernetesEmulator(keep_requests=False) as kube,
        kmock.Server(kube, client_fct=no_keepalive),
        ForgetfulRawHandler() as kfp_handler,
        kmock.Server(kfp_handler, client_fct=no_keepalive),
    ):
        declare_slmops(kube)
        fake.attach(kfp_handler)
        kubeconfig = workdir / f"kubeconfig-{n}"
        write_kubeconfig(kubeconfig, str(kube.url).rstrip("/"))
        liveness_port = free_ports(1)[0]
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "SLMOPS_BACKEND": "kfp",
            "SLMOPS_KFP_HOST": str(kfp_handler.url).rstrip("/"),
            "SLMOPS_KFP_AUTH": "none",
            "SLMOPS_WEBHOOK_PORT": "0",
            "SLMOPS_METRICS_PORT": "0",
            "SLMOPS_POLL_SECONDS": str(poll_seconds),
            "SLMOPS_DEFAULT_OUTPUT": str(workdir / f"outputs-{n}"),
            "SLMOPS_LOCAL_STATE_DIR": str(workdir / f"state-{n}"),
            "PYTHONPATH": os.pathsep.join([str(REPO / "pipelines"), str(REPO / "operator")]),
        }
        log = open(workdir / f"operator-{n}.log", "wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from slmops_operator.cli.main import main; main()",
            "operator",
            "--liveness-port",
            str(liveness_port),
            env=env,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        stats = ProcStats(process.pid)
        try:
            started = time.monotonic()
            await wait_healthy(f"http://127.0.0.1:{liveness_port}/healthz", process)
            startup = time.monotonic() - started
            await asyncio.sleep(1.0)
            idle_rss, cpu_before = stats.rss(), stats.cpu_seconds()

            sampling = True

            async def sample_rss() -> None:
                while sampling:
                    stats.rss()
                    await asyncio.sleep(0.2)

            sampler = asyncio.create_task(sample_rss())
            gate = asyncio.Semaphore(concurrency)
            async with aiohttp.ClientSession(str(kube.url)) as client:

                async def create(index: int) -> None:
                    body = job_manifest(index)
                    async with gate, client.post(API, json=body) as response:
                        if response.status not in (200, 201):
                            raise RuntimeError(f"create failed: {response.status} {await response.text()}")
                        created_at[body["metadata"]["name"]] = time.monotonic()

                batch_started = time.monotonic()
                await asyncio.gather(*(create(i) for i in range(n)))
                try:
                    await asyncio.wait_for(all_submitted.wait(), timeout=max(120.0, n * 0.5))
                except TimeoutError:
                    pass
                batch_seconds = time.monotonic() - batch_started
                await asyncio.sleep(settle)
            sampling = False
            await sampler
            cpu = stats.cpu_seconds() - cpu_before
            end_rss, hwm = stats.rss(), stats.hwm()
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
            log.close()

        runs_per_job = Counter(run["runtime_config"]["parameters"]["job"]["name"] for run in fake.created)
        latencies = [submitted_at[name] - created_at[name] for name in created_at if name in submitted_at]
        statuses = [
            obj.raw.get("status") or {}
            for (resource, _ns, _name), obj in list(kube.objects.items())
            if resource.plural == "finetunejobs" and not obj.deleted
        ]
        phases = Counter(status.get("phase") for status in statuses)
        failures = sorted(
            {status.get("message", "") for status in statuses if status.get("phase") == "Failed"}
        )
    return {
        "jobs": n,
        "submitted": len(submitted_at),
        "runs": len(fake.created),
        "jobs_with_exactly_one_run": sum(1 for name in created_at if runs_per_job.get(name) == 1),
        "p50_s": percentile(latencies, 50) if latencies else None,
        "p95_s": percentile(latencies, 95) if latencies else None,
        "max_s": max(latencies) if latencies else None,
        "jobs_per_s": len(submitted_at) / batch_seconds,
        "startup_s": startup,
        "rss_idle_mb": idle_rss / 2**20,
        "rss_peak_mb": max(hwm, stats.peak_sampled) / 2**20,
        "rss_end_mb": end_rss / 2**20,
        "cpu_s_per_job": cpu / n,
        "phases": dict(phases),
        "failures": failures[:3],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 100, 1000], help="batch sizes, in order")
    parser.add_argument("--concurrency", type=int, default=32, help="create requests in flight")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait after the last run")
    parser.add_argument("--poll-seconds", type=float, default=10.0, help="the operator's SLMOPS_POLL_SECONDS")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", type=Path, help="keep the operator's logs and outputs in this folder")
    args = parser.parse_args(argv)

    print(f"machine: {machine()}, Python {platform.python_version()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="slmops-bench-operator-") as tmp:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = str(args.keep)
        for n in args.jobs:
            result = asyncio.run(
                bench_size(
                    n,
                    concurrency=args.concurrency,
                    settle=args.settle,
                    poll_seconds=args.poll_seconds,
                    workdir=Path(tmp),
                )
            )
            print(json.dumps(result), flush=True)
            results.append(result)
    figures = {**provenance(argv, "kopf", "kfp", "kmock"), "sizes": results}
    figures["versions"] = {"python": platform.python_version(), **figures["versions"]}
    print()
    print(operator_table(figures))  # the table docs/benchmarks.md makes from the JSON, the same code
    if args.json:  # bench/results/operator.json
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    wrong = [r for r in results if r["jobs_with_exactly_one_run"] != r["jobs"] or r["runs"] != r["jobs"]]
    if wrong:
        print(f"FAIL: not exactly one run per job for sizes {[r['jobs'] for r in wrong]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
