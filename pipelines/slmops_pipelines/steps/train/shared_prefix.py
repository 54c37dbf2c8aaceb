"""Compute the prefix a batch's rows share once: the same loss and gradients, less arithmetic.

Fine-tuning rows mostly begin alike: the chat template's system prompt and the prompt
template's instruction are the same tokens in every row (the demo: 49 of its rows' 70
tokens).  A plain batch computes them once per row.  Here the batch becomes one packed row:
the shared prefix once, then each row's own tokens, with position ids that go on from the
prefix's and a 4D attention mask under which a row's tokens see the prefix and their own
earlier tokens, nothing of the other rows.  Every row's hidden states, hence its logits and
loss, are the ones it has in the plain batch (up to float rounding), and the prefix's
gradient is the sum of the rows' as it is there.  What the loss does not depend on goes too:
the batch's padding, and each row's tokens after its last labelled position.

It applies when
* no labelled position lies in the prefix (a loss on the completion only; a labelled prefix
  position would need one logit per row, since the rows' next tokens differ after it);
* the model takes position ids and a custom 4D boolean mask (SDPA, which the trainer sets),
  and no row is longer than a sliding attention window (the custom mask has none);
* no dropout is active (a shared prefix would share its dropout mask among the rows);
* the model passes a check when training starts (:func:`packs_exactly`: rows kept apart,
  the same logits), which a layer that ignores the mask fails;
* and it saves arithmetic: the packed row's attention grows with the square of its length,
  so a batch of long rows with little in common stays a batch (:func:`packed_cost`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from slmops_pipelines.steps.train.precision import CPU_BF16_ATTENTION

# Attention implementations whose mask is a boolean (batch, 1, query, key) tensor used as is:
# transformers' SDPA, and the trainer's SDPA in fp32 for bf16 on CPUs.
BOOLEAN_MASK_ATTENTION = frozenset({"sdpa", CPU_BF16_ATTENTION})
MIN_SAVING = 0.1  # share only when the estimate says a tenth of the batch's arithmetic goes
COST_FIELDS = ("num_attention_heads", "num_hidden_layers", "hidden_size")  # what ModelCosts reads


@dataclass(frozen=True)
class ModelCosts:
    """What a model computes per token and per attended pair: the cost model's two weights."""

    per_token: float  # multiply-adds of the linear layers, per token
    per_pair: float  # multiply-adds of attention (scores and values), per query-key pair
    window: int | None = None  # a sliding attention window: longer rows stay a batch

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelCosts:
        config = model.config
        embeddings = model.get_input_embeddings().weight.numel()
        linear = sum(p.numel() for p in model.parameters()) - embeddings
        heads_width = config.num_attention_heads * getattr(
            config, "head_dim", config.hidden_size // config.num_attention_heads
        )
        return cls(
            per_token=float(linear),
            per_pair=2.0 * heads_width * config.num_hidden_layers,
            window=getattr(config, "sliding_window", None) or None,
        )


@dataclass(frozen=True)
class PackedBatch:
    """A batch as one row: the model's inputs, and the labelled positions in the rows' order."""

    inputs: dict[str, torch.Tensor]  # input_ids, position_ids, attention_mask (4D, boolean)
    keep: torch.Tensor  # (1, packed length), True where the next token is labelled
    prefix: int  # tokens computed once instead of once per row


def can_share(model: torch.nn.Module) -> bool:
    """Whether the model takes the packed row and gives each row what the plain batch gives it.

    The cheap refusals first (an attention that needs another mask, a config without the cost
    model's fields, a forward without position ids, dropout), then :func:`packs_exactly`: a
    model whose layers ignore the 4D mask (a convolution, a state-space or linear-attention
    layer in a hybrid model, ALiBi built from a 2D mask, remote code) fails that check and
    keeps its batches.
    """
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) not in BOOLEAN_MASK_ATTENTION:
        return False
    if not all(hasattr(config, name) for name in COST_FIELDS):  # e.g. a multimodal config
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "position_ids" not in inspect.signature(base.forward).parameters:
        return False
    if (getattr(config, "attention_dropout", 0.0) or 0.0) > 0:  # a float, not a Dropout module
        return False
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        return False
    return packs_exactly(model)


def packs_exactly(model: torch.nn.Module) -> bool:
    """Two short rows with a shared prefix, plain and packed: kept apart, and the same logits?

    Run once when training starts (three forwards of a dozen tokens, in eval mode).  Kept
    apart is exact: the gradient of the second row's logits with respect to the first row's
    own tokens must be zero, which a masked attention gives and a layer that reads across the
    packed row (a convolution, a state-space or linear-attention layer) does not, however
    small its weights.  The same logits: up to the rounding of the model's dtype.  An error
    counts as a no.
    """
    parameter = next(model.parameters())
    device = parameter.device
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(vocab // 4, vocab // 2, (2, 12), generator=generator)
    input_ids[1, :6] = input_ids[0, :6]  # a prefix of 6
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 10:] = 0  # right padding
    keep = torch.zeros_like(input_ids, dtype=torch.bool)
    keep[0, 7:11] = True  # the first row's own tokens: packed positions 6 to 10
    keep[1, 7:9] = True
    packed = pack_shared_prefix(
        input_ids, attention_mask, keep, ModelCosts(per_token=1.0, per_pair=0.0), min_saving=float("-inf")
    )
    if packed is None:
        return False
    inputs = {name: tensor.to(device) for name, tensor in packed.inputs.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            plain = model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                logits_to_keep=keep.to(device),
                use_cache=False,
            ).logits.float()
            shared = model(**inputs, logits_to_keep=packed.keep.to(device), use_cache=False).logits.float()
        embeds = model.get_input_embeddings()(inputs.pop("input_ids")).detach().requires_grad_(True)
        logits = model(
            inputs_embeds=embeds, **inputs, logits_to_keep=packed.keep.to(device), use_cache=False
        ).logits
        (gradient,) = torch.autograd.grad(logits[4:].float().sum(), embeds)  # the second row's 2 logits
    except Exception:  # the model cannot take the packed row at all (e.g. ALiBi from a 2D mask)
        return False
    finally:
        model.train(was_training)
    apart = not gradient[0, 6:11].any()
    rounding = 1e-4 if parameter.dtype == torch.float32 else 3e-2
    scale = float(plain.abs().max()) or 1.0
    same = shared.shape == plain.shape and bool(((shared - plain).abs() <= rounding * scale).all())
    return apart and same


def shared_prefix_length(rows: list[torch.Tensor], keeps: list[torch.Tensor]) -> int:
    """Tokens every row begins with, short of each row's first labelled position and last token."""
    shortest = min(len(row) for row in rows)
    limit = shortest - 1  # each row keeps a token of its own
    for keep in keeps:
        labelled = torch.nonzero(keep)
        if len(labelled):
            limit = min(limit, int(labelled[0]))
    if limit <= 0:
        return 0
    first = rows[0][:limit]
    same = torch.ones(limit, dtype=torch.bool, device=first.device)
    for row in rows[1:]:
        same &= row[:limit] == first
    differs = torch.nonzero(~same)
    return int(differs[0]) if len(differs) else limit


def packed_cost(
    batch: tuple[int, int], prefix: int, lengths: list[int], costs: ModelCosts
) -> tuple[float, float]:
    """Estimated arithmetic of the plain batch (rows, width) and of the packed row of ``lengths``."""
    rows, width = batch
    plain = rows * (width * costs.per_token + width * width * costs.per_pair)
    packed_length = prefix + sum(n - prefix for n in lengths)
    packed = packed_length * costs.per_token + packed_length * packed_length * costs.per_pair
    return plain, packed


def labelled_rows(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, keep: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each row's real tokens up to its last labelled position: what its loss depends on.

    A token after a row's last labelled position is neither labelled nor seen by one (the
    batch computes each row's last token for nothing), and a row without labels adds nothing
    to the loss; both are left out.
    """
    real = (
        attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    )
    rows, keeps = [], []
    for ids, labelled, mask in zip(input_ids, keep, real, strict=True):
        ids, labelled = ids[mask], labelled[mask]
        positions = torch.nonzero(labelled)
        if len(positions):
            end = int(positions[-1]) + 1
            rows.append(ids[:end])
            keeps.append(labelled[:end])
    return rows, keeps


def pack_shared_prefix(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    keep: torch.Tensor,
    costs: ModelCosts,
    *,
    min_saving: float = MIN_SAVING,
) -> PackedBatch | None:
    """The batch as one packed row, or None where it would not save ``min_saving`` of the work."""
    rows, keeps = labelled_rows(input_ids, attention_mask, keep)
    if not rows or (costs.window is not None and max(len(row) for row in rows) > costs.window):
        return None
    prefix = shared_prefix_length(rows, keeps)
    plain, packed = packed_cost(
        (input_ids.shape[0], input_ids.shape[1]), prefix, [len(row) for row in rows], costs
    )
    if packed > (1 - min_saving) * plain:
        return None
    device = input_ids.device
    segments = [torch.full((prefix,), -1, device=device)]
    positions = [torch.arange(prefix, device=device)]
    for index, row in enumerate(rows):
        segments.append(torch.full((len(row) - prefix,), index, device=device))
        positions.append(torch.arange(prefix, len(row), device=device))
    segment = torch.cat(segments)
    length = len(segment)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    # A token sees the prefix and its own row's tokens, never another row's.
    visible = (segment[None, :] == -1) | (segment[None, :] == segment[:, None])
    return PackedBatch(
        inputs={
            "input_ids": torch.cat([rows[0][:prefix], *(row[prefix:] for row in rows)])[None],
            "position_ids": torch.cat(positions)[None],
            "attention_mask": (causal & visible)[None, None],
        },
        keep=torch.cat([keeps[0][:prefix], *(k[prefix:] for k in keeps)])[None],
        prefix=prefix,
    )
