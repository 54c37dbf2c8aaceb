"""The same LoRA fine-tuning work through slmops, TRL, plain transformers+peft and Microsoft Olive.

    scripts/setup.sh && bench/setup_olive.sh && scripts/prepare_demo_model.sh   # once
    .venv/bin/python bench/finetune.py                    # the demo job: 60 steps of 8, every tool
    .venv/bin/python bench/finetune.py --steps 2 --eval-rows 4 --tools slmops,plain   # smoke

The work, identical for every tool: SmolLM2-135M-Instruct (the demo model), the demo's tone
data rendered with the model's chat template, LoRA r16 / alpha 32 on q/k/v/o/gate/up/down,
each tool's default precision on this machine, ``--steps`` optimizer steps of ``--batch`` examples of at most
``--max-seq-len`` tokens, learning rate 1e-3 with 5% warm-up, seed 42.  Each tool runs as
its own command, one after the other, as a user would run it:

* ``slmops`` -- ``slmops run job.yaml`` (the local runner: inspection, data preparation,
  training with checkpoints, eval loss, report, publishing; its generation-based accuracy is
  switched off because the judge below measures every tool's);
* ``slmops-fp32`` -- the same job with ``training.precision: fp32`` (the ablation: what
  ``auto`` picks on a CPU without bf16 instructions);
* ``trl``    -- ``bench/baselines/trl_sft.py``: TRL's ``SFTTrainer`` as a careful user sets it
  up (prompt-completion rows, completion-only loss, dynamic padding, no gradient
  checkpointing); ``trl-bf16`` is the same with ``bf16=True``;
* ``plain``  -- ``bench/baselines/plain_peft.py``: the tutorial recipe (rows padded to the
  sequence length, loss on every token, ``Trainer``), saving the adapter;
* ``olive``  -- ``olive finetune`` (PyPI olive-ai, in its own venv from bench/setup_olive.sh),
  given the same rows as chat ``messages`` and the same hyperparameters; Olive packs rows
  into full ``--max-seq-len`` chunks and trains with gradient checkpointing: its own recipe.

Figures per tool:

* wall s        -- the whole command: interpreter start, imports, model loading, data
                   preparation, training, saving (and for slmops its reports and manifest);
* tokens/s      -- non-padding training tokens over the training loop's seconds, as each tool
                   reports the loop (slmops' metrics.json; the Trainer's train_runtime);
* peak RSS      -- the command's whole process tree, sampled every 0.1 s;
* eval loss and accuracy -- from ``bench/judge.py``, one judge for every adapter (one process,
  idle while the next tool trains): loss on the answer tokens of the held-out eval rows,
  exact-match accuracy of greedy answers.

* MFU          -- model FLOPs utilization: tokens/s x 4 x parameters (forward, and backward to
                   the activations: the base weights are frozen) over a matmul peak measured on
                   the spot (square, all threads, 2048 wide unless a call of that side would
                   overrun a few seconds), in the precision the tool trains in.
                   It counts the tokens trained on, as model FLOPs utilization does, not the
                   arithmetic done: slmops computes a batch's shared prompt prefix once
                   (steps/train/shared_prefix.py), so its figure can pass 100%.

The goals (issue 17): slmops' tokens/s at least 3x TRL's best.  The verdict is printed under
the table.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "scripts")]

from _measure import machine, provenance, run_measured, run_slmops  # noqa: E402
from bench_tables import finetune_table  # noqa: E402  (scripts/: the docs' table, from these figures)
from judge import PROMPT  # noqa: E402  (the task's prompt, as the judge asks it)

MODEL = REPO / ".cache" / "models" / "SmolLM2-135M-Instruct"
DATA = REPO / "examples" / "data" / "tone"
OLIVE_VENV = REPO / ".cache" / "bench" / "olive-venv"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOOLS = ("slmops", "slmops-fp32", "trl", "trl-bf16", "plain", "olive")


def slmops_job(args: argparse.Namespace, out: Path, *, precision: str = "auto") -> dict:
    return {
        "apiVersion": "slmops.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bench-finetune"},
        "spec": {
            "model": {"uri": str(args.model)},
            "dataset": {
                "uri": str(args.data),
                "trainSplit": "train",
                "evalSplit": f"eval[:{args.eval_rows}]",
                "chatTemplate": True,
                "promptTemplate": PROMPT,
                "completionTemplate": "{tone}",
                "completionOnlyLoss": True,
                "maxSeqLength": args.max_seq_len,
            },
            "method": "lora",
            "lora": {"r": 16, "alpha": 32, "targetModules": TARGETS},
            "training": {
                "maxSteps": args.steps,
                "batchSize": args.batch,
                "learningRate": 1e-3,
                "warmupRatio": 0.05,
                "seed": 42,
                "loggingSteps": max(1, args.steps // 6),
                "precision": precision,
            },
            "evaluation": {"accuracy": False, "compareBase": False},
            "output": {"uri": str(out)},
        },
    }


def train_with_slmops(args: argparse.Namespace, work: Path, *, precision: str = "auto") -> dict:
    name = "slmops" if precision == "auto" else f"slmops-{precision}"
    out = work / f"{name}-out"
    measured = run_slmops(slmops_job(args, out, precision=precision), work=work, name=name)
    train = json.loads((out / "metrics.json").read_text())["train"]
    return {
        "wall_s": measured.wall_s,
        "train_s": train["train_runtime_s"],
        "tokens_per_s": train["tokens_per_second"],
        "peak_rss_mb": measured.peak_rss_mb,
        "adapter": str(out / "adapter"),
        "precision": train.get("precision", "fp32"),
    }


def train_with_slmops_fp32(args: argparse.Namespace, work: Path) -> dict:
    """The ablation: slmops with training.precision fp32 (what auto picks on a CPU without bf16)."""
    return train_with_slmops(args, work, precision="fp32")


def run_baseline(args: argparse.Namespace, work: Path, name: str, script: str, *extra: str) -> dict:
    """A baseline script of bench/baselines/, which prints one JSON line of what it trained."""
    adapter = work / f"{name}-adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    cmd = [
        sys.executable,
        str(REPO / "bench" / "baselines" / script),
        str(args.model),
        str(args.data / "train.jsonl"),
        str(args.steps),
        str(args.batch),
        "--output",
        str(adapter),
        "--max-seq-len",
        str(args.max_seq_len),
        "--warmup-ratio",
        "0.05",
        *extra,
    ]
    measured = run_measured(cmd, log=work / f"{name}.log")
    if measured.returncode:
        raise RuntimeError(f"{name} failed:\n{measured.output[-3000:]}")
    report = json.loads(measured.output.strip().splitlines()[-1])
    return {
        "wall_s": measured.wall_s,
        "train_s": report["seconds"],
        "tokens_per_s": report["real_tokens"] / report["seconds"],
        "peak_rss_mb": measured.peak_rss_mb,
        "adapter": str(adapter),
        "precision": "bf16" if "--bf16" in extra else "fp32",
    }


def train_with_plain(args: argparse.Namespace, work: Path) -> dict:
    return run_baseline(args, work, "plain", "plain_peft.py")


def train_with_trl(args: argparse.Namespace, work: Path) -> dict:
    return run_baseline(args, work, "trl", "trl_sft.py")


def train_with_trl_bf16(args: argparse.Namespace, work: Path) -> dict:
    return run_baseline(args, work, "trl-bf16", "trl_sft.py", "--bf16")


def olive_rows(args: argparse.Namespace, work: Path) -> Path:
    """The training rows as chat messages, the form ``olive finetune --use_chat_template`` reads."""
    path = work / "olive-train.jsonl"
    with open(path, "w") as out:
        for line in open(args.data / "train.jsonl"):
            row = json.loads(line)
            messages = [
                {"role": "user", "content": PROMPT.format(**row)},
                {"role": "assistant", "content": row["tone"]},
            ]
            out.write(json.dumps({"messages": messages}) + "\n")
    return path


def train_with_olive(args: argparse.Namespace, work: Path) -> dict:
    olive = args.olive_venv / "bin" / "olive"
    if not olive.exists():
        raise RuntimeError(f"Olive is not installed at {args.olive_venv}: run bench/setup_olive.sh")
    out = work / "olive-out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        str(olive),
        "finetune",
        "-m",
        str(args.model),
        "-d",
        "json",
        "--data_files",
        str(olive_rows(args, work)),
        "--train_split",
        "train",
        "--use_chat_template",
        "--max_seq_len",
        str(args.max_seq_len),
        "--method",
        "lora",
        "--lora_r",
        "16",
        "--lora_alpha",
        "32",
        "--target_modules",
        ",".join(TARGETS),
        "--torch_dtype",
        "float32",
        "-o",
        str(out),
        "--disable_telemetry",
        "--log_level",
        "1",
        # Hugging Face TrainingArguments, passed through by Olive:
        "--max_steps",
        str(args.steps),
        "--per_device_train_batch_size",
        str(args.batch),
        "--learning_rate",
        "1e-3",
        "--warmup_steps",  # transformers 5: a float < 1 is a ratio of the steps
        "0.05",
        "--seed",
        "42",
        "--logging_steps",
        str(max(1, args.steps // 6)),
    ]
    measured = run_measured(cmd, cwd=work, log=work / "olive.log")
    if measured.returncode:
        raise RuntimeError(f"olive finetune failed:\n{measured.output[-3000:]}")
    runtime = re.findall(r"'train_runtime': '?([0-9.]+)", measured.output)
    if not runtime:
        raise RuntimeError("olive finetune printed no train_runtime")
    train_s = float(runtime[-1])
    # Olive joins the rows and cuts full chunks: every token of every example is real.
    tokens = args.steps * args.batch * args.max_seq_len
    return {
        "wall_s": measured.wall_s,
        "train_s": train_s,
        "tokens_per_s": tokens / train_s,
        "peak_rss_mb": measured.peak_rss_mb,
        "adapter": str(out / "adapter"),
        "precision": "fp32",
    }


RUNNERS = {
    "slmops": train_with_slmops,
    "slmops-fp32": train_with_slmops_fp32,
    "trl": train_with_trl,
    "trl-bf16": train_with_trl_bf16,
    "plain": train_with_plain,
    "olive": train_with_olive,
}


class Judge:
    """One ``bench/judge.py`` process for every tool: started at the first adapter (after the
    first tool has trained, so that its imports never compete with a measured run), idle while
    the others train, asked over stdin; its stderr goes to ``judge.log``."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.command = [sys.executable, str(REPO / "bench" / "judge.py"), str(args.model)]
        self.command += [str(args.data / "eval.jsonl"), "--rows", str(args.eval_rows)]
        self.log = work / "judge.log"
        self.process: subprocess.Popen[str] | None = None

    def __call__(self, adapter: str, name: str) -> dict:
        if self.process is None:
            with self.log.open("w") as log:  # the child keeps its own copy of the descriptor
                self.process = subprocess.Popen(
                    self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
                )
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(adapter + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            self.process.wait()
            tail = self.log.read_text()[-3000:]
            raise RuntimeError(f"judging {name} failed (exit {self.process.returncode}):\n{tail}")
        return json.loads(answer)

    def close(self) -> None:
        if self.process is not None:
            assert self.process.stdin
            self.process.stdin.close()
            self.process.wait(timeout=60)


def matmul_peak(dtype_name: str, *, size: int = 2048, repeats: int = 10, budget_s: float = 5.0) -> float:
    """FLOP/s of a square matmul on all threads, best of ``repeats`` (fewer once ``budget_s`` is
    spent).  The side doubles from 256 up to ``size`` while the next one fits the budget: a CPU
    without bf16 instructions emulates bf16 at well under 1 GFLOP/s (a minute for one 2048-square
    call), where the rate, not the side, is what the figure needs."""

    import torch

    dtype = getattr(torch, dtype_name)
    side = 256
    while side < size and _one_matmul_s(torch, dtype, side) * 8 < budget_s / 4:
        side *= 2  # 8x the work for the next side
    a, b = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
    best, deadline = float("inf"), time.perf_counter() + budget_s
    for done in range(repeats + 1):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
        if done >= 1 and time.perf_counter() > deadline:  # one call after the warm-up at least
            break
    return 2 * side**3 / best


def _one_matmul_s(torch: Any, dtype: Any, side: int) -> float:
    a, b = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
    a @ b  # warm-up: the first call allocates and picks its kernel
    started = time.perf_counter()
    a @ b
    return time.perf_counter() - started


def model_parameters(model: Path) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with __import__("torch").device("meta"):
        net = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    return sum(p.numel() for p in net.parameters())


def verdict(results: dict[str, dict]) -> list[str]:
    lines = []
    if "slmops" not in results:
        return lines
    ours = results["slmops"]
    trl = {k: v for k, v in results.items() if k.startswith("trl")}
    if trl:
        best = max(trl, key=lambda k: trl[k]["tokens_per_s"])
        ratio = ours["tokens_per_s"] / trl[best]["tokens_per_s"]
        lines.append(
            f"tokens/s: slmops {ours['tokens_per_s']:.0f} vs TRL's best ({best}) {trl[best]['tokens_per_s']:.0f} "
            f"-> {ratio:.2f}x ({'met' if ratio >= 3 else 'NOT met'}: goal >= 3x)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, in order")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--eval-rows", type=int, default=100)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--olive-venv", type=Path, default=OLIVE_VENV)
    parser.add_argument("--work", type=Path, help="keep logs and adapters here (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--peak-seconds",
        type=float,
        default=5.0,
        help="time given to measuring each precision's matmul peak (the MFU's denominator)",
    )
    args = parser.parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        parser.error(f"unknown tools {sorted(unknown)}; choose from {TOOLS}")
    if not (args.model / "config.json").exists():
        parser.error(f"no model at {args.model}: run scripts/prepare_demo_model.sh")

    import torch
    import transformers

    print(f"machine: {machine()}; torch {torch.__version__}, transformers {transformers.__version__}")
    print(
        f"work: {args.steps} steps x {args.batch} rows x <= {args.max_seq_len} tokens, LoRA r16 on {len(TARGETS)} modules"
    )
    params = model_parameters(args.model)
    peaks = {
        name: matmul_peak(dtype, budget_s=args.peak_seconds)
        for name, dtype in (("fp32", "float32"), ("bf16", "bfloat16"))
    }
    # Without bf16 instructions torch emulates the large bf16 matmul (about 1 GFLOP/s) while a
    # model's smaller ones may take a faster path (an MFU of 1.2 on an AVX2-only EPYC): what the
    # machine can do on bf16 numbers is never less than converting them and multiplying in fp32.
    peaks["bf16"] = max(peaks["bf16"], peaks["fp32"])
    with tempfile.TemporaryDirectory(prefix="slmops-bench-finetune-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = measure_tools(args, argv, tools, work, params, peaks)
    figures = figures_of(args, argv, params, peaks, results)
    print()
    print(finetune_table(figures))  # the table docs/benchmarks.md makes from the JSON, the same code
    return 0


def measure_tools(
    args: argparse.Namespace, argv: list[str] | None, tools: list[str], work: Path, params: int, peaks: dict
) -> dict[str, dict]:
    """Train with each tool in turn, then judge its adapter; the figures file after each."""
    results: dict[str, dict] = {}
    judge = Judge(args, work)
    try:
        for tool in tools:
            print(f"-- {tool} ...", flush=True)
            result = RUNNERS[tool](args, work)
            result.update(judge(result["adapter"], tool))
            result["mfu"] = result["tokens_per_s"] * 4 * params / peaks[result["precision"]]
            results[tool] = result
            print(json.dumps({"tool": tool, **result}), flush=True)
            if args.json:  # after each tool: a run stopped midway keeps what it measured
                args.json.write_text(
                    json.dumps(figures_of(args, argv, params, peaks, results), indent=2) + "\n"
                )
    finally:
        judge.close()
    return results


def figures_of(
    args: argparse.Namespace, argv: list[str] | None, params: int, peaks: dict, results: dict
) -> dict:
    """The figures file: provenance, the work, the peaks and every tool measured so far."""
    return {
        **provenance(argv, "torch", "transformers", "peft", "trl", "accelerate"),
        "work": {
            "steps": args.steps,
            "batch": args.batch,
            "max_seq_len": args.max_seq_len,
            "eval_rows": args.eval_rows,
        },
        "parameters": params,
        "matmul_peak_flops": peaks,
        "tools": results,
        "verdict": verdict(results),
    }


if __name__ == "__main__":
    sys.exit(main())
