"""OpenVINO GenAI measured by slmops' own measuring code: run with the OpenVINO venv's Python.

    .cache/bench/openvino-venv/bin/python bench/openvino_peer.py FOLDER REQUEST.json

bench/optimize.py exports the merged model with optimum-intel (``optimum-cli export openvino``)
into FOLDER, writes REQUEST.json (as for bench/llamacpp_peer.py: the eval rows, the match
mode, the token budget, the latency runs and the thread count) and reads the one JSON line
this prints.  Decoding is ``openvino_genai.LLMPipeline`` as its users run it (greedy, token
ids in, a streamer that stamps each new token); the answer log-likelihoods need logits, which
the pipeline does not return, so they come from optimum-intel's ``OVModelForCausalLM`` over
the same IR files.  The measuring is ``slmops_pipelines.steps.optimize.measure.measure``.

One setting differs from the pipeline's defaults: prefix caching is off.  On CPUs the pipeline
runs its paged-attention backend with a latency-oriented scheduler that keeps the KV cache of
earlier prompts and reuses it for a prompt that starts the same way, and the latency runs repeat
one prompt: every run after the first would skip its prefill, so the prefill time would measure
a cache hit, where the other engines (which keep nothing between requests) compute the prompt.
The rest of that scheduler's configuration is kept (no limit on the tokens of one step).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "pipelines"))

from slmops_pipelines.steps.optimize.measure import OneAtATime  # noqa: E402


def _streamer(on_token):
    """A streamer that calls ``on_token()`` once per generated token and never stops the pipeline."""
    import openvino_genai as ov_genai

    class Stamp(ov_genai.StreamerBase):
        def write(self, token):
            for _ in token if isinstance(token, list) else [token]:
                on_token()
            return ov_genai.StreamingStatus.RUNNING

        def end(self):
            pass

    return Stamp()


def _scheduler_without_prefix_cache():
    """The pipeline's latency-oriented scheduler configuration, prefix caching off (see above)."""
    import openvino_genai as ov_genai

    config = ov_genai.SchedulerConfig()
    config.max_num_batched_tokens = sys.maxsize  # as the latency-oriented default: no limit
    config.enable_prefix_caching = False
    return config


class OpenVinoEngine(OneAtATime):
    """measure()'s Engine over OpenVINO GenAI's LLMPipeline (and optimum-intel for log-likelihoods)."""

    def __init__(self, folder: Path, threads: int | None, eos: int) -> None:
        import openvino_genai as ov_genai

        self.folder, self.eos = folder, eos
        properties: dict = {"scheduler_config": _scheduler_without_prefix_cache()}
        if threads is not None:
            properties["INFERENCE_NUM_THREADS"] = threads
        self.pipe = ov_genai.LLMPipeline(str(folder), "CPU", **properties)
        self.threads = threads
        self._scorer = None  # made on first use: latency-only runs never need it

    def greedy(self, prompt_ids, max_new_tokens, *, ignore_eos=False, on_token=None):
        import numpy as np
        import openvino as ov
        import openvino_genai as ov_genai

        ids = np.asarray([list(prompt_ids)], dtype=np.int64)
        inputs = ov_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        config = ov_genai.GenerationConfig()
        config.max_new_tokens, config.do_sample, config.ignore_eos = max_new_tokens, False, ignore_eos
        streamer = _streamer(on_token) if on_token else None
        result = self.pipe.generate(inputs, config, streamer)
        tokens = [int(t) for t in result.tokens[0]]
        while tokens and tokens[-1] == self.eos and not ignore_eos:
            tokens.pop()
        return tokens

    def answer_nll(self, prompt_ids, answer_ids) -> float:
        import torch

        from slmops_pipelines.steps.optimize.measure import log_softmax_at

        if self._scorer is None:
            from optimum.intel import OVModelForCausalLM

            self._scorer = OVModelForCausalLM.from_pretrained(str(self.folder), compile=True)
        ids = torch.tensor([list(prompt_ids) + list(answer_ids)])
        logits = self._scorer(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float().numpy()
        start = len(prompt_ids) - 1  # the logits at position p predict token p + 1
        return -sum(log_softmax_at(logits[start + i], token) for i, token in enumerate(answer_ids))


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def main() -> int:
    from transformers import AutoTokenizer

    from slmops_pipelines.steps.data import Example
    from slmops_pipelines.steps.optimize.measure import measure

    folder, request_path = Path(sys.argv[1]), sys.argv[2]
    request = json.loads(Path(request_path).read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    engine = OpenVinoEngine(folder, request["threads"], tokenizer.eos_token_id)
    examples = [Example(**row) for row in request["examples"]]
    metrics = measure(
        engine,
        tokenizer,
        examples,
        wanted=set(request["wanted"]),
        match=request["match"],
        max_new_tokens=request["max_new_tokens"],
        size_mb=folder_mb(folder),
        latency_runs=request["latency_runs"],
    )
    print(json.dumps(metrics.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
