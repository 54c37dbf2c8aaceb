"""The operator's scenarios on a real cluster: apply, watch, read the status; refuse; delete."""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.e2e

GROUP, VERSION = "slmops.io", "v1alpha1"
TIMEOUT = float(os.environ.get("SLMOPS_E2E_TIMEOUT", "1800"))


def finetune(name: str, **spec) -> dict:
    output = os.environ.get("SLMOPS_E2E_OUTPUT", "")
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": os.environ.get("SLMOPS_E2E_MODEL", "hf://HuggingFaceTB/SmolLM2-135M-Instruct")},
            "dataset": {
                "uri": os.environ.get("SLMOPS_E2E_DATASET", "s3://slmops-e2e/data/tone/train.jsonl"),
                "trainSplit": "train[:64]",
                "evalFraction": 0.25,
                "chatTemplate": True,
                "promptTemplate": "Tone of: {phrase}",
                "completionTemplate": "{tone}",
                "maxSeqLength": 64,
            },
            "training": {"maxSteps": 4, "batchSize": 4},
            "evaluation": {"maxNewTokens": 4, "maxSamples": 8},
            "output": {
                **({"uri": f"{output.rstrip('/')}/{name}"} if output else {}),
                **(
                    {"credentialsSecret": os.environ["SLMOPS_E2E_SECRET"]}
                    if os.environ.get("SLMOPS_E2E_SECRET")
                    else {}
                ),
            },
            **spec,
        },
    }


def wait_for_phase(api, namespace: str, name: str, phases: set[str]) -> dict:
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", name)
        if (obj.get("status") or {}).get("phase") in phases:
            return obj
        time.sleep(5)
    raise AssertionError(f"{name} did not reach {phases} in {TIMEOUT} s")


def test_a_finetune_job_succeeds_with_artifacts_in_status(api, namespace, unique):
    name = f"e2e-{unique}"
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", finetune(name))
    try:
        obj = wait_for_phase(api, namespace, name, {"Succeeded", "Failed"})
        status = obj["status"]
        assert status["phase"] == "Succeeded", status
        assert status["observedGeneration"] == 1
        assert {"adapter", "manifest", "report"} <= set(status["artifacts"])
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True"
    finally:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", name)


def test_the_webhook_refuses_a_bad_spec_naming_the_field(api, namespace, unique):
    from kubernetes.client.exceptions import ApiException

    body = finetune(f"e2e-bad-{unique}")
    body["spec"]["output"] = {"uri": "relative/path"}
    with pytest.raises(ApiException) as raised:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    assert raised.value.status in (400, 422)
    assert "spec.output.uri" in raised.value.body


def test_the_spec_cannot_change_once_created(api, namespace, unique):
    from kubernetes.client.exceptions import ApiException

    name = f"e2e-immutable-{unique}"
    api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "finetunejobs", finetune(name, suspend=True)
    )
    try:
        with pytest.raises(ApiException) as raised:
            api.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "finetunejobs", name, {"spec": {"training": {"maxSteps": 8}}}
            )
        assert "immutable" in raised.value.body
    finally:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", name)
