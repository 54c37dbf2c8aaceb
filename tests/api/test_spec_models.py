"""The spec models: defaults, camelCase, and the validation errors users see."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from slmops_operator.api import FineTuneJob, OptimizeJob
from slmops_operator.api.manifests import format_loc
from slmops_pipelines.specs import FineTuneJobSpec, OptimizeJobSpec

MINIMAL = {
    "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
    "dataset": {"uri": "d.jsonl", "textTemplate": "{text}"},
}


def errors_of(model, data) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return {format_loc(e["loc"]): e["msg"] for e in info.value.errors()}


def test_defaults_are_complete_and_camel_case():
    spec = FineTuneJobSpec.model_validate(MINIMAL)
    manifest = spec.to_manifest()
    assert manifest["method"] == "lora"
    assert manifest["training"]["epochs"] == 1.0  # neither maxSteps nor epochs: one epoch
    assert manifest["training"]["learningRate"] == 1e-3
    assert manifest["resources"]["processesPerNode"] == 1
    assert "max_steps" not in manifest["training"]


def test_snake_case_is_accepted_too():
    spec = FineTuneJobSpec.model_validate({**MINIMAL, "training": {"max_steps": 3}})
    assert spec.training.max_steps == 3


@pytest.mark.parametrize(
    ("patch", "path", "words"),
    [
        ({"training": {"maxSteps": 0}}, "training.maxSteps", "greater than or equal to 1"),
        ({"training": {"maxSteps": -5}}, "training.maxSteps", "greater than or equal to 1"),
        ({"training": {"maxSteps": "many"}}, "training.maxSteps", "valid integer"),
        ({"training": {"maxStep": 3}}, "training.maxStep", "Extra inputs"),
        ({"method": "prefix-tuning"}, "method", "'lora', 'qlora', 'dora' or 'full'"),
        ({"training": {"maxSteps": 3, "epochs": 2}}, "training", "maxSteps or epochs"),
        ({"model": {"uri": "ftp://x/y"}}, "model.uri", "unsupported scheme"),
        ({"output": {"uri": "s3://bucket"}}, "output.uri", "names a bucket only"),
        (
            {"output": {"uri": "s3://bucket/x", "credentialsSecret": "Not_A_Name"}},
            "output.credentialsSecret",
            "pattern",
        ),
        (
            {"dataset": {"uri": "d.jsonl", "trainSplit": "train[:x]", "textTemplate": "{a}"}},
            "dataset.trainSplit",
            "not a split",
        ),
        ({"dataset": {"uri": "d.jsonl"}}, "dataset", "set textTemplate"),
        (
            {"dataset": {"uri": "d.jsonl", "textTemplate": "{a}", "completionOnlyLoss": True}},
            "dataset",
            "completionOnlyLoss",
        ),
        ({"training": {"earlyStopping": {"patience": 2}}}, "training", "needs evalSteps"),
        (
            {"training": {"evalSteps": 3, "saveSteps": 4, "earlyStopping": {}}},
            "training",
            "multiple of evalSteps",
        ),
    ],
)
def test_bad_specs_name_the_field(patch, path, words):
    errors = errors_of(FineTuneJobSpec, {**MINIMAL, **patch})
    assert path in errors, errors
    assert words in errors[path]


def test_resource_requires_dns_label_names():
    body = {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "Bad_Name"},
        "spec": MINIMAL,
    }
    assert "metadata.name" in errors_of(FineTuneJob, body)


OPT = {
    "source": {"model": {"uri": "/m"}},
    "targets": [{"name": "cpu-int4", "provider": "CPUExecutionProvider", "precision": "int4"}],
}


def test_optimize_spec_accepts_a_valid_target():
    spec = OptimizeJobSpec.model_validate(OPT)
    assert spec.targets[0].quantization.int4_block_size is None  # unset: the provider's own
    assert spec.targets[0].int4_block_size == 64


def test_the_int4_block_size_is_the_providers_unless_the_spec_names_one():
    cuda = {"name": "gpu", "provider": "CUDAExecutionProvider", "precision": "int4"}
    pinned = {**OPT["targets"][0], "quantization": {"int4BlockSize": 32}}
    spec = OptimizeJobSpec.model_validate({**OPT, "targets": [cuda, pinned]})
    assert [t.int4_block_size for t in spec.targets] == [32, 32]


def test_separate_adapters_get_the_providers_finer_int4_block():
    """A block-64 base cost the demo's separate adapter 10 points where block 32 cost 3."""
    separate = {**OPT["targets"][0], "name": "cpu-int4-adapter", "mergeAdapter": False}
    pinned = {**separate, "name": "pinned", "quantization": {"int4BlockSize": 64}}
    spec = OptimizeJobSpec.model_validate({**OPT, "targets": [OPT["targets"][0], separate, pinned]})
    assert [t.int4_block_size for t in spec.targets] == [64, 32, 64]


def test_optimize_rejects_precision_the_provider_cannot_run():
    bad = {**OPT, "targets": [{"name": "trt", "provider": "TensorrtExecutionProvider", "precision": "fp32"}]}
    errors = errors_of(OptimizeJobSpec, bad)
    message = errors["targets[0]"]
    assert "target 'trt'" in message and "TensorrtExecutionProvider cannot run fp32" in message


def test_optimize_rejects_an_unknown_provider():
    bad = {**OPT, "targets": [{"name": "npu", "provider": "QNNExecutionProvider", "precision": "int4"}]}
    errors = errors_of(OptimizeJobSpec, bad)
    assert "CPUExecutionProvider" in errors["targets[0].provider"]


def test_optimize_rejects_two_sources_and_duplicate_targets():
    both = {**OPT, "source": {"model": {"uri": "/m"}, "fineTuneJobRef": {"name": "a"}}}
    assert "exactly one" in errors_of(OptimizeJobSpec, both)["source"]
    dup = {**OPT, "targets": OPT["targets"] * 2}
    assert "unique" in errors_of(OptimizeJobSpec, dup)[""]


def test_optimize_resource_round_trips():
    body = {"apiVersion": "slmops.io/v1alpha1", "kind": "OptimizeJob", "metadata": {"name": "o"}, "spec": OPT}
    job = OptimizeJob.model_validate(body)
    assert job.spec.to_manifest()["targets"][0]["provider"] == "CPUExecutionProvider"


def test_an_adapter_may_have_its_own_evaluation_data():
    from slmops_operator.api.crd import all_crds

    sql = {"uri": "/data/sql.jsonl", "promptTemplate": "{q}", "completionTemplate": "{sql}"}
    spec = OptimizeJobSpec.model_validate(
        {
            **OPT,
            "source": {
                "model": {"uri": "/m"},
                "adapters": [
                    {"name": "tone", "uri": "/a"},
                    {"name": "sql", "uri": "/b", "evaluation": {"dataset": sql}},
                ],
            },
            "targets": [{**OPT["targets"][0], "mergeAdapter": False}],
        }
    )
    tone, own = spec.source.adapters or []
    assert tone.evaluation is None  # the job's evaluation.dataset
    assert own.evaluation is not None and own.evaluation.dataset is not None
    assert own.evaluation.dataset.prompt_template == "{q}"
    assert spec.to_manifest()["source"]["adapters"][1]["evaluation"]["dataset"]["uri"] == "/data/sql.jsonl"
    crd = all_crds()["slmops.io_optimizejobs.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    item = crd["properties"]["spec"]["properties"]["source"]["properties"]["adapters"]["items"]
    dataset = item["properties"]["evaluation"]["properties"]["dataset"]
    assert "job's evaluation.dataset" in dataset["description"]
    assert dataset["required"] == ["uri"] and dataset["x-kubernetes-validations"]  # DatasetSpec's own rules
    errors = errors_of(
        OptimizeJobSpec,
        {**OPT, "source": {"model": {"uri": "/m"}, "adapter": {"uri": "/a", "evaluation": {"datset": sql}}}},
    )
    assert "source.adapter.evaluation.datset" in errors
