"""The compiled pipelines: committed and fresh, placement from the job, what is cached."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from slmops_operator.api import FineTuneJob, OptimizeJob
from slmops_operator.cli.main import cli
from slmops_pipelines import jobs
from slmops_pipelines.kubeflow.pipelines import compile_pipeline, finetune_pipeline, optimize_pipeline
from slmops_pipelines.kubeflow.placement import SecretMount
from tests.conftest import REPO, finetune_manifest


def test_committed_pipelines_are_fresh():
    result = CliRunner().invoke(cli, ["compile", "--check", "-o", str(REPO / "pipelines" / "compiled")])
    assert result.exit_code == 0, result.output


def test_check_reports_a_stale_pipeline(tmp_path):
    assert CliRunner().invoke(cli, ["compile", "-o", str(tmp_path)]).exit_code == 0
    (tmp_path / "optimize.yaml").write_text("stale")
    result = CliRunner().invoke(cli, ["compile", "--check", "-o", str(tmp_path)])
    assert result.exit_code == 1 and str(tmp_path / "optimize.yaml") in result.output  # one line, whole


def load(path: Path) -> dict:
    """The pipeline spec, with the platform spec (the second document) under ``platforms``."""
    spec, *platform = yaml.safe_load_all(path.read_text())
    return {**spec, **(platform[0] if platform else {})}


def executors(doc: dict) -> dict:
    return doc["deploymentSpec"]["executors"]


def kubernetes_config(doc: dict) -> dict:
    return doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def tasks_of(doc: dict) -> dict:
    return doc["root"]["dag"]["tasks"]


def test_finetune_placement_comes_from_the_job(tmp_path, tiny_model):
    job = FineTuneJob.model_validate(
        finetune_manifest(
            "placed",
            tiny_model,
            resources={
                "processesPerNode": 4,
                "cpu": "16",
                "memory": "64Gi",
                "gpuResource": "amd.com/gpu",
                "nodeSelector": {"pool": "gpu-a100"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
            output={"uri": "s3://bucket/jobs/placed", "credentialsSecret": "team-s3"},
        )
    )
    # The operator passes the mounts it made of the job's Secret: exactly the keys it holds.
    mount = SecretMount(name="run-1-output", key_to_env={"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID"})
    placement = jobs.KINDS["FineTuneJob"].placement(job.spec, cache_pvc="models", secrets=[mount])
    doc = load(compile_pipeline(finetune_pipeline(placement=placement), tmp_path / "p.yaml"))
    train = executors(doc)["exec-train"]["container"]
    assert train["resources"]["accelerator"] == {
        "count": "4",
        "resourceCount": "4",
        "resourceType": "amd.com/gpu",
        "type": "amd.com/gpu",
    }
    assert train["resources"]["cpuRequest"] == 16 and train["resources"]["memoryRequest"] == 68.719476736
    assert train["image"].startswith("ghcr.io/slmops/slmops-trainer:")
    k8s = kubernetes_config(doc)
    assert k8s["exec-train"]["nodeSelector"] == {"labels": {"pool": "gpu-a100"}}
    assert k8s["exec-train"]["tolerations"] == [{"effect": "NoSchedule", "key": "gpu", "operator": "Exists"}]
    assert "nodeSelector" not in k8s["exec-prepare-data"]  # CPU steps go wherever there is room
    for name in ("exec-inspect-finetune", "exec-prepare-data", "exec-train", "exec-publish-finetune"):
        [secret] = k8s[name]["secretAsEnv"]
        assert secret["secretName"] == "run-1-output" and not secret.get("optional")  # never optional
        assert [m["envVar"] for m in secret["keyToEnv"]] == ["AWS_ACCESS_KEY_ID"]
        assert k8s[name]["pvcMount"][0]["mountPath"] == "/var/cache/slmops"
    evaluate = executors(doc)["exec-evaluate-finetune"]["container"]
    assert evaluate["resources"]["accelerator"]["count"] == "1"  # generation needs one GPU, not four


def test_inspect_and_publish_are_never_cached(tmp_path):
    doc = load(compile_pipeline(finetune_pipeline(), tmp_path / "f.yaml"))
    caching = {
        name: task.get("cachingOptions", {}).get("enableCache", False) for name, task in tasks_of(doc).items()
    }
    assert caching == {
        "inspect-finetune": False,
        "prepare-data": True,
        "train": True,
        "evaluate-finetune": True,
        "publish-finetune": False,
    }
    # Every cached step takes its view of the spec from inspect; data prep also the fingerprint.
    views = {"prepare-data": "data_spec", "train": "train_spec", "evaluate-finetune": "eval_spec"}
    for task, view in views.items():
        spec = tasks_of(doc)[task]["inputs"]["parameters"]["spec"]["taskOutputParameter"]
        assert spec == {"outputParameterKey": view, "producerTask": "inspect-finetune"}
    fingerprint = tasks_of(doc)["prepare-data"]["inputs"]["parameters"]["fingerprint"]
    assert fingerprint["taskOutputParameter"]["producerTask"] == "inspect-finetune"


def test_optimize_fans_out_over_targets_with_gpus_only_where_needed(tmp_path):
    spec = {
        "source": {"model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}},
        "targets": [
            {"name": "cpu-int4", "provider": "CPUExecutionProvider", "precision": "int4"},
            {"name": "cuda-fp16", "provider": "CUDAExecutionProvider", "precision": "fp16"},
        ],
    }
    job = OptimizeJob.model_validate(
        {"apiVersion": "slmops.io/v1alpha1", "kind": "OptimizeJob", "metadata": {"name": "o"}, "spec": spec}
    )
    placement = jobs.KINDS["OptimizeJob"].placement(job.spec)
    assert placement.target_gpus == 1 and placement.gpus == 0
    assert placement.target_families == ["cpu", "cuda"]
    doc = load(compile_pipeline(optimize_pipeline(placement=placement), tmp_path / "o.yaml"))
    # One loop per optimizer image: CPU targets in the CPU image, CUDA targets on a GPU in the CUDA one.
    loop = tasks_of(doc)["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--plan-targets-Output"
    assert loop["iteratorPolicy"]["parallelismLimit"] == 4
    cpu, cuda = (
        executors(doc)["exec-build-target"]["container"],
        executors(doc)["exec-build-target-2"]["container"],
    )
    assert "accelerator" not in cpu.get("resources", {})
    assert cpu["image"].startswith("ghcr.io/slmops/slmops-optimizer:")
    assert cuda["resources"]["accelerator"]["count"] == "1"
    assert cuda["image"].startswith("ghcr.io/slmops/slmops-optimizer-cuda:")
    assert "accelerator" not in executors(doc)["exec-prepare-source"]["container"].get("resources", {})
    publish_inputs = tasks_of(doc)["publish-optimize"]["inputs"]["artifacts"]
    assert publish_inputs["targets"]["taskOutputArtifact"]["producerTask"] == "for-loop-1"
    assert publish_inputs["more_targets"]["taskOutputArtifact"]["producerTask"] == "for-loop-2"


def test_components_install_nothing_at_run_time():
    for path in sorted((REPO / "pipelines" / "compiled").glob("*.yaml")):
        text = path.read_text()
        assert "pip install" not in text, path.name
        for executor in executors(load(path)).values():
            image = executor["container"]["image"]
            assert ":" in image and not image.endswith(":latest"), image


def test_chained_pipeline_feeds_the_finetune_output_to_optimize():
    doc = load(REPO / "pipelines" / "compiled" / "finetune-optimize.yaml")
    tasks = tasks_of(doc)
    assert {"inspect-finetune", "train", "publish-finetune", "inspect-optimize", "publish-optimize"} <= set(
        tasks
    )
    for name in ("inspect-optimize", "prepare-source"):
        source = tasks[name]["inputs"]["parameters"]["source_uri"]["taskOutputParameter"]
        assert source == {"outputParameterKey": "Output", "producerTask": "publish-finetune"}
    from slmops_pipelines.kubeflow import settings

    shown = {f"finetune_{s.name}" for s in settings.FINETUNE} | {
        f"optimize_{s.name}" for s in settings.OPTIMIZE
    }
    assert set(doc["root"]["inputDefinitions"]["parameters"]) == {
        "finetune_spec",
        "finetune_job",
        "finetune_output_uri",
        "optimize_spec",
        "optimize_job",
        "optimize_output_uri",
        *shown,
    }


def test_a_search_fans_out_with_the_jobs_parallelism(tmp_path, tiny_model):
    from slmops_pipelines.kubeflow.pipelines import finetune_search_pipeline

    job = FineTuneJob.model_validate(
        finetune_manifest(
            "s",
            tiny_model,
            search={"trials": 6, "parallelism": 3, "space": {"lora.r": {"values": [4, 8, 16]}}},
        )
    )
    doc = load(
        compile_pipeline(
            finetune_search_pipeline(placement=jobs.KINDS["FineTuneJob"].placement(job.spec)),
            tmp_path / "s.yaml",
        )
    )
    loop = tasks_of(doc)["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--plan-trials-Output"
    assert loop["iteratorPolicy"]["parallelismLimit"] == 3
    evaluate = tasks_of(doc)["evaluate-finetune"]["inputs"]["parameters"]["spec"]["taskOutputParameter"]
    assert evaluate == {"outputParameterKey": "Output", "producerTask": "pick-best"}  # the best trial's spec
