"""Keep third-party chatter out of the user's terminal.

transformers, datasets and huggingface_hub draw their own progress bars ("Loading
weights", "Writing model shards") and log warnings about optional kernels that a user can
do nothing about; slmops shows its own progress and writes full logs to ``logs/``.  Call
:func:`quiet_libraries` at the entry points (the local engine, the training processes).
"""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    if os.environ.get("SLMOPS_DEBUG") == "1":  # `slmops --debug`: every library says what it does
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in (
        "transformers",
        "datasets",
        "huggingface_hub",
        "peft",
        "bitsandbytes",
        "accelerate",
        "torch.distributed",
        "onnxruntime",  # its quantizers log every step at INFO (and call logging.basicConfig)
        "neural_compressor",  # onnxruntime's GPTQ
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|accelerate)\..*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # the operator side has no transformers: nothing to quiet
        pass
