"""Realistic inputs of the reports, built as the stages build them (no training, no export).

The shapes are those of ``stages.finetune.write_report`` (metrics.json of a FineTuneJob) and
``stages.optimize.write_report`` (of an OptimizeJob); the figures are those of the demo job
(SmolLM2-135M-Instruct, LoRA, the tone data) and of its CPU targets on two cores.
"""

from __future__ import annotations

import math
from typing import Any

TONES = ["sad", "calm", "angry", "happy", "anxious", "grateful"]


def log_history(steps: int = 60, logging: int = 5, evaluation: int = 20) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    for step in range(logging, steps + 1, logging):
        loss = 0.35 + 2.9 * math.exp(-step / 14) + 0.04 * math.sin(step)
        history.append(
            {
                "loss": round(loss, 4),
                "grad_norm": 1.7,
                "learning_rate": 1e-3 * (1 - step / steps),
                "step": step,
            }
        )
        if step % evaluation == 0:
            history.append({"eval_loss": round(loss + 0.08, 4), "eval_runtime": 2.1, "step": step})
    history.append({"train_runtime": 212.4, "train_loss": 0.91, "step": steps})
    return history


def accuracy(correct: int, total: int, answers: list[str], metrics: dict[str, float]) -> dict[str, Any]:
    samples = [{"expected": TONES[i % 6], "generated": a} for i, a in enumerate(answers)]
    return {
        "accuracy": correct / total,
        "correct": correct,
        "total": total,
        "seconds": 4.2,
        "samples": samples,
        "metrics": metrics,
    }


def finetune_metrics(*, search: bool = False) -> dict[str, Any]:
    split = {
        "rows": 256,
        "tokens": 9310,
        "label_tokens": 512,
        "truncated": 0,
        "dropped": 0,
        "max_length": 256,
    }
    metrics: dict[str, Any] = {
        "job": {
            "kind": "FineTuneJob",
            "name": "smollm2-tone",
            "namespace": "default",
            "method": "lora",
            "model": "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
            "dataset": "examples/data/tone",
        },
        "data": {
            "fingerprint": "3f9c2a17d5e0b6c4",
            "columns": ["phrase", "tone"],
            "mode": "prompt-completion",
            "train": split,
            "eval": {**split, "rows": 32, "tokens": 1164, "label_tokens": 64},
            "splits": {"train": "train.jsonl", "eval": "eval.jsonl"},
        },
        "train": {
            "global_step": 60,
            "total_steps": 60,
            "world_size": 1,
            "resumed_from_step": None,
            "stopped_early": False,
            "train_loss": 0.91,
            "eval_loss": 0.46,
            "train_runtime_s": 212.4,
            "seconds_per_step": 3.54,
            "tokens_seen": 42_880,
            "tokens_per_second": 201.9,
            "peak_memory_mb": 1480.5,
            "trainable_parameters": 921_600,
            "total_parameters": 135_436_608,
            "output": "adapter",
        },
        "evaluation": {
            "base": accuracy(
                5, 32, ["The tone is sad.", "calm", "I think angry", "joy", "anx", "thanks"], {"f1": 0.18}
            ),
            "finetuned": accuracy(
                31, 32, ["sad", "calm", "angry", "happy", "anxious", "grateful"], {"f1": 0.97}
            ),
        },
        "log_history": log_history(),
        "wall_time_s": 251.7,
    }
    if search:
        trials = [
            {"trial": n, "state": state, "value": value, "params": {"training.learningRate": lr, "lora.r": r}}
            for n, state, value, lr, r in [
                (0, "COMPLETE", 0.52, 1e-3, 8),
                (1, "COMPLETE", 0.47, 2e-3, 16),
                (2, "PRUNED", None, 1e-4, 8),
                (3, "COMPLETE", 0.61, 5e-4, 4),
            ]
        ]
        metrics["search"] = {
            "strategy": "random",
            "metric": "eval_loss",
            "direction": "minimize",
            "best_trial": 1,
            "best_value": 0.47,
            "best_params": trials[1]["params"],
            "trials": sorted(trials, key=lambda t: (t["value"] is None, t["value"] or 0)),
            "counts": {"COMPLETE": 3, "PRUNED": 1, "FAIL": 0},
        }
    return metrics


def model_metrics(accuracy: float | None, size_mb: float, rate: float | None, **extra: Any) -> dict[str, Any]:
    latency = (
        {
            "prefill_ms_p50": 3200 / rate,
            "prefill_ms_p95": 3400 / rate,
            "decode_tokens_per_s_p50": rate,
            "decode_ms_per_token_p50": 1000 / rate,
            "decode_ms_per_token_p95": 1100 / rate,
            "runs": 5,
        }
        if rate
        else None
    )
    return {
        "accuracy": accuracy,
        "correct": None if accuracy is None else round(accuracy * 32),
        "total": None if accuracy is None else 32,
        "perplexity": None if accuracy is None else 1.9 + (1 - accuracy),
        "latency": latency,
        "size_mb": size_mb,
        "rouge_l": None,
        "bleu": None,
        "samples": [],
        "skipped": None,
        **extra,
    }


def gate(target: str, name: str, limit: float, value: float | None, passed: bool | None) -> dict[str, Any]:
    return {"target": target, "gate": name, "limit": limit, "value": value, "passed": passed}


def optimize_doc(*, violated: bool = False) -> dict[str, Any]:
    reference = model_metrics(0.969, 538.1, 58.3)
    int4 = model_metrics(0.969, 138.4, 141.2)
    int8 = model_metrics(0.906 if violated else 0.969, 171.9, 126.4)
    cuda = model_metrics(None, 270.2, None, skipped="provider not available")

    def target(provider: str, precision: str, metrics: dict[str, Any], gates: list[dict]) -> dict[str, Any]:
        versus = {}
        if metrics["accuracy"] is not None:
            versus = {
                "accuracy": metrics["accuracy"] - reference["accuracy"],
                "perplexity": metrics["perplexity"] - reference["perplexity"],
                "decode_speedup": metrics["latency"]["decode_tokens_per_s_p50"] / 58.3,
                "prefill_speedup": reference["latency"]["prefill_ms_p50"]
                / metrics["latency"]["prefill_ms_p50"],
            }
        return {
            "provider": provider,
            "precision": precision,
            "mergeAdapter": True,
            "adapters": [],
            "path": "targets/...",
            "metrics": metrics,
            "vsFinetuned": versus,
            "vsBase": {},
            "gates": gates,
        }

    targets = {
        "cpu-int4": target(
            "CPUExecutionProvider",
            "int4",
            int4,
            [
                gate("cpu-int4", "accuracyDrop", 0.02, 0.0, True),
                gate("cpu-int4", "decodeSpeedup", 1.5, 141.2 / 58.3, True),
            ],
        ),
        "cpu-int8": target(
            "CPUExecutionProvider",
            "int8",
            int8,
            [
                gate("cpu-int8", "accuracyDrop", 0.02, 0.063 if violated else 0.0, not violated),
                gate("cpu-int8", "sizeMb", 200, 171.9, True),
            ],
        ),
        "cuda-fp16": target(
            "CUDAExecutionProvider",
            "fp16",
            cuda,
            [
                gate("cuda-fp16", "accuracyDrop", 0.02, None, None),
            ],
        ),
    }
    for name, value in targets.items():
        value["path"] = f"targets/{name}"
    return {
        "job": {"kind": "OptimizeJob", "name": "smollm2-tone-cpu", "namespace": "default"},
        "source": {
            "kind": "FineTuneJob",
            "fineTuneJob": "smollm2-tone",
            "output": "file:///work/runs/smollm2-tone",
            "specHash": "9b1f",
            "baseModel": "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
        },
        "evaluation": {"rows": 32, "metrics": ["accuracy", "latency", "perplexity", "size"]},
        "reference": {"finetuned_pytorch": reference, "base_pytorch": model_metrics(0.156, 538.1, 57.9)},
        "targets": targets,
        "gates": [g for t in targets.values() for g in t["gates"]],
        "wall_time_s": 96.4,
    }
