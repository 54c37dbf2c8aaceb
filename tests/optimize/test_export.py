"""Export per target with the model builder and onnxruntime's quantizers; the result runs in genai."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from slmops_pipelines.specs.optimize import OptimizeTarget
from slmops_pipelines.steps.optimize.export import export_target


def target(name: str, provider: str, precision: str, **quantization) -> OptimizeTarget:
    return OptimizeTarget.model_validate(
        {"name": name, "provider": provider, "precision": precision, "quantization": quantization}
    )


def op_types(folder: Path) -> set[str]:
    return {
        node.op_type for node in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node
    }


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("targets")


@pytest.mark.parametrize(
    ("t", "expected_op"),
    [
        (target("cpu-int4", "CPUExecutionProvider", "int4", int4BlockSize=32), "MatMulNBits"),
        (target("cpu-int4-hqq", "CPUExecutionProvider", "int4", int4Algorithm="hqq"), "MatMulNBits"),
        (target("cpu-int8", "CPUExecutionProvider", "int8"), "MatMulNBits"),
        (target("cpu-int8-dyn", "CPUExecutionProvider", "int8", int8Mode="dynamic"), "MatMulInteger"),
        (target("cpu-fp32", "CPUExecutionProvider", "fp32"), "MatMul"),
    ],
    ids=lambda v: v.name if isinstance(v, OptimizeTarget) else v,
)
def test_targets_build_and_run_in_genai(t, expected_op, tiny_model, out, isolated_cache):
    import onnxruntime_genai as og

    exported = export_target(t, tiny_model, out, cache_dir=isolated_cache / "builder")
    assert exported.path == out / t.name and not (out / f"{t.name}.partial").exists()
    assert expected_op in op_types(exported.path)
    assert (exported.path / "genai_config.json").exists() and exported.size_bytes > 0
    model = og.Model(str(exported.path))
    tokenizer = og.Tokenizer(model)  # the tokenizer class fix-up makes genai accept it
    assert len(tokenizer.encode("calm")) >= 1


def test_a_gpu_target_builds_without_a_gpu(tiny_model, out, isolated_cache):
    exported = export_target(
        target("cuda-fp16", "CUDAExecutionProvider", "fp16"), tiny_model, out, cache_dir=isolated_cache / "b"
    )
    config = (exported.path / "genai_config.json").read_text()
    assert "cuda" in config
