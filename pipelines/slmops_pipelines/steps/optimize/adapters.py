"""One base model, several LoRA adapters chosen per request (onnxruntime-genai's adapter format).

The model builder, given ``adapter_path``, writes every adapted linear layer as
``MatMul(W) + MatMul(MatMul(x, A), scaling * B)`` with A and B as constant initializers.  To
make the adapter swappable we post-process the graph as Olive's ``ExtractAdapters`` does:

1. build with a *template* adapter that adapts the union of the modules any adapter uses
   (its weights are thrown away); for int4, the LoRA MatMuls are excluded from quantization
   so that their weights stay float and replaceable;
2. turn every LoRA initializer into a graph input whose rank is symbolic (``lora_r``), with a
   rank-0 default: no active adapter means exactly the base model;
3. write each PEFT adapter as ``<name>.onnx_adapter`` with ``onnxruntime.AdapterFormat``:
   ``lora_A`` transposed to [in, r], ``lora_B`` transposed and scaled (alpha/r, or
   alpha/sqrt(r) with rsLoRA) to [r, out], named after the graph inputs.

At run time: ``og.Adapters(model).load(path, name)`` and ``generator.set_active_adapter``
before the prompt is appended.  Only plain LoRA on Llama-style modules is supported (DoRA's
magnitude vectors have no place in this format): anything else is refused with a clear error.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slmops_pipelines.errors import InputError
from slmops_pipelines.steps.optimize.fuse import LoraGroup

ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
MLP = {"gate_proj", "up_proj", "down_proj"}
_LORA_INIT_RE = re.compile(r"\.lora_([AB])\.MatMul\.weight$")
_PEFT_KEY_RE = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$"
)


def read_adapter_config(adapter_dir: Path, field: str) -> dict:
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        raise InputError(
            f"adapter {adapter_dir} is not plain LoRA (DoRA and other PEFT types cannot be kept separate); "
            "set mergeAdapter: true",
            field=field,
        )
    modules = set(config["target_modules"])
    unknown = modules - ATTENTION - MLP
    if unknown:
        raise InputError(
            f"adapter {adapter_dir} adapts {sorted(unknown)}, which the ONNX adapter format here does not know",
            field=field,
        )
    return config


def lora_node_names(num_layers: int, modules: set[str]) -> list[str]:
    names = []
    for layer in range(num_layers):
        for module in sorted(modules):
            block = "attn" if module in ATTENTION else "mlp"
            names += [f"/model/layers.{layer}/{block}/{module}/lora_{ab}/MatMul" for ab in ("A", "B")]
    return names


def make_template_adapter(base_dir: Path, modules: set[str], out_dir: Path) -> Path:
    """A rank-1 adapter over ``modules``: only its structure matters to the builder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=1, lora_alpha=1, target_modules=sorted(modules), task_type="CAUSAL_LM")
    )
    peft_model.save_pretrained(out_dir)
    return out_dir


def extract_lora_inputs(model_path: Path) -> dict[str, tuple[list[int], int]]:
    """Turn the LoRA initializers into graph inputs with symbolic rank; return name -> (shape, rank dim)."""
    import onnx_ir as ir

    model = ir.load(str(model_path))
    graph = model.graph
    found = {n: m for n in graph.initializers if (m := _LORA_INIT_RE.search(n))}
    if not found:
        raise RuntimeError("the exported graph has no float LoRA weights to extract")
    shapes = {}
    for name, match in found.items():
        value = graph.initializers[name]
        shape, dtype = list(value.const_value.shape), value.const_value.dtype
        rank_dim = 1 if match.group(1) == "A" else 0  # A: [in, r], B: [r, out]
        default = list(shape)
        default[rank_dim] = 0
        value.const_value = ir.Tensor(np.zeros(default, dtype=dtype.numpy()), name=name)
        symbolic = list(shape)
        symbolic[rank_dim] = ir.SymbolicDim("lora_r")
        value.shape = ir.Shape(symbolic)
        value.type = ir.TensorType(dtype)
        graph.inputs.append(value)
        shapes[name] = (shape, rank_dim)
    ir.external_data.load_to_model(model)  # read the weights before their file is replaced
    data = model_path.with_name(model_path.name + ".data")
    data.unlink(missing_ok=True)
    ir.save(model, str(model_path), external_data=data.name, size_threshold_bytes=1024)
    return shapes


def _scaling(config: dict, module_path: str) -> float:
    rank, alpha = config["r"], config["lora_alpha"]
    for pattern, value in (config.get("rank_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module_path):
            rank = value
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module_path):
            alpha = value
    return alpha / (rank**0.5) if config.get("use_rslora") else alpha / rank


def write_onnx_adapter(
    adapter_dir: Path,
    out_file: Path,
    graph_inputs: dict,
    *,
    field: str,
    groups: Sequence[LoraGroup] = (),
) -> int:
    """Convert a PEFT adapter to ``.onnx_adapter``; return the number of parameters written.

    ``groups``: the LoRA branches the graph fused (steps/optimize/fuse.py), written as their
    fused inputs: the members' A stacked, their B in stacked column blocks, a member this
    adapter does not adapt as zeros.
    """
    import onnxruntime as ort
    from safetensors.numpy import load_file

    config = read_adapter_config(adapter_dir, field)
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    arrays: dict[str, np.ndarray] = {}
    for key, weight in weights.items():
        match = _PEFT_KEY_RE.match(key)
        if not match:
            raise InputError(f"adapter {adapter_dir}: unexpected tensor {key}", field=field)
        layer, block, module, ab = match.groups()
        name = f"model.layers.{layer}.{'attn' if block == 'self_attn' else 'mlp'}.{module}.lora_{ab}.MatMul.weight"
        if name not in graph_inputs:
            raise InputError(
                f"adapter {adapter_dir}: {name} is not adapted in the exported model", field=field
            )
        array = weight.T.astype(np.float32)
        if ab == "B":
            array = array * _scaling(config, f"model.layers.{layer}.{block}.{module}")
        expected = graph_inputs[name][0]
        other_dim = 0 if ab == "A" else 1
        if array.shape[other_dim] != expected[other_dim]:
            raise InputError(
                f"adapter {adapter_dir} does not fit the base model: {name} has {array.shape[other_dim]} features, "
                f"the model {expected[other_dim]}",
                field=field,
            )
        arrays[name] = array
    for group in groups:
        _fuse_group(arrays, group, graph_inputs)
    params = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}
    adapter_format = ort.AdapterFormat()
    adapter_format.set_adapter_version(1)
    adapter_format.set_model_version(1)
    adapter_format.set_parameters(params)
    adapter_format.export_adapter(str(out_file))
    return len(params)


def _fuse_group(arrays: dict[str, np.ndarray], group: LoraGroup, graph_inputs: dict) -> None:
    """Replace a fused group's member arrays by the group's two (none if it adapts no member).

    The layout is fuse.LoraGroup's: A ``[members, in, r]``, B ``[blocks, r, block]``, with ``r``
    this adapter's largest rank among the members and zeros where a member has less.
    """
    if not any(a in arrays for a, _ in group.members):
        return
    features = graph_inputs[group.members[0][0]][0][0]
    pairs = [(arrays.pop(a, None), arrays.pop(b, None)) for a, b in group.members]
    rank = max(a.shape[1] for a, _ in pairs if a is not None)
    fused_a = np.zeros((len(pairs), features, rank), np.float32)
    fused_b = np.zeros((len(group.picks), rank, group.block), np.float32)
    first_block = {member: group.picks.index(member) for member in set(group.picks)}
    for member, (a, b) in enumerate(pairs):
        if a is None or b is None:
            continue  # not adapted: zeros
        fused_a[member, :, : a.shape[1]] = a
    for index, member in enumerate(group.picks):
        a, b = pairs[member]
        if b is None:
            continue
        start = (index - first_block[member]) * group.block
        fused_b[index, : b.shape[0], :] = b[:, start : start + group.block]
    arrays[group.a], arrays[group.b] = fused_a, fused_b


def union_of_modules(adapters: dict[str, Path], field: str) -> set[str]:
    modules: set[str] = set()
    for path in adapters.values():
        modules |= set(read_adapter_config(path, field)["target_modules"])
    return modules


def prepare_template(
    base_dir: Path, adapters: dict[str, Path], work: Path, field: str
) -> tuple[Path, set[str]]:
    modules = union_of_modules(adapters, field)
    first = next(iter(adapters.values()))
    if set(read_adapter_config(first, field)["target_modules"]) == modules:
        return first, modules
    template = work / "template-adapter"
    shutil.rmtree(template, ignore_errors=True)
    return make_template_adapter(base_dir, modules, template), modules
