"""The validating webhook: what the CRD schema cannot catch, refused with the field and the reason."""

from __future__ import annotations

import copy
from pathlib import Path

from slmops_operator.handlers.validation import problems_of
from tests.conftest import finetune_manifest
from tests.fixtures.webhook_tls import make_webhook_certs
from tests.operator.conftest import (
    API,
    create,
    current,
    delete,
    local_settings,
    patch,
    running_operator,
    wait_until,
)

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
        "spec.output.uri: must be s3://bucket/prefix or an absolute path, or pvc://claim/path (got 'runs/relative')"
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


async def test_the_api_server_asks_the_webhook_over_https(kube, tmp_path):
    """What only the webhook knows (this operator's own folders) is refused at create, over HTTPS."""
    settings = local_settings(tmp_path)
    async with running_operator(kube, settings):
        body = finetune_manifest("bad", MODEL, output={"uri": settings.default_output})
        response = await kube.post(f"{API}/default/finetunejobs", json=body)
        assert response.status == 422
        message = (await response.json())["message"]
        assert message.startswith(
            'admission webhook "finetunejobs.slmops.io" denied the request: spec.output.uri:'
        )
        assert current(kube, "default", "finetunejobs", "bad") is None


async def test_a_renewed_certificate_is_served_without_a_restart(kube, tmp_path):
    """cert-manager renews the certificate and the CA injector the caBundle: the webhook keeps answering."""
    settings = local_settings(tmp_path)
    async with running_operator(kube, settings):
        body = finetune_manifest("bad", MODEL, output={"uri": settings.default_output})
        first = await kube.post(f"{API}/default/finetunejobs", json=body)
        assert first.status == 422 and "denied the request" in (await first.json())["message"]
        make_webhook_certs(settings.webhook_cert_dir)  # a new CA and certificate, in place
        renewed = await kube.post(f"{API}/default/finetunejobs", json=body)
        # Verified against the new CA: the answer comes from the webhook, not a TLS failure.
        assert renewed.status == 422 and "denied the request" in (await renewed.json())["message"]


async def test_the_api_server_refuses_what_the_crd_refuses_before_any_webhook(kube, tmp_path):
    body = finetune_manifest("bad", MODEL, training={"maxSteps": 4, "seed": 2**40})
    response = await kube.post(f"{API}/default/finetunejobs", json=body)  # no operator, no webhook
    assert response.status == 422
    assert "spec.training.seed" in (await response.json())["message"]


async def test_no_object_is_locked_in_by_a_stricter_release(kube, tmp_path):
    """An object admitted before (here: with no webhook) can always lose its finalizer, be relabelled, be deleted."""
    settings = local_settings(tmp_path)
    body = finetune_manifest(
        "old", MODEL, output={"uri": settings.default_output}
    )  # refused by today's webhook
    body["metadata"]["finalizers"] = ["example.com/keep"]
    await create(kube, "default", "finetunejobs", body)
    async with running_operator(kube, settings.model_copy(update={"poll_seconds": 60})):
        await patch(kube, "default", "finetunejobs", "old", {"metadata": {"labels": {"team": "a"}}})
        changed = await kube.patch(
            f"{API}/default/finetunejobs/old",
            json={"spec": {"training": {"learningRate": 0.5}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert changed.status == 422 and "immutable" in (await changed.json())["message"]
        await wait_until(
            lambda: (
                "slmops.io/finalizer"
                in current(kube, "default", "finetunejobs", "old")["metadata"]["finalizers"]
            ),
            what="the operator's finalizer",
        )
        await delete(kube, "default", "finetunejobs", "old")
        await wait_until(  # the operator's own metadata update passed the webhook
            lambda: (
                current(kube, "default", "finetunejobs", "old")["metadata"]["finalizers"]
                == ["example.com/keep"]
            ),
            what="the operator to release its finalizer",
        )
        await patch(kube, "default", "finetunejobs", "old", {"metadata": {"finalizers": []}})
        await wait_until(lambda: current(kube, "default", "finetunejobs", "old") is None, what="deletion")


# -- what depends on the operator's setup: its own folders, the backend, allowed roots ---------------


def test_an_output_at_or_above_the_operators_own_folders(tmp_path):
    settings = local_settings(tmp_path)
    for uri in (settings.default_output, str(settings.local_state_dir), str(tmp_path), f"file://{tmp_path}"):
        problems = problems_of(
            "FineTuneJob", finetune_manifest("j", MODEL, output={"uri": uri}), settings=settings
        )
        assert problems and all(p.startswith("spec.output.uri:") for p in problems), uri
    below = f"{settings.default_output}/default/j"
    assert (
        problems_of("FineTuneJob", finetune_manifest("j", MODEL, output={"uri": below}), settings=settings)
        == []
    )


def test_the_default_output_root_in_s3(tmp_path):
    settings = local_settings(tmp_path).model_copy(update={"default_output": "s3://bucket/slmops"})
    for uri, refused in (
        ("s3://bucket/slmops", True),
        ("s3://bucket/slmops/", True),
        ("s3://bucket/slmops/team-b/j", True),  # another namespace's slot
        ("s3://bucket/slmops/default", True),  # the namespace's whole slot
        ("s3://bucket/slmops/default/j", False),
    ):
        problems = problems_of(
            "FineTuneJob", finetune_manifest("j", MODEL, output={"uri": uri}), settings=settings
        )
        assert bool(problems) == refused, (uri, problems)


def test_a_local_output_with_the_kfp_backend(tmp_path):
    settings = local_settings(tmp_path).model_copy(update={"backend": "kfp", "default_output": "s3://b/o"})
    [problem] = problems_of(
        "FineTuneJob", finetune_manifest("j", MODEL, output={"uri": "/data/out/j"}), settings=settings
    )
    assert problem.startswith("spec.output.uri:") and "s3://" in problem


def test_local_inputs_outside_the_allowed_roots(tmp_path):
    settings = local_settings(tmp_path).model_copy(
        update={"local_allowed_roots": [Path("/models"), Path("/data")]}
    )
    body = finetune_manifest("j", MODEL)  # the tone data lies in the repository, not under /data
    [problem] = problems_of("FineTuneJob", body, settings=settings)
    assert problem.startswith("spec.dataset.uri:") and "SLMOPS_LOCAL_ALLOWED_ROOTS" in problem
    body["spec"]["dataset"]["uri"] = "/data/../etc/passwd"
    [problem] = problems_of("FineTuneJob", body, settings=settings)
    assert problem.startswith("spec.dataset.uri:")
    body["spec"]["dataset"]["uri"] = "/data/tone"
    assert problems_of("FineTuneJob", body, settings=settings) == []
    body["spec"]["model"]["uri"] = "hf://org/model"
    assert problems_of("FineTuneJob", body, settings=settings) == []


def test_the_webhook_never_falls_back_to_plain_http(tmp_path):
    """A missing certificate is an error naming the folder; plain HTTP only when asked for."""
    import pytest

    from slmops_operator.settings import OperatorSettings, WebhookCertificateMissing

    settings = OperatorSettings(webhook_cert_dir=tmp_path / "missing", local_state_dir=tmp_path)
    with pytest.raises(WebhookCertificateMissing, match=r"SLMOPS_WEBHOOK_CERT_DIR: .*tls\.crt.* not found"):
        settings.webhook_server()
    insecure = settings.model_copy(update={"webhook_insecure": True}).webhook_server()
    assert insecure is not None and insecure.insecure
    assert settings.model_copy(update={"webhook_port": 0}).webhook_server() is None
