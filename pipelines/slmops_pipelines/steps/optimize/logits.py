"""The output layer computes the logits onnxruntime-genai samples from, and no others.

The model builder's graph multiplies every position of a prompt by the output layer
(``[batch, tokens, vocab]`` logits), and onnxruntime-genai keeps only each row's last real
token.  SmolLM2's output layer is a sixth of the model's weights, so for a 20-token prompt
that is most of the prefill's largest matrix product, thrown away; for a batch of 8 prompts
(``slmops serve``) 160 rows of it.

onnxruntime-genai (0.12.2 on) takes a graph whose ``logits`` output is declared
``[batch, 1, vocab]`` as *pruned*: it samples from that row and skips its own selection.
The builder's ``prune_lm_head`` keeps the last position of every row, which is right for one
prompt but not for a batch of prompts of different lengths: onnxruntime-genai pads shorter
prompts on the right (its attention mask is 0 on trailing pad tokens only), so their last
position is a pad.  :func:`prune_prefill_logits` keeps, per row, the last position the
attention mask marks real among the tokens of this call::

    real = ReduceSum(attention_mask[:, -tokens:], axis 1)     # [batch]: each row's real tokens
    last = GatherND(hidden, real - 1, batch_dims 1)           # [batch, hidden]
    Unsqueeze(last, 1) -> the output layer -> [batch, 1, vocab]

A decoding step (one token a row) gathers position 0: the same numbers as before.  Not for
graphs whose attention mask is static (onnxruntime-genai's graph capture on GPUs sizes it to
the whole context): the CPU's graphs only (``specs.providers``).

Perplexity reads every position's logits (``runtime.GenaiEngine.answer_nll`` feeds a pruned
model the answer one token at a time).  Pure graph surgery; nothing is measured here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FINAL_NORM = "final_norm_layernorm"  # the model builder's name for the last norm before the output layer
PREFIX = "/model/prune_prefill_logits"


def prune_prefill_logits(model: Any) -> bool:
    """Make the graph compute each row's last real token's logits only; True where it changed."""
    graph = model.graph
    inputs = {i.name for i in graph.input}
    logits = next((o for o in graph.output if o.name == "logits"), None)
    norm = next((n for n in graph.node if FINAL_NORM in n.name), None)
    if logits is None or norm is None or not {"input_ids", "attention_mask"} <= inputs:
        return False
    if any(n.name.startswith(PREFIX) for n in graph.node):
        return False  # pruned already
    hidden = norm.output[0]
    last = _gather_last_real_position(graph, hidden)
    for node in graph.node:
        if node.name.startswith(PREFIX):
            continue
        for i, name in enumerate(node.input):
            if name == hidden:
                node.input[i] = last
    dims = logits.type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_value = 1  # what onnxruntime-genai reads as pruned (Model::IsPruned)
    return True


def _gather_last_real_position(graph: Any, hidden: str) -> str:
    """Nodes that take ``hidden`` ``[batch, tokens, H]`` to ``[batch, 1, H]``: each row's last
    position whose attention mask is 1 among this call's tokens; returns the output's name."""
    import numpy as np
    from onnx import helper, numpy_helper

    p = PREFIX
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([1], np.int64), f"{p}/one"),
            numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), f"{p}/end"),
        ]
    )
    nodes = [
        # tokens in this call: input_ids' second dimension, as a 1-element start of -tokens
        helper.make_node("Shape", ["input_ids"], [f"{p}/tokens"], name=f"{p}/Shape", start=1, end=2),
        helper.make_node("Neg", [f"{p}/tokens"], [f"{p}/start"], name=f"{p}/Neg"),
        helper.make_node(
            "Slice",
            ["attention_mask", f"{p}/start", f"{p}/end", f"{p}/one"],
            [f"{p}/mask"],
            name=f"{p}/Slice",
        ),
        helper.make_node("Cast", [f"{p}/mask"], [f"{p}/mask64"], name=f"{p}/Cast", to=7),
        helper.make_node(
            "ReduceSum", [f"{p}/mask64", f"{p}/one"], [f"{p}/real"], name=f"{p}/ReduceSum", keepdims=1
        ),
        helper.make_node("Sub", [f"{p}/real", f"{p}/one"], [f"{p}/index"], name=f"{p}/Sub"),
        helper.make_node(
            "GatherND", [hidden, f"{p}/index"], [f"{p}/last"], name=f"{p}/GatherND", batch_dims=1
        ),
        helper.make_node("Unsqueeze", [f"{p}/last", f"{p}/one"], [f"{p}/output_0"], name=f"{p}/Unsqueeze"),
    ]
    # After the norm (its position in the node list keeps the graph topologically sorted).
    at = next(i for i, n in enumerate(graph.node) if hidden in n.output) + 1
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
    return f"{p}/output_0"


def has_pruned_logits(folder: Path) -> bool:
    """Whether the folder's decoder gives one row of logits per sequence (see the module's notes)."""
    import onnx

    config = json.loads((folder / "genai_config.json").read_text())
    decoder = config["model"]["decoder"]
    graph = onnx.load(str(folder / decoder["filename"]), load_external_data=False).graph
    name = decoder.get("outputs", {}).get("logits", "logits")
    output = next((o for o in graph.output if o.name == name), None)
    dims = output.type.tensor_type.shape.dim if output is not None else []
    return len(dims) == 3 and dims[1].dim_value == 1
