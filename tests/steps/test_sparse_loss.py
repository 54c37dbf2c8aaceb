"""The sparse-logits loss equals transformers' own causal-LM loss, with less work."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from slmops_pipelines.steps.train.sparse_logits import sparse_causal_lm_loss, supports_sparse_logits


@pytest.fixture(scope="module")
def model(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()


def batch():
    torch.manual_seed(0)
    input_ids = torch.randint(5, 200, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 9:] = 0  # a padded row
    labels = torch.full_like(input_ids, -100)
    labels[0, 8:] = input_ids[0, 8:]
    labels[1, 5:7] = input_ids[1, 5:7]
    labels[2, 6:9] = input_ids[2, 6:9]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.mark.parametrize("num_items", [None, 17])
def test_equals_the_models_own_loss(model, num_items):
    inputs = batch()
    expected = model(**inputs, num_items_in_batch=num_items).loss if num_items else model(**inputs).loss
    loss, outputs = sparse_causal_lm_loss(model, inputs, num_items)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    labelled_next = int((inputs["labels"][:, 1:] != -100).sum())
    assert outputs.logits.shape == (labelled_next, model.config.vocab_size)


def test_gradients_match(model):
    inputs = batch()
    model.zero_grad()
    model(**inputs).loss.backward()
    expected = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    model.zero_grad()
    sparse_causal_lm_loss(model, inputs, None)[0].backward()
    torch.testing.assert_close(
        model.model.layers[0].self_attn.q_proj.weight.grad, expected, rtol=1e-4, atol=1e-6
    )


def test_peft_models_are_supported(tiny_model):
    from peft import LoraConfig, get_peft_model

    fresh = AutoModelForCausalLM.from_pretrained(tiny_model)  # get_peft_model modifies its argument
    assert supports_sparse_logits(get_peft_model(fresh, LoraConfig(target_modules=["q_proj"])))
