"""Running an exported target with onnxruntime-genai (the runtime it is deployed with).

A target is loaded as ``genai_config.json`` ships it, with the session settings the export
wrote (:mod:`.session`: spinning, and a thread count only where ``runtime.threads`` asked).
Two things are chosen here, on the machine that loads it: the provider (a folder may be
measured on another machine than the one it names) and, where the folder names no thread
count, the pool size: the CPUs this process may use (its cgroup quota included), never the
build machine's.  ``threads`` overrides both (``slmops serve --threads``, benchmarks at
equal threads); :attr:`GenaiEngine.threads` is the count the model runs with.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from slmops_pipelines.steps.cpus import usable_cpus
from slmops_pipelines.steps.optimize.measure import OneAtATime, log_softmax_at


def shipped_threads(folder: Path) -> int | None:
    """The thread count the folder's genai_config.json names (``runtime.threads``), if any."""
    config = json.loads((folder / "genai_config.json").read_text())
    options = config.get("model", {}).get("decoder", {}).get("session_options", {})
    count = options.get("intra_op_num_threads")
    return int(count) if count else None


class GenaiEngine(OneAtATime):
    def __init__(
        self,
        folder: Path,
        *,
        provider: str = "cpu",
        adapters: dict[str, Path] | None = None,
        threads: int | None = None,
        as_shipped: bool = False,
    ) -> None:
        """``as_shipped``: the threads exactly as plain ``onnxruntime_genai.Model`` takes them (the
        folder's count, else onnxruntime's own choice: ``threads`` is then None) -- benchmarks'
        figure of what a user who loads the folder alone gets."""
        import onnxruntime_genai as og

        self._og = og
        self.folder = folder
        config = og.Config(str(folder))
        self.threads: int | None = shipped_threads(folder)
        if not as_shipped:
            self.threads = threads or self.threads or usable_cpus()
            config.overlay(
                json.dumps(
                    {"model": {"decoder": {"session_options": {"intra_op_num_threads": self.threads}}}}
                )
            )
        config.clear_providers()
        if provider != "cpu":
            config.append_provider(provider)
        self.model = og.Model(config)
        self.adapters = None
        self.active_adapter: str | None = None
        if adapters:
            self.adapters = og.Adapters(self.model)
            for name, path in adapters.items():
                self.adapters.load(str(path), name)

    def use_adapter(self, name: str | None) -> None:
        self.active_adapter = name

    def generator(
        self, max_length: int, *, min_length: int = 0, search: dict[str, float | int | bool] | None = None
    ):
        """A generator with the active adapter set; greedy unless ``search`` says otherwise.

        ``search``: onnxruntime-genai's other search options (do_sample, temperature, top_p,
        random_seed), as ``slmops generate`` passes them.
        """
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(
            **{"do_sample": False, **(search or {}), "max_length": max_length, "min_length": min_length}
        )
        generator = self._og.Generator(self.model, params)
        if self.active_adapter:
            generator.set_active_adapter(self.adapters, self.active_adapter)
        return generator

    def greedy(
        self, prompt_ids: list[int], max_new_tokens: int, *, ignore_eos: bool = False, on_token=None
    ) -> list[int]:
        total = len(prompt_ids) + max_new_tokens
        generator = self.generator(total, min_length=total if ignore_eos else 0)
        generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
        out: list[int] = []
        while not generator.is_done() and len(out) < max_new_tokens:
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
            if on_token:
                on_token()
        return out

    @cached_property
    def pruned(self) -> bool:
        """Whether the graph gives the last position's logits only (steps/optimize/logits.py)."""
        from slmops_pipelines.steps.optimize.logits import has_pruned_logits

        return has_pruned_logits(self.folder)

    def answer_nll(self, prompt_ids: list[int], answer_ids: list[int]) -> float:
        """The answer's negative log-likelihood given the prompt: one prefill of both where the
        graph gives every position's logits, else the answer fed one token at a time."""
        if self.pruned:
            return self._answer_nll_by_token(prompt_ids, answer_ids)
        sequence = prompt_ids + answer_ids
        generator = self.generator(len(sequence) + 1)
        generator.append_tokens(np.asarray(sequence, dtype=np.int32))
        logits = np.asarray(generator.get_output("logits"))[0]  # (positions, vocab) after prefill
        start = len(prompt_ids) - 1  # the logits at position p predict token p + 1
        return -sum(log_softmax_at(logits[start + i], token) for i, token in enumerate(answer_ids))

    def _answer_nll_by_token(self, prompt_ids: list[int], answer_ids: list[int]) -> float:
        generator = self.generator(len(prompt_ids) + len(answer_ids) + 1)
        generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
        nll = 0.0
        for i, token in enumerate(answer_ids):
            if i:  # the answer so far: the logits that predict this token
                generator.append_tokens(np.asarray([answer_ids[i - 1]], dtype=np.int32))
            nll -= log_softmax_at(np.asarray(generator.get_output("logits"))[0, -1], token)
        return nll
