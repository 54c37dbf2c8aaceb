"""Greedy answers to many prompts, and their answers' likelihoods, with transformers: the
prompts' shared prefix computed once.

An evaluation's prompts mostly begin alike: the chat template's system prompt and the prompt
template's instruction are the same tokens in every row (the demo: 49 of about 65), and a
plain batch computes them again for each row, which is most of what its answers cost (each
answer is a few tokens).  Here the shared prefix runs once; each batch starts from a copy of
its key-value cache, with each row's own tokens after it, left-padded *after* the prefix:
``prefix, pad..., row``.  transformers takes the position ids from the attention mask's
running count, so a row's tokens sit where they sit in the plain batch and the padding is
masked out, and every answer is computed as it is there (up to float rounding).

It applies when the prompts share a prefix worth the check below, the model's cache is the
plain key-value kind (no linear-attention or convolution state, which a padding token in the
middle would enter; no sliding window, which a long prompt would cross), and the model passes
a check on two of the prompts: the first answer token's logits from the cache (through
``generate``, as answers are made, and through one forward, as likelihoods are) must agree
with plain ``generate``'s.  Elsewhere the prompts run as plain left-padded batches.  Either
way prompts are batched by length (less padding) and the answers come back in the prompts'
order.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MIN_PREFIX = 8  # shorter shared prefixes save less than the check costs
AGREEMENT = {"float32": 1e-3, "other": 5e-2}  # the check's tolerance, relative to the logits' range


def greedy_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """The greedy answer to each prompt (special tokens dropped), in the prompts' order."""
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    answers = greedy_token_answers(
        model,
        rows,
        pad=pad_of(tokenizer),
        eos=tokenizer.eos_token_id,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    return [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in answers]


def pad_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that pads a batch's rows: the tokenizer's, else its end token (masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def greedy_token_answers(
    model: PreTrainedModel,
    rows: list[list[int]],
    *,
    pad: int,
    eos: int | list[int] | None,
    max_new_tokens: int,
    batch_size: int,
) -> list[list[int]]:
    """The greedy answer's tokens to each row of prompt tokens, in the rows' order (up to and
    including an end token; nothing after it)."""
    import torch

    model.eval()
    generate = _Generator(model, pad, eos, max_new_tokens)
    answers: list[list[int]] = [[] for _ in rows]
    with torch.inference_mode():
        prefix = generate.shared_prefix(rows)
        for picked in _by_length(rows, batch_size):
            for i, tokens in zip(picked, generate([rows[i] for i in picked], prefix), strict=True):
                answers[i] = _up_to_the_end(tokens, eos)
    return answers


def _by_length(rows: list[list[int]], batch_size: int) -> list[list[int]]:
    """The rows' indices in batches of similar length (less padding)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _up_to_the_end(tokens: list[int], eos: int | list[int] | None) -> list[int]:
    """A batch pads the rows that ended before the others: what follows the end token goes."""
    ends = {eos} if isinstance(eos, int) else set(eos or ())
    for position, token in enumerate(tokens):
        if token in ends:
            return tokens[: position + 1]
    return tokens


def answer_nlls(
    model: PreTrainedModel,
    prompts: list[list[int]],
    answers: list[list[int]],
    *,
    pad: int,
    batch_size: int,
) -> list[float]:
    """Each answer's negative log-likelihood given its prompt (the sum over its tokens), in the
    rows' order: batches from the prompts' shared prefix, as :func:`greedy_token_answers`."""
    import torch

    model.eval()
    score = _Generator(model, pad, None, 0)
    rows = [p + a for p, a in zip(prompts, answers, strict=True)]
    nlls = [0.0] * len(rows)
    with torch.inference_mode():
        prefix = score.shared_prefix(prompts)
        for picked in _by_length(rows, batch_size):
            keep = max(len(answers[i]) for i in picked) + 1  # the logits that predict the answers
            logits = score.last_logits([rows[i] for i in picked], prefix, keep)
            for b, i in enumerate(picked):
                nlls[i] = _nll(logits[b], answers[i])
    return nlls


def _nll(logits: torch.Tensor, answer: list[int]) -> float:
    """``logits``: the row's last positions, the last one after the answer's last token."""
    import torch

    if not answer:
        return 0.0
    predicting = logits[-len(answer) - 1 : -1].float().cpu()
    picked = torch.log_softmax(predicting, dim=-1)[torch.arange(len(answer)), torch.tensor(answer)]
    return -float(picked.double().sum())


def shared_prefix_length(rows: list[list[int]]) -> int:
    """How many tokens every row begins with, leaving each row one token of its own at least
    (an answer starts from the logits of a prompt's last token, which the prefix cannot give
    every row)."""
    if not rows:
        return 0
    first, shortest = rows[0], min(len(r) for r in rows)
    length = 0
    while length < shortest - 1 and all(r[length] == first[length] for r in rows):
        length += 1
    return length


class _Generator:
    """``model.generate`` over batches of token rows, from a shared prefix's cache or plain."""

    def __init__(
        self, model: PreTrainedModel, pad: int, eos: int | list[int] | None, max_new_tokens: int
    ) -> None:
        self.model, self.pad, self.eos, self.max_new_tokens = model, pad, eos, max_new_tokens

    def __call__(self, rows: list[list[int]], prefix: _Prefix | None) -> list[list[int]]:
        ids, mask = self._padded(rows, prefix.tokens if prefix else [])
        extra = {"cache": prefix.copied(len(rows))} if prefix else {}
        out = self._generate(ids, mask, self.max_new_tokens, **extra)
        return out[:, ids.shape[1] :].tolist()

    def last_logits(self, rows: list[list[int]], prefix: _Prefix | None, keep: int) -> torch.Tensor:
        """One forward of the rows (from the prefix's cache where given): the logits of each
        row's last ``keep`` positions, (rows, keep, vocabulary)."""
        start = len(prefix.tokens) if prefix else 0
        ids, mask = self._padded(rows, prefix.tokens if prefix else [])
        # As generate numbers them: the count of real tokens before, padding skipped.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = self.model.device
        extra: dict[str, Any] = {"cache": prefix.copied(len(rows))} if prefix else {"use_cache": False}
        if _accepts(self.model, "logits_to_keep"):
            extra["logits_to_keep"] = keep
        out = self.model(
            input_ids=ids[:, start:].to(device),
            attention_mask=mask.to(device),
            position_ids=positions[:, start:].to(device),
            **extra,
        )
        return out.logits[:, -keep:]

    def shared_prefix(self, rows: list[list[int]]) -> _Prefix | None:
        """The rows' shared prefix, computed once, when it is worth it and the model passes the
        check; None otherwise."""
        length = shared_prefix_length(rows)
        if length < MIN_PREFIX or len(rows) < 4:
            return None
        try:
            prefix = self._prefix(rows[0][:length])
            if prefix is None or not self._agrees(rows, prefix):
                return None
        except Exception as error:  # a cache this code does not know: the plain batches answer
            log.info("prompts' shared prefix not reused: %s", error)
            return None
        return prefix

    def _prefix(self, tokens: list[int]) -> _Prefix | None:
        import torch
        from transformers import DynamicCache

        out = self.model(input_ids=torch.tensor([tokens], device=self.model.device), use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if not isinstance(cache, DynamicCache) or type(cache) is not DynamicCache:
            log.debug("no shared prefix: the model's cache is %s", type(cache).__name__)
            return None
        if any(cache.is_linear) or any(cache.is_sliding):
            log.debug("no shared prefix: the model's cache is %s", type(cache).__name__)
            return None
        return _Prefix(tokens, cache)

    def _agrees(self, rows: list[list[int]], prefix: _Prefix) -> bool:
        """The first answer token's logits of two rows of unequal length (the shorter padded
        between prefix and row), from the cache (through ``generate`` and through one forward,
        as answers and likelihoods are computed) against plain ``generate``."""
        import torch

        pair = [min(rows, key=len), max(rows, key=len)]
        ids, mask = self._padded(pair, prefix.tokens)
        cached = self._generate(ids, mask, 1, cache=prefix.copied(2), output_logits=True).logits[0]
        forward = self.last_logits(pair, prefix, 1)[:, -1]
        ids, mask = self._padded(pair, [])
        plain = self._generate(ids, mask, 1, output_logits=True).logits[0].float()
        tolerance = AGREEMENT["float32" if cached.dtype == torch.float32 else "other"]
        scale = float(plain.abs().max()) or 1.0
        agrees = all(
            torch.allclose(found.float(), plain, rtol=0.0, atol=tolerance * scale)
            for found in (cached, forward)
        )
        if not agrees:
            log.info("prompts' shared prefix not reused: the model's answers differ from its cache")
        return agrees

    def _padded(self, rows: list[list[int]], prefix: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``prefix, pad..., row`` for each row (the rows' own tokens after ``len(prefix)``)."""
        import torch

        own = [r[len(prefix) :] for r in rows]
        width = max(len(r) for r in own)
        ids = [prefix + [self.pad] * (width - len(r)) + r for r in own]
        mask = [[1] * len(prefix) + [0] * (width - len(r)) + [1] * len(r) for r in own]
        return torch.tensor(ids), torch.tensor(mask)

    def _generate(self, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, **extra: Any) -> Any:
        device = self.model.device
        return self.model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=self.pad,
            eos_token_id=self.eos,
            return_dict_in_generate=bool(extra.get("output_logits")),
            **extra,
        )


class _Prefix:
    """The shared prefix's tokens and key-value cache; each batch decodes from a copy."""

    def __init__(self, tokens: list[int], cache: Any) -> None:
        self.tokens, self.cache = tokens, cache

    def copied(self, rows: int) -> Any:
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache


def _accepts(model: Any, argument: str) -> bool:
    """Whether the model's forward (under a PEFT wrapper, its base's) takes ``argument``."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(base.forward).parameters
