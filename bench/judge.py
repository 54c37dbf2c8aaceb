"""One judge for every tool's adapter: eval loss and task accuracy, measured the same way.

    python bench/judge.py MODEL_DIR EVAL.jsonl ADAPTER_DIR... [--rows 100]
    python bench/judge.py MODEL_DIR EVAL.jsonl [--rows 100] < adapters.txt

An adapter ``-`` is the base model.  Without adapters on the command line the judge reads one
folder per line from stdin and answers each as soon as it is judged: a benchmark keeps one
judge process (torch, transformers and peft imported once) for all its tools.

Each row of ``EVAL.jsonl`` has the prompt's fields and the expected answer (the tone data:
``phrase``, ``tone``).  The prompt goes through the model's chat template, as in training.

* eval loss -- mean cross-entropy over the answer's tokens (the assistant turn and its end
  token), the prompt given: what the model is trained to produce;
* accuracy  -- greedy generation of up to 8 tokens after the generation prompt; the answer,
  stripped and lower-cased, must equal the expected one.

Prints one JSON line per adapter.  Plain transformers + peft, nothing of slmops: a tool is
not judged by its own code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

PROMPT = (
    "What is the tone of this phrase? Answer with one word: happy, sad, angry, fearful or calm.\n\n{phrase}"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("eval")
    parser.add_argument("adapters", nargs="*", help="PEFT adapter folders, - for the base model")
    parser.add_argument("--rows", type=int, default=100)
    args = parser.parse_args()

    rows = [json.loads(line) for line in open(args.eval) if line.strip()][: args.rows]
    adapters = args.adapters or (line.strip() for line in sys.stdin if line.strip())
    for adapter in adapters:
        print(json.dumps(judge(args.model, adapter, rows)), flush=True)


def judge(model_dir: str, adapter: str, rows: list[dict]) -> dict:
    """Eval loss and accuracy of ``adapter`` on a freshly loaded base (nothing left of the last)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter != "-":
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.inference_mode():
        loss_sum, loss_tokens = answer_loss(model, tokenizer, rows)
        correct = correct_answers(model, tokenizer, rows)
    return {
        "eval_loss": loss_sum / max(loss_tokens, 1),
        "accuracy": correct / len(rows),
        "correct": correct,
        "rows": len(rows),
        "judge_s": time.perf_counter() - started,
    }


def answer_loss(model: Any, tokenizer: Any, rows: list[dict]) -> tuple[float, int]:
    """Summed cross-entropy over the answers' tokens, and how many tokens that is."""
    import torch

    loss_sum, loss_tokens = 0.0, 0
    for row in rows:
        user = [{"role": "user", "content": PROMPT.format(**row)}]
        prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": row["tone"]}], tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full.rstrip("\n"), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([full_ids])
        labels = ids.clone()
        labels[0, : len(prompt_ids)] = -100
        out = model(input_ids=ids, labels=labels)
        answer_tokens = int((labels[0, 1:] != -100).sum())
        loss_sum += float(out.loss) * answer_tokens
        loss_tokens += answer_tokens
    return loss_sum, loss_tokens


def correct_answers(model: Any, tokenizer: Any, rows: list[dict]) -> int:
    """Greedy answers of up to 8 tokens, left-padded batches of 16, equal to the expected tone."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    correct = 0
    for start in range(0, len(rows), 16):
        batch = rows[start : start + 16]
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": PROMPT.format(**r)}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for r in batch
        ]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        generated = model.generate(
            **encoded, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        for r, ids in zip(batch, generated[:, encoded["input_ids"].shape[1] :], strict=True):
            answer = tokenizer.decode(ids, skip_special_tokens=True).strip().lower()
            correct += answer == r["tone"].strip().lower()
    return correct


if __name__ == "__main__":
    main()
