"""The examples that run on this machine (01-09), run for real on the demo model (opt-in: ``--slow``).

Each example is run as its comment says, through the CLI, with small overrides so that the
whole set stays within an hour on two cores: a few training steps, few evaluation rows, two
search trials, adapters from this test's runs folder.  What is checked is that the manifest
works end to end and writes what the example promises (an adapter, a whole model, trials,
ONNX targets with their adapter files, an output in S3); the quality of the full-length demo
is what test_demo_smollm2.py and test_optimize_smollm2.py check.  Examples 10-12 need a
cluster (tests/cli/test_examples.py checks them without one).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.slow.helpers import run_examples

EXAMPLES = {path.name[:2]: path for path in (REPO / "examples").glob("[0-9][0-9]-*.yaml")}
SMALL_TRAINING = {"maxSteps": 8, "saveSteps": 4, "evalSteps": 4}
SMALL_EVALUATION = {"maxSamples": 16}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def small(doc: dict[str, Any], runs: Path) -> dict[str, Any]:
    """The example's job with the overrides that make it quick; everything else as written."""
    spec = doc["spec"]
    if doc["kind"] == "FineTuneJob":
        spec = merge(spec, {"training": SMALL_TRAINING, "evaluation": SMALL_EVALUATION})
        if "search" in spec:
            spec["search"] = merge(spec["search"], {"trials": 2, "parallelism": 1})
    else:
        spec = merge(spec, {"evaluation": SMALL_EVALUATION})
        if "maxAccuracyDrop" in spec["evaluation"].get("gates", {}):
            # A few steps leave the adapters half-trained: their accuracy is no gate to hold the
            # ONNX models to (the full-length demo is, in test_optimize_smollm2.py).
            spec["evaluation"]["gates"]["maxAccuracyDrop"] = 1.0
        for adapter in spec["source"].get("adapters", []):
            if adapter["uri"].startswith("runs/"):  # the earlier examples' output, in this test's runs folder
                adapter["uri"] = str(runs / adapter["uri"].removeprefix("runs/"))
    return {**doc, "spec": spec}


def prepared(number: str, tmp_path: Path) -> str:
    """Example ``number`` with the small overrides, as a file in tmp_path; the run's folder is tmp_path/runs."""
    docs = [small(doc, tmp_path / "runs") for doc in yaml.safe_load_all(EXAMPLES[number].read_text()) if doc]
    path = tmp_path / EXAMPLES[number].name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return str(path)


def run(tmp_path: Path, *numbers: str) -> subprocess.CompletedProcess:
    files = [prepared(n, tmp_path) for n in numbers]
    return run_examples(*files, runs_dir=tmp_path / "runs", timeout=3600)


def job_name(number: str) -> str:
    [doc] = [d for d in yaml.safe_load_all(EXAMPLES[number].read_text()) if d]
    return doc["metadata"]["name"]


def finished(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json and manifest.json of a finished output (the manifest is written last)."""
    return json.loads((out / "metrics.json").read_text()), json.loads((out / "manifest.json").read_text())


def check_lora(out: Path) -> None:
    metrics, manifest = finished(out)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert manifest["spec"]["method"] == "lora"
    assert metrics["evaluation"]["finetuned"]["total"] == SMALL_EVALUATION["maxSamples"]


def check_qlora(out: Path) -> None:
    _, manifest = finished(out)
    assert manifest["spec"]["method"] == "qlora"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def check_dora(out: Path) -> None:
    _, manifest = finished(out)
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    assert (out / "merged" / "config.json").is_file()  # output.mergedModel
    assert "merged/config.json" in {entry["path"] for entry in manifest["files"]}


def check_full(out: Path) -> None:
    finished(out)
    assert (out / "model" / "config.json").is_file() and not (out / "adapter").exists()


def check_chat(out: Path) -> None:
    metrics, _ = finished(out)
    prompts = [json.loads(line) for line in (out / "data" / "eval_prompts.jsonl").read_text().splitlines()]
    # The messages column rendered with the chat template: the system message, earlier turns
    # for some rows, and the last assistant message as the expected answer.
    assert all("You name the tone of a phrase" in p["prompt_text"] for p in prompts)
    assert any(p["prompt_text"].count("<|im_start|>user") == 2 for p in prompts)
    assert {p["answer"] for p in prompts} <= {"happy", "sad", "angry", "fearful", "calm"}
    assert metrics["evaluation"]["finetuned"]["total"] == SMALL_EVALUATION["maxSamples"]


def check_search(out: Path) -> None:
    metrics, manifest = finished(out)
    search = metrics["search"]
    assert len(search["trials"]) == 2 and search["metric"] == "eval_loss"
    assert (out / "trials" / f"trial-{search['best_trial']:03d}" / "adapter").is_dir()
    assert manifest["inputs"]["search"]["bestTrial"] == search["best_trial"]
    assert "f1" in metrics["evaluation"]["finetuned"]["metrics"]


def check_optimize_cpu(out: Path) -> None:
    metrics, _ = finished(out)
    assert set(metrics["targets"]) == {"cpu-int4", "cpu-int4-adapter", "cpu-int8"}
    for name in metrics["targets"]:
        assert (out / "targets" / name / "genai_config.json").is_file(), name
    assert (out / "targets" / "cpu-int4-adapter" / "smollm2-tone.onnx_adapter").is_file()


def check_multi_adapter(out: Path) -> None:
    metrics, _ = finished(out)
    target = metrics["targets"]["cpu-int4-adapters"]
    assert target["adapters"] == ["tone", "tone-chat"] and target["mergeAdapter"] is False
    folder = out / "targets" / "cpu-int4-adapters"
    assert (folder / "tone.onnx_adapter").is_file() and (folder / "tone-chat.onnx_adapter").is_file()
    assert "accuracy" in target["metrics"]
    assert list(target["byAdapter"]) == ["tone", "tone-chat"]  # each on its own data
    assert metrics["reference"]["byAdapter"]["tone-chat"]["dataset"] == "examples/data/tone-chat"


# number -> (the examples its comment runs first, what its output must hold)
CASES: dict[str, tuple[tuple[str, ...], Callable[[Path], None]]] = {
    "01": ((), check_lora),
    "02": ((), check_qlora),
    "03": ((), check_dora),
    "04": ((), check_full),
    "05": ((), check_chat),
    "07": ((), check_search),
    "08": (("01",), check_optimize_cpu),
    "09": (("01", "05"), check_multi_adapter),
}


@pytest.mark.slow
@pytest.mark.parametrize("number", sorted(CASES))
def test_local_example_runs(number, tmp_path):
    first, check = CASES[number]
    if first:
        run(tmp_path, *first)  # as the example's comment says: the jobs it builds on, then itself
    run(tmp_path, number)
    check(tmp_path / "runs" / job_name(number))


@pytest.mark.slow
def test_s3_output_example_writes_to_s3(s3_env, tmp_path):
    """06 against a SeaweedFS, as its comment starts one: the bucket it names, AWS_* for the keys."""
    client = s3_env.client()
    with contextlib.suppress(
        client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
    ):
        client.create_bucket(Bucket="slmops")
    [doc] = [d for d in yaml.safe_load_all(EXAMPLES["06"].read_text()) if d]
    uri = doc["spec"]["output"]["uri"]
    assert uri == "s3://slmops/examples/smollm2-tone-s3"
    run(tmp_path, "06")
    keys = {
        obj["Key"]
        for obj in client.list_objects_v2(Bucket="slmops", Prefix="examples/smollm2-tone-s3/")["Contents"]
    }
    assert {
        "examples/smollm2-tone-s3/manifest.json",
        "examples/smollm2-tone-s3/adapter/adapter_model.safetensors",
    } <= keys
    described = subprocess.run(
        [sys.executable, "-m", "slmops_operator.cli.main", "describe", uri, "-o", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert described.returncode == 0, described.stderr[-3000:]
    found = json.loads(described.stdout)
    assert found["phase"] == "Succeeded" and found["checksums"]["ok"] is True
