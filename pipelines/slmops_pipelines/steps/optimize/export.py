"""Export a model to ONNX for one target, with onnxruntime-genai's model builder.

* fp32, fp16, int4: the model builder does it all (``MatMulNBits`` for int4, with the
  target's block size and algorithm);
* int8: the model builder has no int8 (and its int8 path in other releases fails with
  ``KeyError: Precision.INT8``), so we build fp32 and quantize with onnxruntime's quantizers:
  block-wise weight-only int8 (``MatMulNBits`` with 8 bits, the default: as accurate as fp32
  on the demo, 2.8x its decode speed) or dynamic int8 (``MatMulInteger``);
* hqq and gptq int4: fp32 from the builder, then onnxruntime's ``MatMulNBitsQuantizer`` with
  HQQ or GPTQ (calibrated on the job's rows); hqq only for GPU providers (see the spec).

For rtn int4 the output layer is int4 by default, sharing its weights with the (int4)
embedding table: 100% on the demo like the int8 head, at 19% more decode tokens/s and 14%
less size; ``lmHeadInt8: true`` keeps the int8 head (the builder's ``rtn_last``), which an
earlier adapter needed (all-int4 lost it 4 points).  Where adapters stay separate, the layers
take a smaller block than a merged target's (specs/providers.py) but the output layer keeps the
merged one: it is quantized anew from the source weights (steps/optimize/output_layer.py).

The builder runs in a subprocess: it is memory hungry and edits ``sys.path`` on import.
Every target is written to ``<name>.partial`` and renamed when complete, so a crash never
leaves a folder that looks finished.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slmops_pipelines.errors import InputError, JobError
from slmops_pipelines.specs.optimize import OptimizeTarget
from slmops_pipelines.specs.providers import PROVIDERS
from slmops_pipelines.steps.optimize.fuse import LoraGroup
from slmops_pipelines.steps.optimize.session import bake_session_options

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
    precision = target.recipe.builder_precision  # fp32 where a quantizer's post-pass follows
    extra: dict[str, str] = {}
    if template_adapter is not None:
        extra["adapter_path"] = str(template_adapter)
        if lora_nodes:  # LoRA weights stay float, so that adapters can replace them
            extra["int4_nodes_to_exclude"] = ",".join(lora_nodes)
    if precision == "int4":
        extra["int4_block_size"] = str(target.int4_block_size)
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
        provider.builder_ep,
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


class _CalibrationRows:
    """Token rows fed to the fp32 graph with an empty KV cache (the prompt is the whole context).

    An onnxruntime ``CalibrationDataReader`` (``get_next``) that is also iterable, which is what
    GPTQ's data loader walks.
    """

    def __init__(self, model_path: Path, rows: list[list[int]]) -> None:
        import onnx

        graph = onnx.load(str(model_path), load_external_data=False).graph
        self.past = {
            i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in graph.input
            if i.name.startswith("past_key_values")
        }
        self.rows = rows
        self._next = iter(rows)

    def _feed(self, ids: list[int]) -> dict:
        import numpy as np

        feed = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        }
        for name, shape in self.past.items():
            feed[name] = np.zeros((1, shape[1], 0, shape[3]), dtype=np.float32)
        return feed

    def get_next(self) -> dict | None:
        ids = next(self._next, None)
        return None if ids is None else self._feed(ids)

    def __iter__(self):
        return (self._feed(ids) for ids in self.rows)


def _quantize_int8_static(folder: Path, calibration: list[list[int]]) -> None:
    """Static int8 (QDQ): activation ranges measured by running the fp32 graph on calibration rows."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    source = folder / "model.onnx"
    staged = folder / "model.static.onnx"
    quantize_static(
        source,
        staged,
        _CalibrationRows(source, calibration),
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
    folder: Path,
    *,
    bits: int,
    block_size: int,
    algo_config=None,
    exclude: list[str] | None = None,
    include: list[str] | None = None,
) -> None:
    """Weight-only quantization of MatMuls to ``MatMulNBits`` (int4 or int8), in place."""
    import onnx

    path = folder / "model.onnx"
    model = onnx.load(str(path))  # with its external weights
    kwargs = {"algo_config": algo_config} if algo_config is not None else {}
    quantizer = _quantizer_class()(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=4,
        nodes_to_exclude=exclude or [],
        nodes_to_include=include,
        op_types_to_quantize=("MatMul",),
        **kwargs,
    )
    quantizer.process()
    _save_in_place(folder, quantizer.model.model)


def _rewrite_graph(
    folder: Path, *, fuse: bool, prune: bool, output_layer: tuple[Path, int] | None = None
) -> list[LoraGroup]:
    """The builder's graph, mended and made faster: where ``output_layer`` (the source model's
    folder, a block size), the int4 output layer quantized anew at that block size
    (steps/optimize/output_layer.py); tied int4 embeddings that read padded blocks
    (steps/optimize/embeddings.py); where ``fuse``, projections that read one input as one
    kernel call each, and so their LoRA branches (steps/optimize/fuse.py); where ``prune``, the
    output layer for each row's last real token only (steps/optimize/logits.py).  Returns the
    LoRA groups, the layout the adapter files take."""
    import onnx

    from slmops_pipelines.steps.optimize.embeddings import unpad_shared_embeddings
    from slmops_pipelines.steps.optimize.fuse import fuse_lora, fuse_projections, pack_attention
    from slmops_pipelines.steps.optimize.logits import prune_prefill_logits
    from slmops_pipelines.steps.optimize.output_layer import requantize_from_source

    path = folder / "model.onnx"
    if not fuse and output_layer is None:  # the graph alone: the weights stay in their file, untouched
        graph_only = onnx.load(str(path), load_external_data=False)
        changed = [unpad_shared_embeddings(graph_only), prune and prune_prefill_logits(graph_only)]
        if any(changed):
            onnx.save_model(graph_only, str(path))
        return []
    model = onnx.load(str(path))  # with its external weights
    requantized = output_layer is not None and requantize_from_source(model, *output_layer)
    unpadded = unpad_shared_embeddings(model)
    fused = fuse and fuse_projections(model)
    groups = fuse_lora(model) if fuse else []
    packed = fuse and pack_attention(model)
    pruned = prune and prune_prefill_logits(model)
    if requantized or unpadded or fused or groups or packed or pruned:
        _save_in_place(folder, model)
    return groups


def _quantizer_class():
    """onnxruntime's MatMulNBitsQuantizer, with nodes_to_exclude honoured by GPTQ too.

    Its GPTQ path quantizes every MatMul it finds, ignoring nodes_to_exclude (which its RTN path
    honours by marking them "fp32"): LoRA inputs of a separate-adapter target and an int8 output
    layer would be quantized to int4 with it.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    class Quantizer(MatMulNBitsQuantizer):
        def _generate_q4_node_config(self):
            config = super()._generate_q4_node_config()
            config.update(dict.fromkeys(self.nodes_to_exclude, "fp32"))
            return config

    return Quantizer


def _save_in_place(folder: Path, model) -> None:
    """Write ``model`` as folder/model.onnx with its weights in model.onnx.data."""
    import onnx

    path = folder / "model.onnx"
    _int8_activations(model)
    for old in (path, folder / "model.onnx.data"):
        old.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=1024,
    )


def _int8_activations(model) -> None:
    """Give every MatMulNBits accuracy_level 4 (int8 activations): CPU's fast kernels.

    onnxruntime's HQQ quantizer writes none, and without it the CPU kernel has no fast path at
    all.  (HQQ's float zero points keep it on the slow path even so: 5 tokens/s against 130
    for RTN on the demo, which is why CPU targets refuse hqq; see specs.providers.HQQ_ON_CPU.)
    """
    import onnx

    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        levels = [a for a in node.attribute if a.name == "accuracy_level"]
        if levels:
            levels[0].i = 4
        else:
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", 4))


def _rewrite_external_data_name(model_path: Path, old: str, new: str) -> None:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save(model, str(model_path))


LM_HEAD = "/lm_head/MatMul"


def _quantize_int4_hqq(folder: Path, target: OptimizeTarget, exclude: list[str]) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

    config = HQQWeightOnlyQuantConfig(block_size=target.int4_block_size, bits=4)
    _quantize_int4_with(folder, target, exclude, config)


def _quantize_int4_gptq(
    folder: Path, target: OptimizeTarget, exclude: list[str], calibration: list[list[int]]
) -> None:
    """GPTQ (Frantar et al., 2022): each weight's rounding error corrected on the job's own rows."""
    from onnxruntime.quantization.matmul_nbits_quantizer import GPTQWeightOnlyQuantConfig

    rows = _CalibrationRows(folder / "model.onnx", calibration[: target.quantization.calibration_samples])
    config = GPTQWeightOnlyQuantConfig(calibration_data_reader=rows, op_types_to_quantize=("MatMul",))
    # Its progress bar is print()ed, carriage returns and all: kept out of the job's output.
    with contextlib.redirect_stdout(io.StringIO()):
        _quantize_int4_with(folder, target, exclude, config)


def _quantize_int4_with(folder: Path, target: OptimizeTarget, exclude: list[str], config) -> None:
    """int4 by ``config``'s algorithm; then, with lmHeadInt8, the output layer on its own in int8."""
    block = target.int4_block_size
    head = [LM_HEAD] if target.quantization.lm_head_int8 else []
    _quantize_nbits(folder, bits=4, block_size=block, algo_config=config, exclude=exclude + head)
    if head:
        _quantize_nbits(folder, bits=8, block_size=block, include=head)


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


def _needs(calibration: list[list[int]] | None, target: OptimizeTarget) -> list[list[int]]:
    if not calibration:
        raise InputError(
            f"target {target.name!r}: it is calibrated on token rows (a fineTuneJobRef source or "
            "evaluation.dataset), and there are none",
            field="targets",
        )
    return calibration


def _post_pass(
    folder: Path, target: OptimizeTarget, lora_nodes: list[str], calibration: list[list[int]] | None
) -> None:
    """The quantizer the provider table names for this target, over the builder's graph."""
    q = target.quantization
    passes: dict[str, Callable[[], None]] = {
        "none": lambda: None,
        "int8-nbits": lambda: _quantize_nbits(folder, bits=8, block_size=32, exclude=lora_nodes or None),
        "int8-dynamic": lambda: _quantize_int8_dynamic(folder),
        "int8-static": lambda: _quantize_int8_static(
            folder, _needs(calibration, target)[: q.calibration_samples]
        ),
        "int4-hqq": lambda: _quantize_int4_hqq(folder, target, lora_nodes),
        "int4-gptq": lambda: _quantize_int4_gptq(folder, target, lora_nodes, _needs(calibration, target)),
    }
    passes[target.recipe.post_pass]()


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
    # One private scratch folder per build: the builder empties its cache folder when it
    # finishes, which would pull it from under a target built at the same time (a ParallelFor
    # on one node, or another namespace's pod on a shared cache volume, where pids repeat).
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=cache_dir))
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
    _post_pass(partial, target, lora_nodes or [], calibration)
    provider = PROVIDERS[target.provider]
    from slmops_pipelines.steps.optimize.output_layer import output_layer_block

    output_block = output_layer_block(target)
    groups = _rewrite_graph(
        partial,
        fuse=provider.fuse_projections,
        prune=provider.prune_prefill_logits,
        output_layer=(model_dir, output_block) if output_block else None,
    )
    if adapters:
        from slmops_pipelines.steps.optimize.adapters import write_onnx_adapter

        for name, path in adapters.items():
            out = partial / f"{name}.onnx_adapter"
            write_onnx_adapter(path, out, graph_inputs, field="source", groups=groups)
    shutil.rmtree(out_root / "work", ignore_errors=True)  # the template adapter, if one was made
    fix_tokenizer_config(partial)
    bake_session_options(partial, target.runtime)
    if target.provider == "OpenVINOExecutionProvider":
        set_genai_provider(partial, PROVIDERS[target.provider].genai_name)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return ExportedModel(target=target.name, path=final, size_bytes=onnx_size(final), builder_command=command)
