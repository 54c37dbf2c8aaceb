"""Completion-only loss that computes the LM head only where there is a label.

With the loss on the answer only, most positions of a training row have label -100, yet a
plain causal-LM forward projects *every* position onto the vocabulary (49k columns for
SmolLM2: about a fifth of the model's FLOPs) and backpropagates through all of it.  The
model's ``logits_to_keep`` accepts a boolean mask: we keep exactly the positions whose next
token is labelled, and compute the same cross-entropy on those.  Same loss, less work and
far less memory (the full logits tensor is never built).

This module is the trainer side of the loss; :mod:`.losses` is the registry of the loss
functions themselves (cross-entropy and plug-ins), whichever trainer path calls them.

The loss is normalised like transformers' own: by ``num_items_in_batch`` (labelled tokens
over the whole accumulated batch) when the Trainer passes it, else by the batch's tokens.
"""

from __future__ import annotations

import inspect

import torch
from transformers import Trainer

from slmops_pipelines.steps.train.losses import cross_entropy
from slmops_pipelines.steps.train.shared_prefix import ModelCosts, can_share, pack_shared_prefix

IGNORE_INDEX = -100


def supports_sparse_logits(model: torch.nn.Module) -> bool:
    """Whether the (possibly PEFT-wrapped) model's forward takes ``logits_to_keep``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def sparse_causal_lm_loss(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    num_items_in_batch: torch.Tensor | int | None,
    *,
    loss_fn=None,
    sparse: bool = True,
    shared_prefix: ModelCosts | None = None,
) -> tuple[torch.Tensor, object]:
    """Next-token loss over the labelled positions; logits computed only there when ``sparse``.

    ``loss_fn(logits, targets)`` returns the summed loss (default: cross-entropy); a plug-in
    loss (``training.loss``) takes its place, on either path.  With ``shared_prefix`` (the
    model's costs) a sparse batch whose rows begin alike runs as one packed row, its shared
    prefix computed once (:mod:`.shared_prefix`); the logits come in the same order.
    """
    labels = inputs["labels"]
    next_labels = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = next_labels != IGNORE_INDEX
    if "attention_mask" in inputs and inputs["attention_mask"].dim() == 2:
        # A left pad's logit before a labelled first token predicts from padding: not a prediction.
        keep &= inputs["attention_mask"].bool()
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    if sparse:
        keep_logits = keep
        if shared_prefix is not None and set(model_inputs) <= {"input_ids", "attention_mask"}:
            packed = pack_shared_prefix(
                model_inputs["input_ids"], model_inputs.get("attention_mask"), keep, shared_prefix
            )
            if packed is not None:
                model_inputs, keep_logits = packed.inputs, packed.keep
        outputs = model(**model_inputs, logits_to_keep=keep_logits, use_cache=False)
        logits = outputs.logits.float()  # (labelled positions, vocab)
    else:
        outputs = model(**model_inputs, use_cache=False)
        logits = outputs.logits[keep].float()
    targets = next_labels[keep[:, :-1]]
    loss = (loss_fn or cross_entropy)(logits, targets)
    divisor = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    if isinstance(divisor, torch.Tensor):  # what torch.is_tensor tests; mypy narrows on it
        divisor = divisor.to(loss.device)
    return loss / divisor, outputs


class SparseLogitsTrainer(Trainer):
    """A Trainer whose loss computes logits only at labelled positions (when the model allows).

    With a plug-in ``loss_fn`` the loss is always computed here (sparse or not), so that the
    plug-in sees the same (positions, vocabulary) logits either way.
    """

    def __init__(
        self, *args, sparse_logits: bool = True, shared_prefix: bool = True, loss_fn=None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.sparse_logits = sparse_logits and supports_sparse_logits(self.model)
        share = shared_prefix and self.sparse_logits and can_share(self.model)
        self.shared_prefix = ModelCosts.of(self.model) if share else None
        self.loss_fn = loss_fn
        # Token positions the model ran while training (padding included, a shared prefix once),
        # counted where the model is called, whichever loss called it.
        self.positions_computed = 0
        self.model.register_forward_pre_hook(self._count_positions, with_kwargs=True)

    def _count_positions(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if module.training and isinstance(ids, torch.Tensor):
            self.positions_computed += ids.numel()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" not in inputs or (not self.sparse_logits and self.loss_fn is None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = sparse_causal_lm_loss(
            model,
            inputs,
            num_items_in_batch,
            loss_fn=self.loss_fn,
            sparse=self.sparse_logits,
            shared_prefix=self.shared_prefix,
        )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # As Trainer.compute_loss: num_items_in_batch was summed over processes, DDP averages gradients.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss
