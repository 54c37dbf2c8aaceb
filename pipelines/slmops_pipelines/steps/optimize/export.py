"""Export a model to ONNX for one target, with onnxruntime-genai's model builder.

* fp32, fp16, int4: the model builder does it all (``MatMulNBits`` for int4, with the
  target's block size and algorithm);
* int8: the model builder has no int8 (and its int8 path in other releases fails with
  ``KeyError: Precision.INT8``), so we build fp32 and quantize with onnxruntime's quantizers:
  block-wise weight-only int8 (``MatMulNBits`` with 8 bits, the default: as accurate as fp32
  on the demo, 2.8x its decode speed) or dynamic int8 (``MatMulInteger``);
* hqq int4: fp32 from the builder, then onnxruntime's ``MatMulNBitsQuantizer`` with HQQ.

For rtn int4 the output layer stays int8 by default (the builder's ``rtn_last``): on the
demo, all-int4 lost 4 points of accuracy, int4 with an int8 head lost none.

The builder runs in a subprocess: it is memory hungry and edits ``sys.path`` on import.
Every target is written to ``<name>.partial`` and renamed when complete, so a crash never
leaves a folder that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from slmops_pipelines.errors import InputError, JobError
from slmops_pipelines.specs.optimize import OptimizeTarget
from slmops_pipelines.steps.optimize.providers import PROVIDERS

# transformers 5 writes this tokenizer class, which onnxruntime-genai's tokenizer does not know;
# the tokenizer.json itself is the same fast tokenizer, that GPT2Tokenizer loads.
_GENAI_TOKENIZER_CLASS = "GPT2Tokenizer"


@dataclass
class ExportedModel:
    target: str
    path: Path
    size_bytes: int
    builder_command: list[str]


def onnx_size(folder: Path) -> int:
    """Bytes of the ONNX graph and its external weights (what a deployment ships)."""
    return sum(
        p.stat().st_size
        for p in folder.iterdir()
        if p.is_file() and (p.suffix in (".onnx", ".data") or p.name.endswith(".onnx.data"))
    )


def builder_command(
    target: OptimizeTarget,
    model_dir: Path,
    out_dir: Path,
    cache_dir: Path,
    *,
    template_adapter: Path | None = None,
    lora_nodes: list[str] | None = None,
) -> list[str]:
    provider = PROVIDERS[target.provider]
    precision = target.precision
    extra: dict[str, str] = {}
    if template_adapter is not None:
        extra["adapter_path"] = str(template_adapter)
        if lora_nodes:  # LoRA weights stay float, so that adapters can replace them
            extra["int4_nodes_to_exclude"] = ",".join(lora_nodes)
    if precision in ("int8",) or (precision == "int4" and target.quantization.int4_algorithm == "hqq"):
        precision = "fp32"  # quantized afterwards by onnxruntime's quantizers
    elif precision == "int4":
        extra["int4_block_size"] = str(target.quantization.int4_block_size)
        extra["int4_algo_config"] = "rtn_last" if target.quantization.lm_head_int8 else "rtn"
        if provider.builder_ep == "cpu":
            extra["int4_accuracy_level"] = "4"  # int8 activations: the fast CPU kernels
    command = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(model_dir),
        "-o",
        str(out_dir),
        "-p",
        precision,
        "-e",
        provider.builder_ep or "cpu",
        "-c",
        str(cache_dir),
    ]
    if extra:
        command += ["--extra_options", *(f"{k}={v}" for k, v in extra.items())]
    return command


def _run_builder(command: list[str], log_path: Path, target: str) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with log_path.open("w") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        lines = log_path.read_text(errors="replace").strip().splitlines()
        raise JobError(
            f"target {target!r}: the ONNX model builder failed: {lines[-1] if lines else 'no output'} (log: {log_path})",
            field="targets",
            reason="ExportFailed",
        )


def _quantize_int8_dynamic(folder: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = folder / "model.onnx"
    staged = folder / "model.int8.onnx"
    quantize_dynamic(
        source,
        staged,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        use_external_data_format=True,
        extra_options={"MatMulConstBOnly": True},
    )
    _replace_model(folder, staged)


def _quantize_int8_static(folder: Path, calibration: list[list[int]]) -> None:
    """Static int8 (QDQ): activation ranges measured by running the fp32 graph on calibration rows."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    source = folder / "model.onnx"
    graph = onnx.load(str(source), load_external_data=False).graph
    past = {
        i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in graph.input
        if i.name.startswith("past_key_values")
    }

    class Rows(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(calibration)

        def get_next(self):
            ids = next(self.rows, None)
            if ids is None:
                return None
            feed = {
                "input_ids": np.array([ids], dtype=np.int64),
                "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            }
            for name, shape in past.items():  # an empty KV cache: the prompt is the whole context
                feed[name] = np.zeros((1, shape[1], 0, shape[3]), dtype=np.float32)
            return feed

    staged = folder / "model.static.onnx"
    quantize_static(
        source,
        staged,
        Rows(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        use_external_data_format=True,
        extra_options={"MatMulConstBOnly": True},
    )
    _replace_model(folder, staged)


def _replace_model(folder: Path, staged: Path) -> None:
    """Put a quantizer's output in place of model.onnx (and its external data file)."""
    source = folder / "model.onnx"
    for old in (source, folder / "model.onnx.data"):
        old.unlink(missing_ok=True)
    staged.rename(source)
    data = staged.with_name(staged.name + ".data")
    if data.exists():
        _rewrite_external_data_name(source, data.name, "model.onnx.data")
        data.rename(folder / "model.onnx.data")


def _quantize_nbits(
    folder: Path, *, bits: int, block_size: int, algo_config=None, exclude: list[str] | None = None
) -> None:
    """Weight-only quantization of every MatMul to ``MatMulNBits`` (int4 or int8), in place."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    path = folder / "model.onnx"
    model = onnx.load(str(path))  # with its external weights
    kwargs = {"algo_config": algo_config} if algo_config is not None else {}
    if exclude:
        kwargs["nodes_to_exclude"] = exclude
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=4,
        op_types_to_quantize=("MatMul",),
        **kwargs,
    )
    quantizer.process()
    for old in (path, folder / "model.onnx.data"):
        old.unlink(missing_ok=True)
    onnx.save_model(
        quantizer.model.model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=1024,
    )


def _rewrite_external_data_name(model_path: Path, old: str, new: str) -> None:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save(model, str(model_path))


def _quantize_int4_hqq(folder: Path, block_size: int, exclude: list[str] | None) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

    config = HQQWeightOnlyQuantConfig(block_size=block_size, bits=4)
    _quantize_nbits(folder, bits=4, block_size=block_size, algo_config=config, exclude=exclude)


def fix_tokenizer_config(folder: Path) -> None:
    config_path = folder / "tokenizer_config.json"
    if not config_path.exists():
        return
    config = json.loads(config_path.read_text())
    if config.get("tokenizer_class") in (None, "TokenizersBackend", "PreTrainedTokenizerFast"):
        config["tokenizer_class"] = _GENAI_TOKENIZER_CLASS
        config_path.write_text(json.dumps(config, indent=2))


def set_genai_provider(folder: Path, genai_provider: str) -> None:
    """Name the runtime provider in genai_config.json (the CPU graph runs on OpenVINO this way)."""
    path = folder / "genai_config.json"
    config = json.loads(path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {}).setdefault("provider_options", [])
    if not any(genai_provider in entry for entry in options):
        options.append({genai_provider: {}})
    path.write_text(json.dumps(config, indent=2))


def export_target(
    target: OptimizeTarget,
    model_dir: Path,
    out_root: Path,
    *,
    cache_dir: Path,
    adapters: dict[str, Path] | None = None,
    calibration: list[list[int]] | None = None,
) -> ExportedModel:
    """Build ``out_root/<target.name>`` (an onnxruntime-genai model folder) from a HF model folder.

    With ``adapters`` (name -> PEFT folder) the model is the base with swappable LoRA inputs,
    and each adapter is written next to it as ``<name>.onnx_adapter``.
    """
    final = out_root / target.name
    partial = out_root / f"{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    logs = out_root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    template, lora_nodes = None, None
    if adapters:
        from slmops_pipelines.steps.optimize.adapters import lora_node_names, prepare_template

        template, modules = prepare_template(model_dir, adapters, out_root / "work", field="source")
        layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
        lora_nodes = lora_node_names(layers, modules)
    # One scratch folder per build: the builder empties its cache folder when it finishes, which
    # would pull it from under a target built at the same time (a ParallelFor on one node).
    scratch = cache_dir / f"{target.name}.{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    command = builder_command(
        target, model_dir, partial, scratch, template_adapter=template, lora_nodes=lora_nodes
    )
    try:
        _run_builder(command, logs / f"build-{target.name}.log", target.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    graph_inputs = {}
    if adapters:
        from slmops_pipelines.steps.optimize.adapters import extract_lora_inputs

        graph_inputs = extract_lora_inputs(partial / "model.onnx")
    if target.precision == "int8" and target.quantization.int8_mode == "dynamic":
        _quantize_int8_dynamic(partial)
    elif target.precision == "int8" and target.quantization.int8_mode == "static":
        if not calibration:
            raise InputError(
                f"target {target.name!r}: int8Mode static needs calibration rows (a fineTuneJobRef source or "
                "evaluation.dataset)",
                field="targets",
            )
        _quantize_int8_static(partial, calibration[: target.quantization.calibration_samples])
    elif target.precision == "int8":
        _quantize_nbits(partial, bits=8, block_size=32, exclude=lora_nodes)
    elif target.precision == "int4" and target.quantization.int4_algorithm == "hqq":
        _quantize_int4_hqq(partial, target.quantization.int4_block_size, lora_nodes)
    if adapters:
        from slmops_pipelines.steps.optimize.adapters import write_onnx_adapter

        for name, path in adapters.items():
            write_onnx_adapter(path, partial / f"{name}.onnx_adapter", graph_inputs, field="source")
    shutil.rmtree(out_root / "work", ignore_errors=True)  # the template adapter, if one was made
    fix_tokenizer_config(partial)
    if target.provider == "OpenVINOExecutionProvider":
        set_genai_provider(partial, PROVIDERS[target.provider].genai_name)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return ExportedModel(target=target.name, path=final, size_bytes=onnx_size(final), builder_command=command)
