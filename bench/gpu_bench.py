"""GPU throughput of slmops' training and ONNX paths (run through ``bench/gpu.sh``).

    bench/gpu.sh                      # on a machine with an NVIDIA GPU: < 8 minutes, prints a table
    python bench/gpu_bench.py --smoke # anywhere: a tiny model on the CPU, to check the script

What it measures, on a Llama-architecture model built from a config with random weights
(1.4B parameters: Qwen2.5-1.5B's shape, hidden 1536, 28 layers, 12 heads / 2 KV heads, MLP
8960; random weights change nothing about speed):

* LoRA and QLoRA training through ``slmops run`` (the product's training step, bf16, SDPA):
  tokens/s from the job's metrics, and model FLOPs utilization against the bf16 matrix-product
  peak measured on the same GPU a moment before.  Model FLOPs per token for LoRA are
  4 x N (forward 2N, backward through frozen weights 2N, no weight gradients) plus attention
  (forward 4·L·s·d, backward 8·L·s·d at sequence length s);
* ONNX decode through onnxruntime-genai's CUDA provider, fp16 and int4 models built by an
  OptimizeJob: batch 1, a 32-token prompt, 32 new tokens, tokens/s p50.

A part whose library is missing (bitsandbytes for QLoRA; onnxruntime-genai built for CUDA) is
reported as skipped, with the reason; nothing is estimated in its place.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO), str(REPO / "pipelines"), str(REPO / "operator")]

from _measure import run_slmops  # noqa: E402

BIG = {"hidden": 1536, "layers": 28, "heads": 12, "kv_heads": 2, "mlp": 8960, "vocab": 4096}
SMOKE = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "mlp": 128, "vocab": 512}
WORDS = (
    "the model reads a prompt and writes an answer one token at a time while the trainer measures how many "
    "tokens pass through every layer of the network in each second on this accelerator"
).split()


def build_model(out: Path, shape: dict, *, dtype) -> tuple[Path, int]:
    """A random-weight Llama with a freshly trained BPE tokenizer; returns the folder and N."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny import build_tokenizer

    texts = [" ".join(random.choices(WORDS, k=64)) for _ in range(200)]
    tokenizer = build_tokenizer(texts, vocab_size=shape["vocab"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape["hidden"],
        intermediate_size=shape["mlp"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        head_dim=shape["hidden"] // shape["heads"],
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    del model
    return out, params


def write_dataset(folder: Path, *, rows: int, words: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    with open(folder / "train.jsonl", "w") as out:
        for _ in range(rows):
            out.write(json.dumps({"text": " ".join(rng.choices(WORDS, k=words))}) + "\n")
    return folder


class Budget:
    """The script's time limit: a part that would start after it is reported as skipped."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


BUDGET = Budget(450)


def slmops(job: dict, work: Path, name: str) -> dict:
    """``slmops run`` within the time budget; the job's metrics.json and its wall time."""
    try:
        measured = run_slmops(job, work=work, name=name, timeout=max(BUDGET.left(), 1))
    except TimeoutError as exc:
        raise TimeoutError(f"{name} ran past the time budget") from exc
    metrics = json.loads((Path(job["spec"]["output"]["uri"]) / "metrics.json").read_text())
    metrics["wall_s"] = measured.wall_s
    return metrics


def train_job(model: Path, data: Path, out: Path, *, method: str, args, smoke: bool) -> dict:
    return {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"gpu-{method}"},
        "spec": {
            "model": {"uri": str(model)},
            "dataset": {
                "uri": str(data),
                "trainSplit": "train",
                "evalFraction": 0.02,
                "textTemplate": "{text}",
                "maxSeqLength": args.seq_len,
            },
            "method": method,
            "lora": {"r": 16, "alpha": 32},
            "training": {
                "maxSteps": args.steps,
                "batchSize": args.batch,
                "precision": "fp32" if smoke else "bf16",
                "saveSteps": args.steps,
                "loggingSteps": max(1, args.steps // 4),
            },
            "evaluation": {"accuracy": False, "compareBase": False},
            "output": {"uri": str(out)},
        },
    }


def matmul_peak_flops() -> float | None:
    """Achieved bf16 matrix-product FLOP/s (8192^3, mean of 10 after 3 warm-ups); None on CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - started)


def flops_per_token(params: int, shape: dict, seq: int) -> float:
    return 4 * params + 12 * shape["layers"] * seq * shape["hidden"]


def measure_training(
    args, model: Path, params: int, shape: dict, work: Path, peak: float | None
) -> list[dict]:
    data = write_dataset(
        work / "data", rows=max(64, args.steps * args.batch * 2), words=int(args.seq_len * 0.9)
    )
    rows = []
    for method in ("lora", "qlora"):
        part = "LoRA training" if method == "lora" else "QLoRA training"
        reason = qlora_unavailable() if method == "qlora" else None
        if reason is None and BUDGET.left() < 60:
            reason = "the time budget is spent"
        if reason:
            rows.append({"part": part, "skipped": reason})
            continue
        try:
            metrics = slmops(
                train_job(model, data, work / f"out-{method}", method=method, args=args, smoke=args.smoke),
                work,
                f"train-{method}",
            )
        except TimeoutError as exc:
            rows.append({"part": part, "skipped": str(exc)})
            continue
        train = metrics["train"]
        tokens_per_s = train["tokens_per_second"]
        row = {
            "part": part,
            "tokens_per_s": tokens_per_s,
            "seconds_per_step": train["seconds_per_step"],
            "peak_memory_mb": train.get("peak_memory_mb"),
            "wall_s": metrics["wall_s"],
        }
        if peak:
            row["mfu"] = tokens_per_s * flops_per_token(params, shape, args.seq_len) / peak
        rows.append(row)
    return rows


def qlora_unavailable() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "needs CUDA (bitsandbytes 4-bit)"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "bitsandbytes is not installed"
    return None


def genai_cuda_unavailable() -> str | None:
    try:
        import onnxruntime_genai as og
    except ImportError:
        return "onnxruntime-genai is not installed"
    if not og.is_cuda_available():
        return "this onnxruntime-genai has no CUDA provider (install onnxruntime-genai-cuda)"
    return None


def measure_onnx(args, model: Path, work: Path) -> list[dict]:
    if args.smoke:
        targets, provider = [("cpu-int4", "CPUExecutionProvider", "int4")], "cpu"
    else:
        reason = genai_cuda_unavailable() or ("the time budget is spent" if BUDGET.left() < 90 else None)
        if reason:
            return [{"part": "ONNX decode (CUDA fp16, int4)", "skipped": reason}]
        targets = [
            ("cuda-fp16", "CUDAExecutionProvider", "fp16"),
            ("cuda-int4", "CUDAExecutionProvider", "int4"),
        ]
        provider = "cuda"
    from transformers import AutoTokenizer

    from slmops_pipelines.steps.optimize.measure import latency_prompt_ids, measure_latency
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

    out = work / "out-onnx"
    job = {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "OptimizeJob",
        "metadata": {"name": "gpu-onnx"},
        "spec": {
            "source": {"model": {"uri": str(model)}},
            "targets": [{"name": n, "provider": p, "precision": q} for n, p, q in targets],
            "evaluation": {"metrics": ["size"]},
            "output": {"uri": str(out)},
        },
    }
    try:
        metrics = slmops(job, work, "onnx")
    except TimeoutError as exc:
        return [{"part": "ONNX decode", "skipped": str(exc)}]
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = []
    for name, _provider, _precision in targets:
        engine = GenaiEngine(out / "targets" / name, provider=provider)
        latency = measure_latency(engine, latency_prompt_ids(tokenizer), runs=args.latency_runs)
        rows.append(
            {
                "part": f"ONNX decode {name}",
                "tokens_per_s": latency.decode_tokens_per_s_p50,
                "prefill_ms_p50": latency.prefill_ms_p50,
                "size_mb": metrics["targets"][name]["metrics"]["size_mb"],
            }
        )
        del engine
    return rows


def print_table(rows: list[dict]) -> None:
    print()
    print("| part | tokens/s | MFU | s/step | peak GPU MB | prefill ms p50 | size MB | note |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")

    def fmt(value, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) else ""

    for r in rows:
        print(
            f"| {r['part']} | {fmt(r.get('tokens_per_s'), '.0f')} | {fmt(r.get('mfu'), '.1%')} "
            f"| {fmt(r.get('seconds_per_step'), '.3f')} | {fmt(r.get('peak_memory_mb'), '.0f')} "
            f"| {fmt(r.get('prefill_ms_p50'), '.1f')} | {fmt(r.get('size_mb'), '.0f')} "
            f"| {('skipped: ' + r['skipped']) if r.get('skipped') else ''} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, 2 steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--latency-runs", type=int, default=None)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--budget", type=float, default=450, help="seconds; later parts are skipped past it")
    args = parser.parse_args(argv)
    global BUDGET
    BUDGET = Budget(args.budget)
    defaults = (
        {"steps": 2, "batch": 2, "seq_len": 64, "latency_runs": 1}
        if args.smoke
        else {"steps": 30, "batch": 16, "seq_len": 1024, "latency_runs": 10}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke to check the script on the CPU", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (smoke)"
    print(f"device: {device}; torch {torch.__version__}", flush=True)
    shape = SMOKE if args.smoke else BIG
    started = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="slmops-gpu-bench-") as tmp:
        work = Path(tmp)
        peak = matmul_peak_flops()
        if peak:
            print(f"bf16 matmul peak: {peak / 1e12:.0f} TFLOP/s", flush=True)
        model, params = build_model(
            work / "model", shape, dtype=torch.float32 if args.smoke else torch.bfloat16
        )
        print(f"model: {params / 1e9:.2f}B parameters ({json.dumps(shape)})", flush=True)
        rows += measure_training(args, model, params, shape, work, peak)
        print(json.dumps(rows[-1]), flush=True)
        rows += measure_onnx(args, model, work)
    print_table(rows)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "params": params, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
