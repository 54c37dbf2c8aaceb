"""The validating webhook: what the CRD schema cannot catch, refused with the field and the reason."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import aiohttp

from slmops_operator.handlers.validation import problems_of
from tests.conftest import finetune_manifest
from tests.operator.conftest import local_settings, running_operator

MODEL = Path("/models/tiny")


def optimize(targets: list[dict], **source) -> dict:
    return {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "OptimizeJob",
        "metadata": {"name": "o", "namespace": "default"},
        "spec": {"source": source or {"fineTuneJobRef": {"name": "ft"}}, "targets": targets},
    }


def test_a_good_job_passes():
    assert problems_of("FineTuneJob", finetune_manifest("ok", MODEL)) == []


def test_a_precision_the_provider_cannot_run():
    body = optimize([{"name": "dml", "provider": "DmlExecutionProvider", "precision": "int8"}])
    [problem] = problems_of("OptimizeJob", body)
    assert problem.startswith("spec.targets[0]") and "DmlExecutionProvider" in problem


def test_several_adapters_cannot_be_merged_into_one_model():
    body = optimize(
        [{"name": "cpu", "provider": "CPUExecutionProvider", "precision": "int4"}],
        model={"uri": "/models/base"},
        adapters=[{"name": "a", "uri": "/adapters/a"}, {"name": "b", "uri": "/adapters/b"}],
    )
    assert any("mergeAdapter: false" in p for p in problems_of("OptimizeJob", body))


def test_an_output_that_is_not_a_location():
    body = finetune_manifest("bad", MODEL, output={"uri": "runs/relative"})
    assert problems_of("FineTuneJob", body) == [
        "spec.output.uri: must be s3://bucket/prefix or an absolute path (got 'runs/relative')"
    ]


def test_the_spec_is_immutable_but_suspend_and_ttl():
    old = finetune_manifest("j", MODEL)
    suspended = copy.deepcopy(old)
    suspended["spec"].update(suspend=True, ttlSecondsAfterFinished=60)
    assert problems_of("FineTuneJob", suspended, old) == []
    changed = copy.deepcopy(old)
    changed["spec"]["training"]["learningRate"] = 0.1
    [problem] = problems_of("FineTuneJob", changed, old)
    assert problem.startswith("spec.training: the spec is immutable once created")


async def test_the_webhook_server_refuses_over_http(kube, tmp_path):
    settings = local_settings(tmp_path)
    body = finetune_manifest("bad", MODEL, training={"maxSteps": 0})
    body["metadata"]["namespace"] = "default"
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b7a",
            "kind": {"group": "slmops.io", "version": "v1alpha1", "kind": "FineTuneJob"},
            "resource": {"group": "slmops.io", "version": "v1alpha1", "resource": "finetunejobs"},
            "operation": "CREATE",
            "namespace": "default",
            "name": "bad",
            "object": body,
            "oldObject": None,
            "userInfo": {"username": "someone"},
            "dryRun": False,
        },
    }
    async with running_operator(kube, settings):
        url = f"http://127.0.0.1:{settings.webhook_port}/validate-finetunejobs"
        for _ in range(100):  # the webhook server starts beside the operator, not before it
            try:
                async with aiohttp.ClientSession() as session, session.post(url, json=review) as response:
                    assert response.status == 200
                    answer = (await response.json())["response"]
                    break
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.1)
    assert answer["uid"] == "0b7a" and answer["allowed"] is False
    assert answer["status"]["code"] == 422
    assert "spec.training.maxSteps" in answer["status"]["message"]
