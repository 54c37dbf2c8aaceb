"""llama.cpp measured by slmops' own measuring code: run with the llama.cpp venv's Python.

    .cache/bench/llamacpp-venv/bin/python bench/llamacpp_peer.py MODEL.gguf REQUEST.json

bench/optimize.py writes REQUEST.json (the eval rows as prompt/completion/answer text, the
match mode, the token budget, the latency runs and the thread count) and reads the one JSON
line this prints.  The measuring is ``slmops_pipelines.steps.optimize.measure.measure``, the
code every ONNX target and the PyTorch baseline are measured with, so the prompt, the forced
token counts and the percentiles are the same by construction.  llama.cpp's own tokenizer
(the GGUF's, the same BPE vocabulary) encodes the text, chat-template tokens included.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "pipelines"))

from slmops_pipelines.steps.optimize.measure import OneAtATime  # noqa: E402


class LlamaTokenizer:
    """The two calls measure() makes of a tokenizer, answered by llama.cpp's own."""

    def __init__(self, llm) -> None:
        self.llm = llm

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self.llm.tokenize(text.encode(), add_bos=add_special_tokens, special=True)}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.llm.detokenize(ids, special=not skip_special_tokens).decode(errors="replace")


def last_logits(llm):
    """The logits of the last evaluated position (without logits_all, llama-cpp-python keeps no copy)."""
    import numpy as np

    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


class LlamaCppEngine(OneAtATime):
    """measure()'s Engine over llama.cpp: greedy decoding and answer log-likelihoods.

    Two contexts of one model file: decoding keeps the logits of the last position only, as a
    llama.cpp user's does (keeping every position's costs prefill time); the log-likelihoods of
    an answer need every position's, so they come from a second context that keeps them all.
    """

    def __init__(self, llm, scoring) -> None:
        self.llm = llm
        self._make_scoring = scoring  # made on first use: latency-only runs never need it
        self._scoring = None
        self.eos = llm.token_eos()

    def greedy(self, prompt_ids, max_new_tokens, *, ignore_eos=False, on_token=None):
        import numpy as np

        llm = self.llm
        llm.reset()
        llm.eval(prompt_ids)
        out: list[int] = []
        while len(out) < max_new_tokens:
            token = int(np.argmax(last_logits(llm)))
            if token == self.eos and not ignore_eos:
                break
            out.append(token)
            if on_token:
                on_token()
            if len(out) < max_new_tokens:
                llm.eval([token])
        return out

    def answer_nll(self, prompt_ids, answer_ids) -> float:
        from slmops_pipelines.steps.optimize.measure import log_softmax_at

        if self._scoring is None:
            self._scoring = self._make_scoring()
        llm = self._scoring
        llm.reset()
        llm.eval(list(prompt_ids) + list(answer_ids))
        start = len(prompt_ids) - 1  # the logits at position p predict token p + 1
        return -sum(log_softmax_at(llm.scores[start + i], token) for i, token in enumerate(answer_ids))


def main() -> int:
    from llama_cpp import Llama

    from slmops_pipelines.steps.data import Example
    from slmops_pipelines.steps.optimize.measure import measure

    model, request_path = sys.argv[1], sys.argv[2]
    request = json.loads(Path(request_path).read_text())

    def context(*, logits_all: bool) -> Llama:
        threads = request["threads"]  # None: llama-cpp-python's own default, as a user gets it
        return Llama(
            model_path=model,
            n_ctx=512,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=logits_all,
            verbose=False,
        )

    llm = context(logits_all=False)
    examples = [Example(**row) for row in request["examples"]]
    metrics = measure(
        LlamaCppEngine(llm, lambda: context(logits_all=True)),
        LlamaTokenizer(llm),
        examples,
        wanted=set(request["wanted"]),
        match=request["match"],
        max_new_tokens=request["max_new_tokens"],
        size_mb=os.path.getsize(model) / 2**20,
        latency_runs=request["latency_runs"],
    )
    print(json.dumps(metrics.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
