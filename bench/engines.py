"""The same FineTuneJob through both engines, in one run: what the KFP pipeline costs over one process.

    .venv/bin/python bench/engines.py [--steps 60] [--file examples/01-finetune-lora.yaml]

* ``local``     -- ``slmops run``: every stage in one process;
* ``kfp-local`` -- ``slmops run --engine kfp-local``: the compiled pipeline run by
                   ``kfp.local``, every step its own process (imports, model loads and
                   artifact copies per step), caching off for the measurement.

Both write to fresh output folders; the clock covers the whole command.  Reported: wall
time, training time and tokens/s from each run's metrics.json, and the ratio of the
pipeline's wall time to the single process's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run(engine: str, manifest: Path, runs: Path, cache: Path) -> dict:
    env = {**os.environ, "SLMOPS_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "slmops_operator.cli.main",
            "run",
            str(manifest),
            "--runs-dir",
            str(runs),
            "--engine",
            engine,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    name = yaml.safe_load(manifest.read_text())["metadata"]["name"]
    metrics = json.loads((runs / name / "metrics.json").read_text())
    return {
        "engine": engine,
        "wall_s": round(wall, 1),
        "train_s": round(metrics["train"]["train_runtime_s"], 1),
        "tokens_per_s": round(metrics["train"]["tokens_per_second"] or 0, 1),
        "accuracy": (metrics.get("evaluation") or {}).get("finetuned", {}).get("accuracy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=REPO / "examples" / "01-finetune-lora.yaml")
    parser.add_argument("--steps", type=int, default=None, help="override training.maxSteps")
    args = parser.parse_args()
    doc = yaml.safe_load(args.file.read_text())
    doc["spec"].pop("output", None)  # fresh folders under the bench's own runs dir
    if args.steps:
        doc["spec"].setdefault("training", {})["maxSteps"] = args.steps
    with tempfile.TemporaryDirectory(prefix="slmops-bench-") as tmp:
        root = Path(tmp)
        manifest = root / "job.yaml"
        manifest.write_text(yaml.safe_dump(doc))
        results = [
            run(engine, manifest, root / engine, root / f"cache-{engine}")
            for engine in ("local", "kfp-local")
        ]
    base = results[0]["wall_s"]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    print(f"{'engine':<10} {'wall s':>8} {'train s':>8} {'tokens/s':>9} {'accuracy':>9} {'wall ratio':>11}")
    for r in results:
        print(
            f"{r['engine']:<10} {r['wall_s']:>8} {r['train_s']:>8} {r['tokens_per_s']:>9} "
            f"{r['accuracy'] if r['accuracy'] is not None else '-':>9} {r['wall_s'] / base:>10.2f}x"
        )


if __name__ == "__main__":
    main()
