"""bench/optimize.py's measuring harness: every model, whatever runs it, measured the same way.

Quality (accuracy, perplexity, size) is measured once per model.  Latency is measured in
rounds that alternate between the models (``latency_rounds``): each round measures every
model once, so that a slow spell of the machine touches every model alike, and each figure is
the median over the rounds.  Engines:

* ONNX folders: ``GenaiEngine(as_shipped=True)``, which loads a folder as plain
  ``onnxruntime_genai.Model`` does (``genai_config.json`` as shipped: its thread count where
  ``runtime.threads`` wrote one, else onnxruntime's own); a second engine per folder sets the
  intra-op threads to one per usable CPU, as slmops' own loaders do and the setting at which
  engines compare at equal threads;
* PyTorch: transformers with the adapter merged (``TorchEngine``);
* peers in venvs of their own, each running the same measuring code there: GGUF files through
  llama.cpp (``bench/llamacpp_peer.py``; as shipped is llama-cpp-python's own thread count),
  OpenVINO IR folders through OpenVINO GenAI (``bench/openvino_peer.py``; as shipped is
  OpenVINO's own).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import threading
import time
from dataclasses import asdict
from pathlib import Path

from judge import PROMPT  # the task's prompt, as the judge asks it

REPO = Path(__file__).resolve().parents[1]
QUALITY = {"accuracy", "perplexity", "size"}


def eval_examples(args: argparse.Namespace, tokenizer) -> list:
    from slmops_pipelines.steps.data import Example

    rows = [json.loads(line) for line in open(args.data / "eval.jsonl") if line.strip()][: args.eval_rows]
    examples = []
    for row in rows:
        user = [{"role": "user", "content": PROMPT.format(**row)}]
        prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": row["tone"]}], tokenize=False
        )
        examples.append(
            Example(prompt_text=prompt, completion_text=full[len(prompt) :].rstrip("\n"), answer=row["tone"])
        )
    return examples


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def kv_cache_bytes(config, *, position: int, dtype_bytes: int) -> int:
    """Bytes of K and V read at one decode step at ``position`` tokens."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * position * dtype_bytes


def onnx_bytes_per_token(folder: Path) -> int:
    """Bytes of the initializers one decode step reads: all but the rows of gathered tables."""
    import onnx

    model_file = next(folder.glob("*.onnx"))
    graph = onnx.load(str(model_file), load_external_data=False).graph
    gathered = {node.input[0] for node in graph.node if node.op_type in ("Gather", "GatherBlockQuantized")}
    total = 0
    for init in graph.initializer:
        if init.name in gathered:
            continue
        external = {e.key: e.value for e in init.external_data}
        total += int(external["length"]) if "length" in external else len(init.raw_data)
    return total


def torch_bytes_per_token(model) -> int:
    """fp32 weights read per token: all parameters; a tied embedding counts once (lm_head)."""
    seen, total = set(), 0
    for param in model.parameters():
        if param.data_ptr() in seen:
            continue
        seen.add(param.data_ptr())
        total += param.numel() * param.element_size()
    embed = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight.data_ptr() == embed.data_ptr()
    return total if tied else total - embed.numel() * embed.element_size()


def copy_bandwidth(*, mb: int = 512, repeats: int = 5) -> float:
    """Bytes/s moved by a memory copy on all cores (read + written), best of ``repeats``."""
    import numpy as np

    threads = len(os.sched_getaffinity(0))
    src = [np.ones(mb * 2**20 // 8 // threads) for _ in range(threads)]
    dst = [np.empty_like(s) for s in src]
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=np.copyto, args=(d, s)) for d, s in zip(dst, src, strict=True)]
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - started
        best = max(best, 2 * sum(s.nbytes for s in src) / seconds)
    return best


def usable_cpus() -> int:
    from slmops_pipelines.steps.cpus import usable_cpus as cpus

    return cpus()


def onnx_engine(row: dict, *, threads: int | None = None):
    """``threads`` None: as shipped (plain onnxruntime_genai.Model's threads); else that many."""
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

    adapters = {"tuned": Path(row["adapter"])} if row.get("adapter") else None
    engine = GenaiEngine(Path(row["folder"]), adapters=adapters, threads=threads, as_shipped=threads is None)
    if adapters:
        engine.use_adapter("tuned")
    return engine


def torch_engine(args: argparse.Namespace, tokenizer):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from slmops_pipelines.steps.optimize.reference import TorchEngine

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(args.adapter)).merge_and_unload().eval()
    return TorchEngine(model, tokenizer), model


# A row's key naming its model file or folder -> (the args' venv attribute, the peer script).
PEERS = {"gguf": ("llamacpp_venv", "llamacpp_peer.py"), "openvino": ("openvino_venv", "openvino_peer.py")}


def peer_of(row: dict) -> str | None:
    """The peer that measures a row's model (None: this process measures it)."""
    return next((key for key in PEERS if key in row), None)


def peer_model_bytes(row: dict) -> int:
    """The bytes of a peer's weights (the GGUF file; the IR's .bin files)."""
    path = Path(row[peer_of(row) or ""])
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.glob("*.bin"))


def run_peer(
    args: argparse.Namespace, row: dict, examples: list, *, wanted: set[str], threads: int | None
) -> dict:
    """One measurement of a peer's model by its bench/*_peer.py, in the peer's venv."""
    request = {
        "examples": [asdict(e) for e in examples],
        "wanted": sorted(wanted),
        "match": "exact",
        "max_new_tokens": 8,
        "latency_runs": args.latency_runs,
        "threads": threads,
    }
    kind = peer_of(row) or ""
    venv, script = PEERS[kind]
    path = Path(row[kind]).with_suffix(".request.json")
    path.write_text(json.dumps(request))
    python = getattr(args, venv) / "bin" / "python"
    done = subprocess.run(
        [str(python), str(REPO / "bench" / script), row[kind], str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"{script} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def quality(args, row: dict, tokenizer, examples, config, torch_model=None) -> dict:
    """Accuracy, perplexity, size and the bytes one decoded token reads."""
    from slmops_pipelines.steps.optimize.measure import measure

    kv = kv_cache_bytes(config, position=48, dtype_bytes=4)  # fp32 KV cache on the CPU
    if peer_of(row):
        metrics = run_peer(args, row, examples, wanted=QUALITY, threads=usable_cpus())
        return {**_quality_of(metrics), "bytes_per_token": peer_model_bytes(row) + kv}
    if torch_model is not None:
        engine, size = (
            row["engine"],
            sum(p.numel() * p.element_size() for p in torch_model.parameters()) / 2**20,
        )
        read = torch_bytes_per_token(torch_model) + kv
    else:
        engine, size = onnx_engine(row), folder_mb(Path(row["folder"]))
        read = onnx_bytes_per_token(Path(row["folder"])) + kv
    metrics = measure(
        engine, tokenizer, examples, wanted=QUALITY, match="exact", max_new_tokens=8, size_mb=size
    )
    return {**_quality_of(metrics.to_json()), "bytes_per_token": read}


def _quality_of(metrics: dict) -> dict:
    keys = ("size_mb", "accuracy", "correct", "total", "perplexity")
    return {("rows" if k == "total" else k): metrics[k] for k in keys}


def latency_rounds(args, rows: dict[str, dict], tokenizer, examples) -> None:
    """Decode and prefill of every model, as shipped and at one thread per CPU, in alternating rounds."""
    from slmops_pipelines.steps.optimize.measure import latency_prompt_ids, measure_latency

    prompt = latency_prompt_ids(tokenizer)
    threads = usable_cpus()
    engines: dict[tuple[str, str], object] = {}
    for name, row in rows.items():
        if "folder" in row:
            engines[(name, "shipped")] = onnx_engine(row)
            engines[(name, "threads")] = onnx_engine(row, threads=threads)
        elif "engine" in row:  # PyTorch uses every CPU by default: one engine for both columns
            engines[(name, "shipped")] = engines[(name, "threads")] = row["engine"]
    samples: dict[tuple[str, str], list] = {}
    for round_ in range(args.rounds):
        print(f"-- latency round {round_ + 1}/{args.rounds}", flush=True)
        for name, row in rows.items():
            for setting in ("shipped", "threads"):
                if peer_of(row):
                    peer_threads = threads if setting == "threads" else None
                    got = run_peer(args, row, examples[:0], wanted={"latency"}, threads=peer_threads)[
                        "latency"
                    ]
                else:
                    got = asdict(measure_latency(engines[(name, setting)], prompt, runs=args.latency_runs))
                samples.setdefault((name, setting), []).append(got)
    for (name, setting), runs in samples.items():
        timed = [key for key in runs[0] if key not in ("runs", "threads")]
        med = {key: statistics.median(r[key] for r in runs) for key in timed}
        suffix = "" if setting == "shipped" else "_threads"
        rows[name][f"threads{suffix}"] = runs[0].get("threads")  # None: onnxruntime's own choice
        rows[name][f"decode_tok_s_p50{suffix}"] = med["decode_tokens_per_s_p50"]
        rows[name][f"decode_tok_s_p95{suffix}"] = 1000 / med["decode_ms_per_token_p95"]
        rows[name][f"prefill_ms_p50{suffix}"] = med["prefill_ms_p50"]
        rows[name][f"prefill_ms_p95{suffix}"] = med["prefill_ms_p95"]
    engines.clear()
    gc.collect()
