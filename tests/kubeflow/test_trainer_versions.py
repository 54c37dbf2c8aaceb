"""Which Kubeflow Trainer releases take our TrainJob: v2.1/v2.2 do; v2.3 (runtimePatches) is refused by name.

The TrainJob is created with ``fieldValidation=Strict`` against an API server that knows the
release's CRD (tests/fixtures/trainer): a field the release does not declare is a 400 there,
never silently pruned, and the job fails saying which releases work.
"""

from __future__ import annotations

from pathlib import Path

import kmock
import pytest
import pytest_asyncio
import yaml

from slmops_pipelines.errors import JobError
from slmops_pipelines.kubeflow.distributed import launcher
from slmops_pipelines.kubeflow.distributed.manifests import Workload, build
from tests.conftest import REPO, finetune_manifest
from tests.fixtures.kube_emulator import StrictKubernetesEmulator, declare_crd

FIXTURES = REPO / "tests" / "fixtures" / "trainer"


@pytest_asyncio.fixture(params=["v2.1", "v2.3"])
async def trainer(request):
    async with StrictKubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources.load_bundled()
        declare_crd(emulator, yaml.safe_load((FIXTURES / f"trainjobs-{request.param}.yaml").read_text()))
        yield request.param, str(server.url).rstrip("/")


def workload(tiny_model: Path) -> Workload:
    from slmops_operator.api import FineTuneJob

    manifest = finetune_manifest("ft-multi", tiny_model, resources={"nodes": 2, "gpusPerNode": 0})
    return Workload(
        name="slmops-ft-multi-0123abcd",
        namespace="team-a",
        job_name="ft-multi",
        job_uid="0b7a-uid",
        spec=FineTuneJob.model_validate(manifest).spec,
        image="registry.example/slmops-trainer:1.2.3",
        staging_uri="s3://b/staging",
        output_uri="s3://b/out",
    )


async def test_a_trainer_release_without_our_fields_is_refused_by_name(trainer, tiny_model):
    import asyncio

    from kubernetes import client

    release, url = trainer
    api = client.CustomObjectsApi(client.ApiClient(client.Configuration(host=url)))
    workloads = launcher.WorkloadClient("trainjob", api=api)
    body = build("trainjob", workload(tiny_model))
    if release == "v2.1":
        created = await asyncio.to_thread(workloads.create, body)
        assert created["spec"]["podTemplateOverrides"] == body["spec"]["podTemplateOverrides"]  # kept whole
        return
    with pytest.raises(JobError) as refused:
        await asyncio.to_thread(workloads.create, body)
    message = refused.value.message
    assert refused.value.reason == "DistributedEngineVersion" and refused.value.field == "resources.nodes"
    assert "spec.podTemplateOverrides" in message and "Kubeflow Trainer v2.1 and v2.2" in message
