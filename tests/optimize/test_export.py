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


CALIBRATION = [[1, 5, 9, 13, 17, 21, 25, 29], [2, 4, 6, 8, 10, 12], [30, 31, 32, 33, 34, 35, 36]]


def matmul_nbits(folder: Path) -> dict[str, dict[str, int]]:
    """Each MatMulNBits node's integer attributes (bits, block_size, accuracy_level...), by name."""
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return {
        node.name: {a.name: a.i for a in node.attribute}
        for node in graph.node
        if node.op_type == "MatMulNBits"
    }


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("targets")


@pytest.mark.parametrize(
    ("t", "expected_op"),
    [
        (target("cpu-int4", "CPUExecutionProvider", "int4", int4BlockSize=32), "MatMulNBits"),
        (target("cpu-int4-gptq", "CPUExecutionProvider", "int4", int4Algorithm="gptq"), "MatMulNBits"),
        (target("cpu-int8", "CPUExecutionProvider", "int8"), "MatMulNBits"),
        (target("cpu-int8-dyn", "CPUExecutionProvider", "int8", int8Mode="dynamic"), "MatMulInteger"),
        (target("cpu-fp32", "CPUExecutionProvider", "fp32"), "MatMul"),
    ],
    ids=lambda v: v.name if isinstance(v, OptimizeTarget) else v,
)
def test_targets_build_and_run_in_genai(t, expected_op, tiny_model, out, isolated_cache):
    import onnxruntime_genai as og

    exported = export_target(
        t, tiny_model, out, cache_dir=isolated_cache / "builder", calibration=CALIBRATION
    )
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


@pytest.mark.parametrize(
    ("algorithm", "provider"),
    [("rtn", "CPUExecutionProvider"), ("gptq", "CPUExecutionProvider"), ("hqq", "CUDAExecutionProvider")],
)
def test_int4_targets_use_the_fast_kernels_and_keep_an_int8_output_layer_when_asked(
    algorithm, provider, tiny_model, tmp_path, isolated_cache
):
    """accuracy_level 4 (int8 activations) on every node: without it the CPU dequantizes per call."""
    t = target(f"int4-{algorithm}", provider, "int4", int4Algorithm=algorithm, lmHeadInt8=True)
    exported = export_target(t, tiny_model, tmp_path, cache_dir=isolated_cache / "b", calibration=CALIBRATION)
    nodes = matmul_nbits(exported.path)
    assert nodes and all(attrs.get("accuracy_level") == 4 for attrs in nodes.values()), nodes
    head = [attrs for name, attrs in nodes.items() if "lm_head" in name]
    assert [attrs["bits"] for attrs in head] == [8]
    assert {attrs["bits"] for name, attrs in nodes.items() if "lm_head" not in name} == {4}


def test_the_default_int4_head_shares_the_embedding_table(tiny_model, tmp_path, isolated_cache):
    """int4 everywhere by default: the output layer's weights are the (int4) embedding table's."""
    exported = export_target(
        target("int4", "CPUExecutionProvider", "int4"), tiny_model, tmp_path, cache_dir=isolated_cache / "b"
    )
    assert {attrs["bits"] for attrs in matmul_nbits(exported.path).values()} == {4}
    assert "GatherBlockQuantized" in op_types(exported.path)  # the embedding reads the shared int4 table
    # The CPU's measured block size (the provider table), where the spec names none.
    assert {attrs["block_size"] for attrs in matmul_nbits(exported.path).values()} == {64}
    # Each layer's gate and up projections are one kernel (steps/optimize/fuse.py).
    names = list(matmul_nbits(exported.path))
    assert any("gate_up_proj" in n for n in names) and not any("/gate_proj/" in n for n in names)


def test_hqq_is_refused_on_the_cpu_with_the_reason():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="float zero points"):
        target("cpu-int4-hqq", "CPUExecutionProvider", "int4", int4Algorithm="hqq")


def test_gptq_without_calibration_rows_is_refused_naming_the_target(tiny_model, tmp_path, isolated_cache):
    from slmops_pipelines.errors import InputError

    t = target("int4-gptq", "CPUExecutionProvider", "int4", int4Algorithm="gptq")
    with pytest.raises(InputError, match=r"'int4-gptq'.*calibrated"):
        export_target(t, tiny_model, tmp_path, cache_dir=isolated_cache / "b", calibration=None)
    assert not (tmp_path / "int4-gptq").exists()


def test_targets_ship_their_session_settings(tiny_model, tmp_path, isolated_cache):
    """Spinning and the optimization level travel in genai_config.json; a thread count only when asked.

    Without ``runtime.threads`` the folder names none: whoever loads it sizes the pool where it
    runs (slmops' loaders: the CPUs they may use), never from the machine that built it.
    """
    import json

    import onnxruntime_genai as og

    from slmops_pipelines.steps.cpus import usable_cpus
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

    default = export_target(
        target("cpu-int4", "CPUExecutionProvider", "int4"),
        tiny_model,
        tmp_path,
        cache_dir=isolated_cache / "b",
    )
    options = json.loads((default.path / "genai_config.json").read_text())["model"]["decoder"][
        "session_options"
    ]
    assert "intra_op_num_threads" not in options  # not the build machine's count
    assert options["session.intra_op.allow_spinning"] == "1"
    assert options["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert GenaiEngine(default.path).threads == usable_cpus()  # sized where it is loaded
    assert GenaiEngine(default.path, threads=1).threads == 1

    tuned = OptimizeTarget.model_validate(
        {
            "name": "cpu-int4-serving",
            "provider": "CPUExecutionProvider",
            "precision": "int4",
            "runtime": {"threads": 7, "spin": False},
        }
    )
    exported = export_target(tuned, tiny_model, tmp_path, cache_dir=isolated_cache / "b")
    options = json.loads((exported.path / "genai_config.json").read_text())["model"]["decoder"][
        "session_options"
    ]
    assert (options["intra_op_num_threads"], options["session.intra_op.allow_spinning"]) == (7, "0")
    og.Model(str(exported.path))  # onnxruntime accepts what was written
    assert GenaiEngine(exported.path).threads == 7  # the count the spec asked for


@pytest.mark.parametrize("block", [128, 256])
def test_a_block_that_does_not_divide_the_hidden_size_still_runs(block, tiny_model, tmp_path, isolated_cache):
    """The tiny model's hidden size is 64: each row of the shared int4 table is padded to one block,
    which the builder's Reshape of the embedding table did not expect (the first token failed)."""
    import numpy as np
    import onnxruntime_genai as og

    t = target(f"int4-b{block}", "CPUExecutionProvider", "int4", int4BlockSize=block)
    exported = export_target(t, tiny_model, tmp_path, cache_dir=isolated_cache / "b")
    assert "GatherBlockQuantized" in op_types(exported.path)
    model = og.Model(str(exported.path))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=12, min_length=12)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray([[1, 5, 9, 13]], dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    assert len(generator.get_sequence(0)) == 12


def test_the_graph_alone_is_mended_where_nothing_else_is_rewritten(tiny_model, tmp_path, isolated_cache):
    """A GPU target (no fusion) gets the same padded-block gather, its weights file untouched."""
    t = target("cuda-int4-b128", "CUDAExecutionProvider", "int4", int4BlockSize=128)
    exported = export_target(t, tiny_model, tmp_path, cache_dir=isolated_cache / "b")
    graph = onnx.load(str(exported.path / "model.onnx"), load_external_data=False).graph
    assert any(node.name.endswith("/Unpad") for node in graph.node)
    onnx.load(str(exported.path / "model.onnx"))  # its external weights still load
