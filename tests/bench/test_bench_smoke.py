"""Each benchmark script, run with its smallest settings on the tiny model.

Benchmarks measure and are never asserted on speed (docs/benchmarks.md holds the figures);
these tests only keep the scripts working: every tool runs, every figure is produced, the
correctness half of a benchmark (one run per job) holds.  Olive is installed into its own
venv by bench/setup_olive.sh, as a user of the benchmarks would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TONE_DATA

BENCH = REPO / "bench"
OLIVE_VENV = REPO / ".cache" / "bench" / "olive-venv"


def run(command: list, *, timeout: int = 900) -> str:
    env = {**os.environ, "PYTHON": sys.executable}  # bench/gpu.sh: this interpreter, not a guess
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def olive() -> Path:
    run(["bash", BENCH / "setup_olive.sh"])
    return OLIVE_VENV


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory, tiny_model: Path, olive: Path) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("bench-finetune")
    out = run(
        [
            sys.executable,
            BENCH / "finetune.py",
            "--model",
            tiny_model,
            "--data",
            TONE_DATA,
            "--steps",
            2,
            "--batch",
            2,
            "--max-seq-len",
            256,  # the tiny model's byte-level tokenizer makes long rows
            "--eval-rows",
            4,
            "--olive-venv",
            olive,
            "--work",
            work,
            "--json",
            work / "figures.json",
            "--peak-seconds",
            0.5,
        ]
    )
    return work, out


def test_finetune_bench_runs_every_tool_and_judges_each(finetune_run):
    work, out = finetune_run
    written = json.loads((work / "figures.json").read_text())
    assert written["machine"] and written["date"] and "finetune.py" in written["command"]
    assert written["versions"]["torch"] and written["parameters"] > 0 and written["verdict"]
    figures = written["tools"]
    assert list(figures) == ["slmops", "slmops-fp32", "trl", "trl-bf16", "plain", "olive"]
    for tool, r in figures.items():
        assert r["wall_s"] > r["train_s"] > 0, tool
        assert r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 50 and 0 < r["mfu"] < 1, tool
        assert r["precision"] in ("fp32", "bf16"), tool
        assert r["rows"] == 4 and 0 <= r["accuracy"] <= 1 and r["eval_loss"] > 0, tool
        assert (Path(r["adapter"]) / "adapter_config.json").exists(), tool
    assert figures["slmops-fp32"]["precision"] == "fp32" and figures["trl-bf16"]["precision"] == "bf16"
    assert "| slmops |" in out and "vs TRL's best" in out and "matmul peak in this run" in out


def optimize_bench(
    work: Path, model: Path, tmp_path: Path, *, tools: str, olive: Path | None = None
) -> tuple:
    command = [
        sys.executable,
        BENCH / "optimize.py",
        "--model",
        model,
        "--adapter",
        work / "slmops-out" / "adapter",
    ]
    command += [
        "--data",
        TONE_DATA,
        "--precisions",
        "int4",
        "--eval-rows",
        4,
        "--latency-runs",
        1,
        "--rounds",
        2,
    ]
    command += ["--tools", tools, "--work", tmp_path, "--json", tmp_path / "figures.json"]
    if olive:
        command += ["--olive-venv", olive]
    out = run(command)
    return json.loads((tmp_path / "figures.json").read_text()), out


def test_optimize_bench_builds_and_measures_every_tool(finetune_run, tiny_model: Path, olive: Path, tmp_path):
    work, _ = finetune_run
    figures, out = optimize_bench(
        work, tiny_model, tmp_path, tools="slmops,slmops-1cpu,builder,olive", olive=olive
    )
    assert figures["bandwidth_bytes_per_s"] > 1e8
    models = figures["models"]
    assert list(models) == [
        "PyTorch fp32",
        "slmops cpu-int4",
        "slmops cpu-int4-adapter",
        "slmops cpu-int4, built on 1 CPU",
        "builder cpu-int4",
        "olive cpu-int4",
    ]
    for name, r in models.items():
        assert r["decode_tok_s_p50"] > 0 and r["decode_tok_s_p50_threads"] > 0, name
        assert r["bound_tok_s"] > 0 and r["bytes_per_token"] > 0, name
        assert r["rows"] == 4 and r["size_mb"] > 0, name
    assert all(models[name]["produce_s"] > 0 for name in list(models)[1:])
    # int4 weights are smaller than fp32 ones: what one token reads shrinks with them.
    assert models["slmops cpu-int4"]["bytes_per_token"] < models["PyTorch fp32"]["bytes_per_token"]
    assert "int4 vs the model builder's default int4" in out and "separate adapter vs merged" in out
    assert "int4 built on 1 CPU vs on all" in out and "at equal threads" in out

    folders = [models["slmops cpu-int4"]["folder"], models["builder cpu-int4"]["folder"]]
    profile = run([sys.executable, BENCH / "profile_decode.py", *folders, "--runs", 1])
    assert profile.count("| MatMulNBits |") == 2 and "| /lm_head/MatMul" in profile


def test_int4_sweep_builds_each_variant_and_measures_it_at_equal_threads(
    finetune_run, tiny_model: Path, tmp_path
):
    work, _ = finetune_run
    command = [
        sys.executable,
        BENCH / "int4_sweep.py",
        "--model",
        tiny_model,
        "--adapter",
        work / "slmops-out" / "adapter",
    ]
    command += ["--data", TONE_DATA, "--variants", "default-b32,rtn-b32", "--eval-rows", 4]
    command += ["--latency-runs", 1, "--rounds", 1, "--work", tmp_path, "--json", tmp_path / "figures.json"]
    out = run(command)
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert list(figures["variants"]) == ["default-b32", "rtn-b32"] and figures["threads"] >= 1
    assert figures["variants"]["rtn-b32"]["options"] == {"int4_algo_config": "rtn"}
    for name, r in figures["variants"].items():
        assert r["decode_tok_s_p50_threads"] > 0 and r["rows"] == 4 and r["size_mb"] > 0, name
    assert "| rtn-b32 | `int4_algo_config=rtn` |" in out and "| 1.00x |" in out


@pytest.mark.parametrize(
    ("script", "engine"), [("llamacpp_peer", "LlamaCppEngine"), ("openvino_peer", "OpenVinoEngine")]
)
def test_each_peer_engine_offers_every_call_measure_makes(script: str, engine: str):
    """The peers run only where their venvs were built (not in CI): this keeps them in step with
    measure()'s Engine protocol there too (they lacked greedy_all once, found only on a run)."""
    import importlib.util
    import inspect

    from slmops_pipelines.steps.optimize.measure import Engine

    spec = importlib.util.spec_from_file_location(script, BENCH / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # their engines' libraries are imported in the calls, not here
    wanted = {name for name, _ in inspect.getmembers(Engine, inspect.isfunction) if not name.startswith("_")}
    missing = {name for name in wanted if not callable(getattr(getattr(module, engine), name, None))}
    assert wanted and not missing, f"{script}.{engine} lacks {sorted(missing)}"


def test_optimize_bench_measures_llamacpp_where_it_is_built(finetune_run, tiny_model: Path, tmp_path):
    """llama.cpp builds from source for minutes (bench/setup_llamacpp.sh): not part of the setup."""
    venv = REPO / ".cache" / "bench" / "llamacpp-venv"
    if not (venv / ".llamacpp-installed").exists():
        pytest.skip(f"llama.cpp is not built here ({venv}): run bench/setup_llamacpp.sh")
    work, _ = finetune_run
    figures, out = optimize_bench(work, tiny_model, tmp_path, tools="llamacpp")
    row = figures["models"]["llama.cpp Q4_0"]
    assert row["decode_tok_s_p50"] > 0 and row["rows"] == 4 and 0 <= row["accuracy"] <= 1, row
    assert "| llama.cpp Q4_0 |" in out


def test_optimize_bench_measures_openvino_where_it_is_installed(finetune_run, tiny_model: Path, tmp_path):
    """OpenVINO GenAI and optimum-intel live in a venv of their own (bench/setup_openvino.sh)."""
    venv = REPO / ".cache" / "bench" / "openvino-venv"
    if not (venv / ".openvino-installed").exists():
        pytest.skip(f"OpenVINO GenAI is not installed here ({venv}): run bench/setup_openvino.sh")
    work, _ = finetune_run
    figures, out = optimize_bench(work, tiny_model, tmp_path, tools="openvino")
    row = figures["models"]["openvino cpu-int4"]
    assert row["decode_tok_s_p50"] > 0 and row["decode_tok_s_p50_threads"] > 0 and row["rows"] == 4, row
    assert 0 <= row["accuracy"] <= 1 and row["perplexity"] >= 1 and row["size_mb"] > 0, row
    assert figures["versions"]["openvino-genai"] and "| openvino cpu-int4 |" in out


def test_operator_bench_gives_each_job_exactly_one_run(tmp_path):
    out = run(
        [
            sys.executable,
            BENCH / "operator_load.py",
            "--jobs",
            1,
            5,
            "--settle",
            1,
            "--json",
            tmp_path / "figures.json",
        ]
    )
    written = json.loads((tmp_path / "figures.json").read_text())
    assert written["machine"] and written["date"] and written["versions"]["kopf"]
    figures = written["sizes"]
    assert [r["jobs"] for r in figures] == [1, 5]
    for r in figures:
        assert r["runs"] == r["jobs_with_exactly_one_run"] == r["jobs"]
        assert 0 < r["p50_s"] <= r["p95_s"] and r["rss_peak_mb"] > r["rss_idle_mb"] * 0.9 > 0
    assert "| 5 | 5 | 5/5 |" in out


def test_gpu_script_runs_its_smoke_mode_on_the_cpu(tmp_path):
    out = run(["bash", BENCH / "gpu.sh", "--smoke", "--json", tmp_path / "figures.json"], timeout=600)
    rows = {r["part"]: r for r in json.loads((tmp_path / "figures.json").read_text())["rows"]}
    assert rows["LoRA training"]["tokens_per_s"] > 0
    assert rows["QLoRA training"]["skipped"]  # no CUDA here: said, not estimated
    assert rows["ONNX decode cpu-int4"]["tokens_per_s"] > 0
    assert "| LoRA training |" in out


def test_serve_bench_loads_a_server_with_concurrent_clients(genai_target: Path, tmp_path):
    """bench/serve.py on an OptimizeJob output holding the tiny target (llama.cpp left out)."""
    import shutil

    from slmops_pipelines.steps import publish
    from slmops_pipelines.storage import open_store

    out = tmp_path / "opt"
    shutil.copytree(genai_target, out / "targets" / "tiny")
    spec = {
        "source": {
            "model": {"uri": "/models/tiny"},
            "adapters": [{"name": "alpha", "uri": "/a"}, {"name": "beta", "uri": "/b"}],
        },
        "targets": [
            {"name": "tiny", "provider": "CPUExecutionProvider", "precision": "fp32", "mergeAdapter": False}
        ],
    }
    identity = {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "OptimizeJob",
        "namespace": "default",
        "name": "opt",
    }
    publish.write_manifest(open_store(str(out)), out, identity=identity, spec=spec, inputs={})
    figures = tmp_path / "serve.json"
    command = [sys.executable, BENCH / "serve.py", "--output", out, "--targets", "tiny", "--clients", "1,2"]
    quick = ["--requests", "1", "--max-tokens", "4", "--repeats", "2", "--pause", "0", "--no-llamacpp"]
    output = run([*command, *quick, "--json", figures])
    assert "slmops tiny" in output
    found = json.loads(figures.read_text())["rows"]
    for name in ["slmops tiny", "genai tiny (alone)"]:
        rows = found[name]
        assert [r["clients"] for r in rows] == [1, 2] and all(r["tokens"] > 0 for r in rows)
        assert all(len(r["tokens_per_s_rounds"]) == 2 and r["requests"] == 2 * r["clients"] for r in rows)


def test_batch_kernels_prototype_replaces_every_int4_node_and_measures_both(
    tiny_model, tmp_path, isolated_cache
):
    """bench/batch_kernels.py on a tiny int4 target: the int8 copy loads and decodes like the original."""
    from slmops_pipelines.specs.optimize import OptimizeTarget
    from slmops_pipelines.steps.optimize.export import export_target

    target = OptimizeTarget(name="int4", provider="CPUExecutionProvider", precision="int4")
    exported = export_target(target, tiny_model, tmp_path / "targets", cache_dir=isolated_cache / "b")
    figures = tmp_path / "kernels.json"
    command = [sys.executable, BENCH / "batch_kernels.py", "--target", exported.path, "--batches", "1,2"]
    run([*command, "--rounds", "1", "--steps", "2", "--json", figures])
    found = json.loads(figures.read_text())
    assert found["replaced"] > 0
    assert {(r["model"].split()[0], r["batch"]) for r in found["decode"]} == {
        ("int4", 1),
        ("int4", 2),
        ("int8", 1),
        ("int8", 2),
    }
    assert all(r["tokens_per_s"] > 0 for r in found["decode"]) and found["nodes"]


def test_lora_kernels_times_every_group_with_every_kernel(tmp_path):
    figures = tmp_path / "lora.json"
    run([sys.executable, BENCH / "lora_kernels.py", "--copies", "2", "--repeats", "1", "--json", figures])
    rows = json.loads(figures.read_text())["rows"]
    assert len(rows) == 12 and all(r["us_per_call"] > 0 for r in rows)


def test_lora_prepacked_bakes_the_adapter_in_and_measures_each_copy(genai_target: Path, tmp_path):
    """bench/lora_prepacked.py on the tiny target: each copy gives the shipped target's tokens."""
    figures = tmp_path / "prepacked.json"
    command = [sys.executable, BENCH / "lora_prepacked.py", genai_target, "--merged", genai_target]
    run([*command, "--rounds", "1", "--tokens", "4", "--work", tmp_path / "work", "--json", figures])
    found = json.loads(figures.read_text())
    assert found["branches"] > 0 and found["adapter"] in ("alpha", "beta")
    copies = {"constants, graph as shipped", "baked fp32", "baked int8"}
    assert set(found["checks"]) == copies
    assert all(c["same_greedy_token"] >= 0.75 for c in found["checks"].values()), found["checks"]
    for rows in found["decode"].values():
        assert set(rows) == {"merged", "separate (adapter per request)", *copies}
        assert all(r["tokens_per_s"] > 0 for r in rows.values())
