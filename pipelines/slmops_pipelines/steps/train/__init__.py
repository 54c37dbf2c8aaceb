"""The training step: transformers Trainer + PEFT, launched with torchrun.

* :mod:`.launch`   -- runs the step as ``torchrun --nproc-per-node N`` (the parent side);
* :mod:`.__main__` -- the entry point each torchrun process executes;
* :mod:`.trainer`  -- builds the model, data and ``transformers.Trainer`` and trains;
* :mod:`.sparse_logits` -- the Trainer whose loss computes logits only at labelled positions;
* :mod:`.losses`   -- the loss functions by name: cross-entropy built in, plug-ins;
* :mod:`.callbacks` -- progress events, complete-checkpoint marking;
* :mod:`.checkpoints` -- finding the checkpoint to resume from;
* :mod:`.methods`  -- lora, qlora, dora, full.
"""

from slmops_pipelines.steps.train.request import TrainRequest, TrainResult

__all__ = ["TrainRequest", "TrainResult"]
