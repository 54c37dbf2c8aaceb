"""A batch's shared prefix computed once gives the plain batch's loss and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from slmops_pipelines.steps.train.shared_prefix import (
    ModelCosts,
    can_share,
    pack_shared_prefix,
    packs_exactly,
    shared_prefix_length,
)
from slmops_pipelines.steps.train.sparse_logits import IGNORE_INDEX, sparse_causal_lm_loss
from tests.tiny import build_tiny_hybrid

PREFIX = 10


@pytest.fixture(scope="module")
def model(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")


def batch(
    padding_side: str = "right", prefix: int = PREFIX, lengths: tuple[int, ...] = (16, 13, 12)
) -> dict[str, torch.Tensor]:
    """Rows that begin with the same ``prefix`` tokens (16, 13 and 12 tokens), answers labelled."""
    torch.manual_seed(0)
    shared = torch.randint(5, 200, (prefix,))
    answers = [3, 2, 1][: len(lengths)]
    width = max(lengths)
    input_ids = torch.zeros(len(lengths), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, (length, answer) in enumerate(zip(lengths, answers, strict=True)):
        tokens = torch.cat([shared, torch.randint(5, 200, (length - prefix,))])
        start = 0 if padding_side == "right" else width - length
        input_ids[row, start : start + length] = tokens
        attention_mask[row, start : start + length] = 1
        labels[row, start + length - answer : start + length] = tokens[-answer:]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def keep_of(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    keep = torch.zeros_like(inputs["labels"], dtype=torch.bool)
    keep[:, :-1] = inputs["labels"][:, 1:] != IGNORE_INDEX
    return keep


def test_the_tiny_model_can_share(model):
    assert can_share(model)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_loss_and_gradients_equal_the_plain_batchs(model, padding_side):
    inputs = batch(padding_side)
    costs = ModelCosts.of(model)
    assert pack_shared_prefix(inputs["input_ids"], inputs["attention_mask"], keep_of(inputs), costs)

    model.zero_grad()
    expected, _ = sparse_causal_lm_loss(model, inputs, None)
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    loss, outputs = sparse_causal_lm_loss(model, inputs, None, shared_prefix=costs)
    loss.backward()

    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert outputs.logits.shape[0] == int(keep_of(inputs).sum())
    for name, grad in expected_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)


def test_a_lora_adapters_gradients_match(tiny_model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, param in peft_model.named_parameters():  # lora_B starts at zero: give it a gradient path
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    costs = ModelCosts.of(peft_model)
    assert can_share(peft_model)
    inputs = batch()

    grads = []
    for shared in (None, costs):
        peft_model.zero_grad()
        sparse_causal_lm_loss(peft_model, inputs, None, shared_prefix=shared)[0].backward()
        grads.append({n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def test_the_packed_row_holds_the_prefix_once_and_keeps_rows_apart(model):
    """Rows of 16, 13 and 12 tokens; each row's last token feeds no label and is left out."""
    inputs = batch()
    packed = pack_shared_prefix(
        inputs["input_ids"], inputs["attention_mask"], keep_of(inputs), ModelCosts.of(model)
    )
    assert packed is not None and packed.prefix == PREFIX
    ids = packed.inputs["input_ids"][0]
    assert len(ids) == PREFIX + (15 - PREFIX) + (12 - PREFIX) + (11 - PREFIX)
    positions = packed.inputs["position_ids"][0].tolist()
    assert positions == [*range(15), *range(PREFIX, 12), *range(PREFIX, 11)]
    mask = packed.inputs["attention_mask"][0, 0]
    first_of_row_2 = 15 + (12 - PREFIX)
    assert mask[first_of_row_2, :PREFIX].all()  # sees the prefix
    assert not mask[first_of_row_2, PREFIX:first_of_row_2].any()  # not the rows before it
    assert mask[first_of_row_2, first_of_row_2]
    assert not mask[PREFIX - 1, PREFIX:].any()  # causal
    assert int(packed.keep.sum()) == int(keep_of(inputs).sum())


def test_a_row_without_labels_is_left_out(model):
    inputs = batch()
    inputs["labels"][1] = IGNORE_INDEX  # e.g. an answer cut off by maxSeqLength
    packed = pack_shared_prefix(
        inputs["input_ids"], inputs["attention_mask"], keep_of(inputs), ModelCosts.of(model)
    )
    assert packed is not None
    assert packed.inputs["position_ids"][0].tolist() == [*range(15), *range(PREFIX, 11)]
    loss, _ = sparse_causal_lm_loss(model, inputs, None, shared_prefix=ModelCosts.of(model))
    torch.testing.assert_close(loss, sparse_causal_lm_loss(model, inputs, None)[0], rtol=1e-5, atol=1e-6)


def test_a_labelled_position_ends_the_prefix():
    rows = [torch.tensor([1, 2, 3, 4, 5]), torch.tensor([1, 2, 3, 4, 6])]
    keeps = [torch.tensor([False, False, True, False, False]), torch.zeros(5, dtype=torch.bool)]
    assert shared_prefix_length(rows, keeps) == 2  # position 2's next token is labelled
    unlabelled = [torch.zeros(5, dtype=torch.bool)] * 2
    assert shared_prefix_length(rows, unlabelled) == 4
    assert shared_prefix_length([rows[0], rows[0]], unlabelled) == 4  # each row keeps a token


def test_dropping_the_padding_alone_can_pay(model):
    ragged = batch(prefix=1)  # 48 tokens with the padding, 39 packed
    packed = pack_shared_prefix(
        ragged["input_ids"], ragged["attention_mask"], keep_of(ragged), ModelCosts.of(model)
    )
    assert packed is not None and packed.prefix == 1


def test_batches_that_gain_nothing_stay_batches(model):
    costs = ModelCosts.of(model)
    loss_everywhere = batch()
    keep = torch.ones_like(loss_everywhere["labels"], dtype=torch.bool)  # a loss on the prompt too
    assert (
        pack_shared_prefix(loss_everywhere["input_ids"], loss_everywhere["attention_mask"], keep, costs)
        is None
    )
    unrelated = batch(prefix=1, lengths=(40, 40, 40))  # no padding to drop either
    assert (
        pack_shared_prefix(unrelated["input_ids"], unrelated["attention_mask"], keep_of(unrelated), costs)
        is None
    )
    one_row = {k: v[:1] for k, v in batch().items()}
    assert (
        pack_shared_prefix(one_row["input_ids"], one_row["attention_mask"], keep_of(one_row), costs) is None
    )


def test_long_rows_with_a_short_prefix_stay_batches():
    """The packed row's attention grows with its length squared: 64 rows of 512 share 8 tokens."""
    costs = ModelCosts(per_token=1e6, per_pair=3e4)
    rows = torch.randint(5, 200, (64, 512))
    rows[:, :8] = rows[0, :8]
    keep = torch.zeros_like(rows, dtype=torch.bool)
    keep[:, -2] = True
    assert pack_shared_prefix(rows, None, keep, costs) is None


def test_rows_longer_than_a_sliding_window_stay_a_batch(model):
    inputs = batch()
    keep = keep_of(inputs)
    window = ModelCosts(per_token=1e6, per_pair=1.0, window=14)  # the longest row computes 15 tokens
    assert pack_shared_prefix(inputs["input_ids"], inputs["attention_mask"], keep, window) is None
    wider = ModelCosts(per_token=1e6, per_pair=1.0, window=15)
    assert pack_shared_prefix(inputs["input_ids"], inputs["attention_mask"], keep, wider) is not None


def test_dropout_or_another_attention_keeps_the_batch(tiny_model):
    from peft import LoraConfig, get_peft_model

    eager = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager")
    assert not can_share(eager)
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa")
    assert not can_share(get_peft_model(sdpa, LoraConfig(target_modules=["q_proj"], lora_dropout=0.1)))


def test_the_bf16_trainings_attention_on_cpus_takes_the_packed_row(tiny_model):
    from slmops_pipelines.steps.train.precision import attention_implementation
    from tests.steps.test_precision import spec

    name = attention_implementation(spec(precision="bf16"))  # SDPA computed in fp32
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16, attn_implementation=name)
    assert can_share(model)
    inputs = batch()
    costs = ModelCosts.of(model)
    assert pack_shared_prefix(inputs["input_ids"], inputs["attention_mask"], keep_of(inputs), costs)
    with torch.no_grad():
        plain, _ = sparse_causal_lm_loss(model, inputs, None)
        shared, _ = sparse_causal_lm_loss(model, inputs, None, shared_prefix=costs)
    torch.testing.assert_close(shared, plain, rtol=2e-2, atol=2e-2)


def test_a_model_whose_config_says_too_little_keeps_the_batch(model):
    class Wrapped(torch.nn.Module):  # e.g. a multimodal model: its text settings nested elsewhere
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.config = type("Config", (), {"_attn_implementation": "sdpa"})()

        def forward(self, input_ids=None, position_ids=None): ...

    assert not can_share(Wrapped())


def test_the_jobs_summary_says_how_many_positions_ran():
    from slmops_pipelines.steps.report.finetune import summary_rows

    def row(train: dict) -> object:
        return dict(summary_rows({"train": train}))["positions computed"]

    assert (
        row({"tokens_seen": 33753, "positions_computed": 12600})
        == "12,600 (37% of the tokens: shared prefix)"
    )
    assert row({"tokens_seen": 33753, "positions_computed": 40000}) is None  # padded batches: nothing to say
    assert row({"tokens_seen": 33753}) is None  # a run from before the count


def test_a_hybrid_models_convolution_reads_across_the_packed_row_so_it_keeps_the_batch():
    """LFM2's short convolutions ignore the 4D mask: the load-time check finds the leak."""
    assert not can_share(build_tiny_hybrid(attn_implementation="sdpa"))


def test_alibi_built_from_a_2d_mask_keeps_the_batch():
    from transformers import FalconConfig

    config = FalconConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, alibi=True
    )
    assert not can_share(AutoModelForCausalLM.from_config(config, attn_implementation="sdpa"))


def test_attention_dropout_keeps_the_batch(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model, attn_implementation="sdpa", attention_dropout=0.1
    )
    assert not can_share(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_llama_passes_the_load_time_check(tiny_model, dtype):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype, attn_implementation="sdpa")
    assert can_share(model) and model.training is False  # from_pretrained's eval mode, restored
    model.train()
    assert packs_exactly(model) and model.training


def test_left_padding_with_a_labelled_first_token(model):
    """A left pad's logit that would predict a row's first token is no prediction: both paths drop it."""
    inputs = batch("left")
    inputs["labels"][2, 4] = inputs["input_ids"][2, 4]  # row 2 starts at 4, after 4 pads
    costs = ModelCosts.of(model)
    plain, _ = sparse_causal_lm_loss(model, inputs, None)
    shared, _ = sparse_causal_lm_loss(model, inputs, None, shared_prefix=costs)
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-6)
