"""The PyTorch reference: the same measurements with transformers (fp32, greedy ``generate``)."""

from __future__ import annotations

import numpy as np

from slmops_pipelines.steps.generation import answer_nlls, greedy_token_answers, pad_of
from slmops_pipelines.steps.optimize.measure import log_softmax_at

BATCH = 16  # prompts answered together (the fine-tuning evaluation's default batch)


class TorchEngine:
    def __init__(self, model, tokenizer) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer

    @property
    def threads(self) -> int:
        """PyTorch's intra-op threads (what the reference's latency was measured with)."""
        import torch

        return torch.get_num_threads()

    def greedy(
        self, prompt_ids: list[int], max_new_tokens: int, *, ignore_eos: bool = False, on_token=None
    ) -> list[int]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _Stamp(StoppingCriteria):  # called once per generated token
            def __call__(self, input_ids, scores, **kwargs):
                if on_token:
                    on_token()
                return torch.zeros(input_ids.shape[0], dtype=torch.bool)

        ids = torch.tensor([prompt_ids])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens if ignore_eos else None,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                stopping_criteria=StoppingCriteriaList([_Stamp()]),
            )
        return out[0, len(prompt_ids) :].tolist()

    def greedy_all(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy answers to many prompts: batches that start from the prompts' shared prefix
        (steps/generation.py), each answer as :meth:`greedy` gives it."""
        return greedy_token_answers(
            self.model,
            prompts,
            pad=pad_of(self.tokenizer),
            eos=self.tokenizer.eos_token_id,
            max_new_tokens=max_new_tokens,
            batch_size=BATCH,
        )

    def answer_nlls(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        """:meth:`answer_nll` of many (prompt, answer) pairs: batches from the prompts' shared
        prefix (steps/generation.py)."""
        return answer_nlls(
            self.model,
            [prompt for prompt, _ in pairs],
            [answer for _, answer in pairs],
            pad=pad_of(self.tokenizer),
            batch_size=BATCH,
        )

    def answer_nll(self, prompt_ids: list[int], answer_ids: list[int]) -> float:
        import torch

        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0].float().numpy()
        start = len(prompt_ids) - 1
        return -sum(
            log_softmax_at(np.asarray(logits[start + i]), token) for i, token in enumerate(answer_ids)
        )
