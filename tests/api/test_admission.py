"""Admission: what `slmops validate`, the webhook and the API server itself (CRD schema + CEL) refuse.

Three layers judge a manifest: the pydantic models (``slmops validate``, the webhook), and
the CRD's schema and CEL rules, which the API server enforces with no webhook at all.  For
every rule CEL can express, both must agree: each bad manifest below is refused by both,
naming the field, and every good one passes both.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slmops_operator.api.crd import all_crds
from slmops_operator.api.manifests import ManifestError, load_resources
from slmops_operator.handlers.validation import problems_of
from tests.conftest import REPO, finetune_manifest
from tests.fixtures.crd_validation import CrdAdmission

MODEL = Path("/models/tiny")
ADMISSION = {crd["spec"]["names"]["kind"]: CrdAdmission(crd) for crd in all_crds().values()}


def optimize(**spec) -> dict:
    body = {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "OptimizeJob",
        "metadata": {"name": "o", "namespace": "default"},
        "spec": {
            "source": {"model": {"uri": "/models/base"}},
            "targets": [{"name": "cpu", "provider": "CPUExecutionProvider", "precision": "int4"}],
        },
    }
    body["spec"].update(spec)
    return body


def ftj(**sections) -> dict:
    """The tiny FineTuneJob with whole spec sections replaced (not merged)."""
    body = finetune_manifest("j", MODEL)
    body["spec"].update(sections)
    return body


def api_server_refusals(body: dict, old: dict | None = None) -> list[str]:
    admission = ADMISSION[body["kind"]]
    stored_old = admission.admit(old)[0] if old is not None else None
    return admission.admit(body, stored_old)[1]


def text_template_dataset(**extra) -> dict:
    return {"uri": "/data/tone", "textTemplate": "{phrase} {tone}", **extra}


# -- the Done-when cases of the shared-cluster issue ----------------------------------------------

REFUSED = {
    "output at the filesystem root": (
        finetune_manifest("j", MODEL, output={"uri": "/"}),
        "spec.output.uri",
        "filesystem root",
    ),
    "output at file:///": (
        finetune_manifest("j", MODEL, output={"uri": "file:///"}),
        "spec.output.uri",
        "filesystem root",
    ),
    "a relative file:// output": (
        finetune_manifest("j", MODEL, output={"uri": "file://runs/j"}),
        "spec.output.uri",
        "absolute path",
    ),
    "a seed of 2^40": (
        finetune_manifest("j", MODEL, training={"maxSteps": 4, "seed": 2**40}),
        "spec.training.seed",
        "less than or equal to 4294967295",
    ),
    "accuracy with a textTemplate (FineTuneJob)": (
        ftj(dataset=text_template_dataset(), evaluation={"metrics": ["accuracy"]}),
        "spec",
        "textTemplate has no answer",
    ),
    "accuracy with a textTemplate (OptimizeJob)": (
        optimize(evaluation={"dataset": text_template_dataset(), "metrics": ["accuracy", "latency"]}),
        "spec.evaluation",
        "textTemplate has no answer",
    ),
    "accuracy with an adapter's textTemplate": (
        optimize(
            source={
                "model": {"uri": "/m"},
                "adapters": [
                    {"name": "a", "uri": "/a"},
                    {"name": "b", "uri": "/b", "evaluation": {"dataset": text_template_dataset()}},
                ],
            },
            targets=[
                {
                    "name": "cpu",
                    "provider": "CPUExecutionProvider",
                    "precision": "int4",
                    "mergeAdapter": False,
                }
            ],
            evaluation={"metrics": ["accuracy", "latency"]},
        ),
        "spec",
        "source.adapters[1].evaluation.dataset: metrics accuracy",
    ),
    "a TTL over a year": (
        finetune_manifest("j", MODEL, ttlSecondsAfterFinished=10**9),
        "spec.ttlSecondsAfterFinished",
        "less than or equal",
    ),
    "steps beyond any run": (
        finetune_manifest("j", MODEL, training={"maxSteps": 10**12}),
        "spec.training.maxSteps",
        "less than or equal",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_validate_and_the_webhook_refuse_with_the_field_and_the_reason(case):
    body, field, reason = REFUSED[case]
    problems = problems_of(body["kind"], body)
    assert any(p.startswith(field) and reason in p for p in problems), problems


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_slmops_validate_refuses_them(case, tmp_path):
    body, field, reason = REFUSED[case]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(ManifestError) as refused:
        load_resources([path])
    assert any(p.path.startswith(field) for p in refused.value.problems), refused.value.problems
    assert reason in str(refused.value)
    proc = subprocess.run(
        [sys.executable, "-m", "slmops_operator.cli.main", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and reason in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_single_adapter_needs_no_name():
    body = optimize(source={"model": {"uri": "/models/base"}, "adapter": {"uri": "/runs/tone/adapter"}})
    assert problems_of("OptimizeJob", body) == []
    assert api_server_refusals(body) == []
    [resource] = load_resources_from(body)
    assert resource.spec.source.adapter.name == "tone"


def load_resources_from(body: dict, tmp=None):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "job.yaml"
        path.write_text(yaml.safe_dump(body))
        return load_resources([path])


def test_accuracy_left_out_of_the_default_metrics_without_answers():
    body = optimize(evaluation={"dataset": text_template_dataset()})
    [resource] = load_resources_from(body)
    assert "accuracy" not in resource.spec.evaluation.metrics
    assert "perplexity" in resource.spec.evaluation.metrics


# -- the API server's own rules agree with the models ------------------------------------------------

CEL_REFUSED = {
    "text and prompt templates": finetune_manifest(
        "j",
        MODEL,
        dataset={"uri": "/d", "textTemplate": "{a}", "promptTemplate": "{a}", "completionTemplate": "{b}"},
    ),
    "text and chat templates": ftj(dataset={"uri": "/d", "textTemplate": "{a}", "chatTemplate": True}),
    "a prompt without a completion": ftj(dataset={"uri": "/d", "promptTemplate": "{a}"}),
    "no rendering at all": ftj(dataset={"uri": "/d"}),
    "evalSplit and evalFraction": ftj(
        dataset={"uri": "/d", "textTemplate": "{a}", "evalSplit": "eval", "evalFraction": 0.1}
    ),
    "maxSteps and epochs": finetune_manifest("j", MODEL, training={"maxSteps": 3, "epochs": 1}),
    "full with a merged model": finetune_manifest("j", MODEL, method="full", output={"mergedModel": True}),
    "qlora in fp16": finetune_manifest(
        "j", MODEL, method="qlora", training={"maxSteps": 2, "precision": "fp16"}
    ),
    "accuracy without answers": REFUSED["accuracy with a textTemplate (FineTuneJob)"][0],
    "a seed of 2^40": REFUSED["a seed of 2^40"][0],
    "two sources": optimize(source={"model": {"uri": "/m"}, "fineTuneJobRef": {"name": "ft"}}),
    "no source": optimize(source={}),
    "adapters with a job ref": optimize(source={"fineTuneJobRef": {"name": "ft"}, "adapter": {"uri": "/a"}}),
    "adapter and adapters": optimize(
        source={"model": {"uri": "/m"}, "adapter": {"uri": "/a"}, "adapters": [{"name": "b", "uri": "/b"}]}
    ),
    "adapter names twice": optimize(
        source={
            "model": {"uri": "/m"},
            "adapters": [{"name": "a", "uri": "/a"}, {"name": "a", "uri": "/b"}],
        },
        targets=[
            {"name": "cpu", "provider": "CPUExecutionProvider", "precision": "int4", "mergeAdapter": False}
        ],
    ),
    "several adapters merged": optimize(
        source={"model": {"uri": "/m"}, "adapters": [{"name": "a", "uri": "/a"}, {"name": "b", "uri": "/b"}]}
    ),
    "an adapter's dataset with text and prompt templates": optimize(
        source={
            "model": {"uri": "/m"},
            "adapters": [
                {"name": "a", "uri": "/a"},
                {
                    "name": "b",
                    "uri": "/b",
                    "evaluation": {"dataset": {"uri": "/d", "textTemplate": "{a}", "promptTemplate": "{a}"}},
                },
            ],
        },
        targets=[
            {"name": "cpu", "provider": "CPUExecutionProvider", "precision": "int4", "mergeAdapter": False}
        ],
    ),
    "a precision the provider cannot run": optimize(
        targets=[{"name": "dml", "provider": "DmlExecutionProvider", "precision": "int8"}]
    ),
    "a target named twice": optimize(
        targets=[
            {"name": "cpu", "provider": "CPUExecutionProvider", "precision": "int4"},
            {"name": "cpu", "provider": "CPUExecutionProvider", "precision": "int8"},
        ]
    ),
}


@pytest.mark.parametrize("case", sorted(CEL_REFUSED))
def test_the_api_server_refuses_what_the_models_refuse(case):
    body = CEL_REFUSED[case]
    assert problems_of(body["kind"], body), "the models accept it"
    assert api_server_refusals(body), "the CRD (schema + CEL) accepts it"


def good_manifests() -> list[dict]:
    bodies = [finetune_manifest("good", MODEL), optimize()]
    for path in sorted((REPO / "examples").glob("*.yaml")):
        # Examples hold other resources too (12: an Argo CD Application): only slmops.io jobs here.
        bodies += [
            b for b in yaml.safe_load_all(path.read_text()) if b and b["apiVersion"].startswith("slmops.io/")
        ]
    own_data = {"dataset": {"uri": "/data/sql.jsonl", "promptTemplate": "{q}", "completionTemplate": "{sql}"}}
    bodies.append(
        optimize(
            source={
                "model": {"uri": "/m"},
                "adapters": [
                    {"name": "a", "uri": "/a"},
                    {"name": "sql", "uri": "/b", "evaluation": own_data},
                ],
            },
            evaluation={
                "dataset": {"uri": "/data/tone", "promptTemplate": "{phrase}", "completionTemplate": "{tone}"}
            },
            targets=[
                {
                    "name": "cpu",
                    "provider": "CPUExecutionProvider",
                    "precision": "int4",
                    "mergeAdapter": False,
                }
            ],
        )
    )
    bodies.append(
        optimize(
            source={"model": {"uri": "/m"}, "adapters": [{"name": "a", "uri": "/a"}, {"uri": "/b"}]},
            targets=[
                {
                    "name": "cpu",
                    "provider": "CPUExecutionProvider",
                    "precision": "int4",
                    "mergeAdapter": False,
                }
            ],
        )
    )
    return bodies


@pytest.mark.parametrize("body", good_manifests(), ids=lambda b: f"{b['kind']}-{b['metadata']['name']}")
def test_good_manifests_pass_both(body):
    assert problems_of(body["kind"], body) == []
    assert api_server_refusals(body) == []


# -- immutability, enforced by the API server too ------------------------------------------------------


def test_the_api_server_refuses_spec_changes_but_suspend_and_ttl():
    old = finetune_manifest("j", MODEL)
    operational = copy.deepcopy(old)
    operational["spec"].update(suspend=True, ttlSecondsAfterFinished=60)
    assert api_server_refusals(operational, old) == []
    changed = copy.deepcopy(old)
    changed["spec"]["training"]["learningRate"] = 0.1
    [problem] = api_server_refusals(changed, old)
    assert problem.startswith("spec.training") and "immutable" in problem
    added = copy.deepcopy(old)
    added["spec"]["search"] = {"metric": "eval_loss", "trials": 2, "space": {"training.learningRate": [0.1]}}
    assert any(p.startswith("spec.search") for p in api_server_refusals(added, old))


def test_the_crds_carry_transition_rules_on_old_self():
    for crd in all_crds().values():
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        rules = spec["x-kubernetes-validations"]
        transition = [r for r in rules if "oldSelf" in r["rule"]]
        assert {r["fieldPath"] for r in transition} == {
            f".{name}" for name in spec["properties"] if name not in ("suspend", "ttlSecondsAfterFinished")
        }


def test_metadata_only_updates_always_pass_the_webhook():
    """A stricter release must never lock an object in: finalizer removal is not a spec change."""
    old = finetune_manifest("j", MODEL, training={"maxSteps": 4, "seed": 2**40})  # invalid today
    old["metadata"]["finalizers"] = ["slmops.io/finalizer"]
    released = copy.deepcopy(old)
    released["metadata"]["finalizers"] = []
    assert problems_of("FineTuneJob", released, old) == []
