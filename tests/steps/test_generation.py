"""Answers generated from the prompts' shared prefix are the plain batches' answers."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from slmops_pipelines.steps.generation import _Generator, answer_nlls, greedy_answers, shared_prefix_length
from tests.tiny import build_tiny_hybrid, greedy_alone

INSTRUCTION = "What is the tone of this phrase? Answer with one word: happy, sad, angry, fearful or calm."
PHRASES = [
    "I love it",
    "so sad today, nothing works",
    "leave me alone",
    "a storm",
    "fine",
    "it is all calm now",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(tiny_model)


def prompts_of(tokenizer, phrases=PHRASES) -> list[str]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{INSTRUCTION}\n\n{p}"}], tokenize=False, add_generation_prompt=True
        )
        for p in phrases
    ]


def plain_answers(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """One prompt at a time, no padding, no cache given: what each answer is."""
    return [
        greedy_alone(
            model, tokenizer, tokenizer(prompt, add_special_tokens=False)["input_ids"], max_new_tokens
        )
        for prompt in prompts
    ]


def test_the_prefix_leaves_each_row_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 7]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter row keeps its last token
    assert shared_prefix_length([[1, 2], [3, 4]]) == 0
    assert shared_prefix_length([]) == 0


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_answers_equal_one_prompt_at_a_time_in_the_prompts_order(model_and_tokenizer, batch_size):
    model, tokenizer = model_and_tokenizer
    prompts = prompts_of(tokenizer)
    expected = [
        tokenizer.decode(a, skip_special_tokens=True) for a in plain_answers(model, tokenizer, prompts, 6)
    ]
    assert greedy_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=batch_size) == expected


def test_the_shared_prefix_is_computed_once_and_rows_are_padded_after_it(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts_of(tokenizer)]
    generator = _Generator(model, tokenizer.pad_token_id, tokenizer.eos_token_id, 4)
    with torch.inference_mode():
        prefix = generator.shared_prefix(rows)
    assert prefix is not None and len(prefix.tokens) == shared_prefix_length(rows) >= 20
    assert prefix.cache.get_seq_length() == len(prefix.tokens)
    ids, mask = generator._padded(rows[:2], prefix.tokens)
    short, long = sorted(rows[:2], key=len)
    gap = len(long) - len(short)
    row = 0 if len(rows[0]) < len(rows[1]) else 1
    assert ids[row, : len(prefix.tokens)].tolist() == prefix.tokens
    assert mask[row].tolist() == [1] * len(prefix.tokens) + [0] * gap + [1] * (
        len(short) - len(prefix.tokens)
    )
    copied = prefix.copied(3)
    assert copied.get_seq_length() == len(prefix.tokens) and prefix.cache.layers[0].keys.shape[0] == 1
    assert copied.layers[0].keys.shape[0] == 3


def test_a_lora_adapter_and_the_base_each_get_their_own_prefix(tiny_model):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(1)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    prompts = prompts_of(tokenizer)
    tuned = [
        tokenizer.decode(a, skip_special_tokens=True)
        for a in plain_answers(peft_model, tokenizer, prompts, 5)
    ]
    with peft_model.disable_adapter():
        base = [
            tokenizer.decode(a, skip_special_tokens=True)
            for a in plain_answers(peft_model, tokenizer, prompts, 5)
        ]
        assert greedy_answers(peft_model, tokenizer, prompts, max_new_tokens=5, batch_size=4) == base
    assert greedy_answers(peft_model, tokenizer, prompts, max_new_tokens=5, batch_size=4) == tuned


def test_prompts_with_little_in_common_run_plain(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PHRASES]
    generator = _Generator(model, tokenizer.pad_token_id, tokenizer.eos_token_id, 4)
    assert generator.shared_prefix(rows) is None


def test_a_hybrid_models_convolution_state_runs_plain():
    """LFM2's convolutions keep a state that a padding token in the middle would enter."""
    model = build_tiny_hybrid().eval()
    rows = [list(range(5, 15)) + [20 + i] * (1 + i % 2) for i in range(6)]
    generator = _Generator(model, 0, 1, 2)
    with torch.inference_mode():
        assert generator.shared_prefix(rows) is None


def test_a_model_whose_cached_answers_differ_runs_plain(model_and_tokenizer, monkeypatch, caplog):
    """The check compares logits: a cache that does not continue the prompt is refused."""
    model, tokenizer = model_and_tokenizer
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts_of(tokenizer)]
    generator = _Generator(model, tokenizer.pad_token_id, tokenizer.eos_token_id, 4)
    wrong = generator._prefix

    def prefix_of_other_tokens(tokens):
        return wrong([t + 1 for t in tokens[:-1]] + tokens[-1:])

    prefix_tokens = rows[0][: shared_prefix_length(rows)]
    monkeypatch.setattr(
        generator, "_prefix", lambda tokens: _relabelled(prefix_of_other_tokens(tokens), prefix_tokens)
    )
    with torch.inference_mode(), caplog.at_level(logging.INFO):
        assert generator.shared_prefix(rows) is None
    assert "not reused" in caplog.text


def _relabelled(prefix, tokens):
    prefix.tokens = tokens
    return prefix


def plain_nll(model, prompt: list[int], answer: list[int]) -> float:
    logits = model(input_ids=torch.tensor([prompt + answer])).logits[0].double()
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(answer) - 1)
    return -float(
        torch.log_softmax(logits[positions], -1)[torch.arange(len(answer)), torch.tensor(answer)].sum()
    )


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_answer_likelihoods_equal_one_row_at_a_time(model_and_tokenizer, batch_size):
    model, tokenizer = model_and_tokenizer
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts_of(tokenizer)]
    answers = [
        tokenizer(a, add_special_tokens=False)["input_ids"]
        for a in ("happy", "sad", "angry", "x", "calm", "")
    ]
    found = answer_nlls(model, prompts, answers, pad=tokenizer.pad_token_id, batch_size=batch_size)
    with torch.inference_mode():
        expected = [plain_nll(model, p, a) if a else 0.0 for p, a in zip(prompts, answers, strict=True)]
    assert found == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert found[-1] == 0.0 and all(nll > 0 for nll in found[:-1])
