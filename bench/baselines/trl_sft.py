"""Baseline: TRL's ``SFTTrainer`` as a careful user configures it.

Conversational prompt-completion rows (the prompt as a user turn, the answer as the assistant
turn), which TRL renders with the model's chat template; the loss on the completion only (TRL's
default for prompt-completion data); dynamic padding to the longest row of each batch (TRL's
collator); no gradient checkpointing (TRL turns it on by default: it recomputes activations and
is slower where memory is not short); LoRA on the same modules as slmops; SDPA attention.

    python bench/baselines/trl_sft.py MODEL_DIR DATA.jsonl STEPS BATCH [--output ADAPTER_DIR]
        [--max-seq-len 128] [--warmup-ratio 0.05] [--bf16]

Prints one JSON line: train seconds, examples and real (non-padding) tokens, counted by the
Trainer (``include_num_input_tokens_seen="non_padding"``).  With ``--output`` the adapter is
saved there.
"""

from __future__ import annotations

import argparse
import json
import time

PROMPT = (
    "What is the tone of this phrase? Answer with one word: happy, sad, angry, fearful or calm.\n\n{phrase}"
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def rows(path: str) -> list[dict]:
    out = []
    for line in open(path):
        row = json.loads(line)
        out.append(
            {
                "prompt": [{"role": "user", "content": PROMPT.format(**row)}],
                "completion": [{"role": "assistant", "content": row["tone"]}],
            }
        )
    return out


def main() -> None:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("data")
    parser.add_argument("steps", type=int)
    parser.add_argument("batch", type=int)
    parser.add_argument("--output")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (TRL's bf16=True)")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    config = SFTConfig(
        output_dir="/tmp/slmops-bench-trl",
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=1e-3,
        warmup_steps=args.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the steps
        lr_scheduler_type="linear",
        logging_steps=max(1, args.steps // 6),
        save_strategy="no",
        report_to=[],
        max_length=args.max_seq_len,
        completion_only_loss=True,
        gradient_checkpointing=False,
        include_num_input_tokens_seen="non_padding",
        bf16=args.bf16,
        use_cpu=True,
        disable_tqdm=True,
        seed=42,
        data_seed=42,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows(args.data)),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM"),
    )
    started = time.time()
    trainer.train()
    seconds = time.time() - started
    if args.output:
        trainer.model.save_pretrained(args.output)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "examples": args.steps * args.batch,
                "real_tokens": int(trainer.state.num_input_tokens_seen),
                "train_loss": trainer.state.log_history[-1].get("train_loss"),
            }
        )
    )


if __name__ == "__main__":
    main()
