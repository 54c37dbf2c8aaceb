"""Baseline: what a user writes with plain transformers + peft (the tutorial recipe).

Tokenize ``prompt + answer`` to a fixed 128 tokens (``padding="max_length"``), loss on every
token, LoRA on the same modules as slmops, ``Trainer`` with SDPA attention in fp32.

    python bench/baselines/plain_peft.py MODEL_DIR DATA.jsonl STEPS BATCH [--gradient-checkpointing]
        [--output ADAPTER_DIR] [--max-seq-len 128] [--warmup-ratio 0.0]

Prints one JSON line: train seconds, examples, real and padded tokens.  With ``--output``
the adapter is saved there (``save_pretrained``), as a user's script would end.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("data")
    parser.add_argument("steps", type=int)
    parser.add_argument("batch", type=int)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--output")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--warmup-ratio", type=float, default=0.0)
    args = parser.parse_args()
    model_dir, data, steps, batch = args.model_dir, args.data, args.steps, args.batch
    checkpointing, max_len = args.gradient_checkpointing, args.max_seq_len
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in open(data)]
    prompt = "What is the tone of this phrase? Answer with one word: happy, sad, angry, fearful or calm.\n\n{phrase}"
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.format(**r)}, {"role": "assistant", "content": r["tone"]}],
            tokenize=False,
        )
        for r in rows
    ]
    encoded = tokenizer(
        texts, padding="max_length", truncation=True, max_length=max_len, add_special_tokens=False
    )
    encoded["labels"] = [list(ids) for ids in encoded["input_ids"]]
    # Rows are shuffled and may repeat (epochs): the mean row's tokens times the rows seen.
    real_tokens = sum(sum(mask) for mask in encoded["attention_mask"]) / len(texts) * steps * batch
    ds = datasets.Dataset.from_dict(dict(encoded))

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, task_type="CAUSAL_LM")
    )
    training_args = TrainingArguments(
        output_dir="/tmp/slmops-bench-plain",
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-3,
        warmup_steps=args.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the steps
        logging_steps=steps,
        save_strategy="no",
        report_to=[],
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        use_cpu=True,
        disable_tqdm=True,
        seed=42,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=ds)
    started = time.time()
    trainer.train()
    seconds = time.time() - started
    if args.output:
        model.save_pretrained(args.output)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "examples": steps * batch,
                "real_tokens": real_tokens,
                "padded_tokens": steps * batch * max_len,
                "train_loss": trainer.state.log_history[-1].get("train_loss"),
            }
        )
    )


if __name__ == "__main__":
    main()
