"""Fine-tuning throughput: slmops' training step against plain transformers + peft, in one run.

    .venv/bin/python bench/finetune_throughput.py [--steps 12] [--batch 8]

All variants train SmolLM2-135M-Instruct (the demo model) with LoRA r16 on the same seven
modules, fp32 on CPU, on the demo's tone data, for the same number of examples, each in its
own process, one after the other.  Model loading is excluded: the clock covers
``Trainer.train`` only.

* ``plain``        -- transformers + peft as tutorials write it: rows padded to 128 tokens,
                      loss on every token (bench/baselines/plain_peft.py);
* ``plain+gc``     -- the same with gradient checkpointing;
* ``slmops``       -- slmops' train step with its defaults: completion-only loss with the LM
                      head computed at labelled positions only, padding to the longest row of
                      length-grouped batches;
* ``slmops-unshared`` -- slmops computing each row's prompt prefix again (ablation of the
                      shared prefix, steps/train/shared_prefix.py);
* ``slmops-dense`` -- slmops with full logits (ablation of the sparse LM head; the shared
                      prefix needs the sparse head, so this one has neither).

Reported: examples/s (the figure that decides wall time), real (non-padding) tokens/s, and
the ratio of each variant's examples/s to ``plain``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / ".cache" / "models" / "SmolLM2-135M-Instruct"
DATA = REPO / "examples" / "data" / "tone"
PROMPT = (
    "What is the tone of this phrase? Answer with one word: happy, sad, angry, fearful or calm.\n\n{phrase}"
)


def run_plain(steps: int, batch: int, checkpointing: bool) -> dict:
    cmd = [
        sys.executable,
        str(REPO / "bench" / "baselines" / "plain_peft.py"),
        str(MODEL),
        str(DATA / "train.jsonl"),
        str(steps),
        str(batch),
    ]
    if checkpointing:
        cmd.append("--gradient-checkpointing")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


ABLATIONS = {"sparse": "SLMOPS_DENSE_LOGITS", "shared_prefix": "SLMOPS_NO_SHARED_PREFIX"}


def run_slmops(steps: int, batch: int, *, sparse: bool = True, shared_prefix: bool = True) -> dict:
    from transformers import AutoTokenizer

    from slmops_pipelines.specs import FineTuneJobSpec
    from slmops_pipelines.steps.data import prepare_data
    from slmops_pipelines.steps.train.launch import run_training
    from slmops_pipelines.steps.train.request import TrainRequest

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"uri": str(MODEL)},
            "dataset": {
                "uri": str(DATA),
                "chatTemplate": True,
                "promptTemplate": PROMPT,
                "completionTemplate": "{tone}",
                "maxSeqLength": 128,
            },
            "lora": {"r": 16, "alpha": 32},
            "training": {"maxSteps": steps, "batchSize": batch, "saveSteps": 10_000, "loggingSteps": steps},
            "evaluation": {"accuracy": False},
        }
    )
    work = Path(tempfile.mkdtemp(prefix="slmops-bench-"))
    prepare_data(
        spec.dataset,
        tokenizer=AutoTokenizer.from_pretrained(MODEL),
        out_dir=work / "data",
        seed=42,
        cache_dir=work / "cache",
    )
    for on, flag in ((sparse, ABLATIONS["sparse"]), (shared_prefix, ABLATIONS["shared_prefix"])):
        os.environ.pop(flag, None)
        if not on:
            os.environ[flag] = "1"
    result = run_training(TrainRequest(spec=spec, model_path=MODEL, data_dir=work / "data", work_dir=work))
    for flag in ABLATIONS.values():
        os.environ.pop(flag, None)
    return {"seconds": result.train_runtime_s, "examples": steps * batch, "real_tokens": result.tokens_seen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if not (MODEL / "config.json").exists():
        sys.exit(f"{MODEL} is missing: run scripts/prepare_demo_model.sh first")

    results = {
        "plain": run_plain(args.steps, args.batch, checkpointing=False),
        "plain+gc": run_plain(args.steps, args.batch, checkpointing=True),
        "slmops": run_slmops(args.steps, args.batch),
        "slmops-unshared": run_slmops(args.steps, args.batch, shared_prefix=False),
        "slmops-dense": run_slmops(args.steps, args.batch, sparse=False),
    }
    base = results["plain"]["examples"] / results["plain"]["seconds"]
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; steps {args.steps}, batch {args.batch}"
    )
    print(f"{'variant':<16}{'train s':>9}{'examples/s':>12}{'real tok/s':>12}{'vs plain':>10}")
    for name, r in results.items():
        eps = r["examples"] / r["seconds"]
        print(
            f"{name:<16}{r['seconds']:>9.1f}{eps:>12.2f}{r['real_tokens'] / r['seconds']:>12.1f}{eps / base:>9.2f}x"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
