"""Fine-tuning methods, one module each, found through a registry (no if-chains).

A method knows how to load the base model for training and how to wrap it (a PEFT adapter,
or nothing for full fine-tuning).  Add a method by writing a module with a
:class:`~.base.TrainingMethod` subclass decorated with :func:`~.base.register` and importing
it below.
"""

from slmops_pipelines.steps.train.methods import dora, full, lora, qlora  # noqa: F401  (registration)
from slmops_pipelines.steps.train.methods.base import METHODS, TrainingMethod, get_method

__all__ = ["METHODS", "TrainingMethod", "get_method"]
