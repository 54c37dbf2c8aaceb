"""``pvc://CLAIM/path``: models, datasets and outputs on PersistentVolumeClaims (KServe's storageUri form).

The pipeline's pods mount each claim a job names at ``/mnt/pvc/<claim>``; to the steps a
``pvc://`` URI is that folder, with the same claim, manifest-last and ownership rules as
any local output.  ``SLMOPS_PVC_ROOT`` moves the mount root, as these tests do.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from slmops_operator.api import FineTuneJob
from slmops_operator.cli.main import cli
from slmops_operator.handlers.validation import problems_of
from slmops_operator.settings import OperatorSettings
from slmops_pipelines.errors import InputError
from slmops_pipelines.kubeflow.distributed.manifests import Workload, build
from slmops_pipelines.local import run_finetune
from slmops_pipelines.storage import open_store
from slmops_pipelines.uris import UriError, parse_uri, pvc_claims
from tests.conftest import finetune_manifest, job_run


@pytest.fixture
def pvc_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "mnt-pvc"
    monkeypatch.setenv("SLMOPS_PVC_ROOT", str(root))
    return root


def test_a_pvc_uri_is_the_claims_mounted_folder(pvc_root):
    parsed = parse_uri("pvc://models/smollm2/v1")
    assert (parsed.scheme, parsed.claim, parsed.key) == ("pvc", "models", "smollm2/v1")
    assert parsed.path == pvc_root / "models" / "smollm2" / "v1"
    assert parse_uri("pvc://models").path == pvc_root / "models"


@pytest.mark.parametrize("uri", ["pvc://Models/x", "pvc://models/../other/x", "pvc:///x", "pvc://-x/y"])
def test_malformed_pvc_uris_are_refused(uri):
    with pytest.raises(UriError):
        parse_uri(uri)


def test_the_claims_of_uris_are_found_once_each_in_order():
    uris = ["pvc://models/a", "s3://bbb/d", "pvc://data/t", "pvc://models/b", ""]
    assert pvc_claims(uris) == ["models", "data"]


def test_a_pvc_output_keeps_the_local_rules(pvc_root):
    store = open_store("pvc://outputs/team-a/job", field="output.uri")
    store.check()
    store.write_text("metrics.json", "{}")
    assert (pvc_root / "outputs" / "team-a" / "job" / "metrics.json").read_text() == "{}"
    assert store.local_root() == pvc_root / "outputs" / "team-a" / "job"


def test_a_whole_volume_is_no_output(tiny_model):
    manifest = finetune_manifest("whole", tiny_model, output={"uri": "pvc://outputs"})
    with pytest.raises(ValueError, match="names a whole volume"):
        FineTuneJob.model_validate(manifest)


def test_the_local_backend_refuses_claims_it_cannot_mount(tiny_model, tmp_path):
    manifest = finetune_manifest("on-pvc", tiny_model, dataset={"uri": "pvc://data/tone.jsonl"})
    local = OperatorSettings(backend="local", local_state_dir=tmp_path / "state", metrics_port=0)
    problems = problems_of("FineTuneJob", manifest, settings=local)
    assert any(p.startswith("spec.dataset.uri:") and "only the kfp backend mounts" in p for p in problems)
    kfp = OperatorSettings(
        backend="kfp", kfp_multi_user=True, local_state_dir=tmp_path / "state", metrics_port=0
    )
    assert problems_of("FineTuneJob", manifest, settings=kfp) == []  # the claim of the job's namespace


def test_the_pipeline_mounts_every_claim_the_job_names(tmp_path):
    manifest = finetune_manifest("pvc-job", Path("/unused"))
    manifest["spec"]["model"]["uri"] = "pvc://models/smollm2"
    manifest["spec"]["dataset"]["uri"] = "pvc://data/tone.jsonl"
    manifest["spec"]["output"] = {"uri": "pvc://outputs/team-a/pvc-job"}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(manifest))
    out = tmp_path / "p.yaml"
    assert CliRunner().invoke(cli, ["compile", str(job), "-o", str(out)]).exit_code == 0
    _, platform = yaml.safe_load_all(out.read_text())
    for name, executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        mounts = {m["constant"]: m["mountPath"] for m in executor["pvcMount"]}
        assert mounts == {
            "models": "/mnt/pvc/models",
            "data": "/mnt/pvc/data",
            "outputs": "/mnt/pvc/outputs",
        }, name


def test_training_nodes_mount_input_claims_read_only():
    manifest = finetune_manifest("pvc-nodes", Path("/unused"), resources={"nodes": 2})
    manifest["spec"]["model"]["uri"] = "pvc://models/smollm2"
    spec = FineTuneJob.model_validate(manifest).spec
    w = Workload("w", "team-a", "pvc-nodes", "uid", spec, "img", "s3://b/staging", "s3://b/out")
    pod = build("pytorchjob", w)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    [claim] = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == claim["name"]]
    assert mount == {"name": claim["name"], "mountPath": "/mnt/pvc/models", "readOnly": True}


def test_a_job_reads_and_writes_claims_end_to_end(pvc_root, tiny_model, tone_data):
    """Model and data on one claim, output on another: a finished output, then a refusal for another job."""
    shutil.copytree(tiny_model, pvc_root / "models" / "tiny")
    shutil.copytree(tone_data, pvc_root / "data" / tone_data.name)
    manifest = finetune_manifest(
        "on-claims",
        Path("/unused"),
        dataset={"uri": f"pvc://data/{tone_data.name}"},
        output={"uri": "pvc://outputs/team-a/on-claims"},
    )
    manifest["spec"]["model"]["uri"] = "pvc://models/tiny"
    job = FineTuneJob.model_validate(manifest)
    outcome = run_finetune(job_run(job))
    out = pvc_root / "outputs" / "team-a" / "on-claims"
    assert (out / "manifest.json").is_file() and outcome.artifacts["adapter"] == str(out / "adapter")
    assert run_finetune(job_run(job)).already_complete
    other = FineTuneJob.model_validate({**manifest, "metadata": {"name": "intruder"}})
    with pytest.raises(InputError) as refused:
        run_finetune(job_run(other))
    assert refused.value.field == "output.uri"


def test_a_link_out_of_a_claim_is_never_read(pvc_root, tiny_model, tone_data, tmp_path):
    """A claim is a tenant's: a link in it to the pod's token (here: a file outside it) fails the job first."""
    secret = tmp_path / "token"
    secret.write_text("the pod's service-account token")
    data = pvc_root / "data" / "tone"
    shutil.copytree(tone_data, data)
    (data / "train.jsonl").unlink()
    (data / "train.jsonl").symlink_to(secret)
    shutil.copytree(tiny_model, pvc_root / "models" / "tiny")
    manifest = finetune_manifest(
        "linked", Path("/unused"), dataset={"uri": "pvc://data/tone"}, output={"uri": str(tmp_path / "out")}
    )
    manifest["spec"]["model"]["uri"] = "pvc://models/tiny"
    with pytest.raises(InputError) as refused:
        run_finetune(job_run(FineTuneJob.model_validate(manifest)))
    assert (
        refused.value.field == "dataset.uri"
        and "'tone/train.jsonl' on claim 'data' is a link" in refused.value.message
    )
    store = open_store("pvc://data/tone")
    with pytest.raises(Exception, match="link to a file outside"):
        list(store.list())
    inside = pvc_root / "data" / "tone" / "alias.jsonl"  # a link within the claim is fine
    inside.symlink_to(data / "eval.jsonl")
    (data / "train.jsonl").unlink()
    shutil.copy(tone_data / "train.jsonl", data / "train.jsonl")
    assert "alias.jsonl" in {info.key for info in store.list()}
