"""``spec.search``: one FineTuneJob tries many recipes and keeps the best.

The space is over training and LoRA settings, each a range (``low``/``high``, on a log
scale if asked) or a list of ``values``.  Names are the spec's own paths, so that a
trial's settings read like the spec they override::

    search:
      strategy: tpe          # grid | random | tpe (Optuna)
      trials: 8
      parallelism: 2
      metric: eval_loss      # eval_loss | train_loss | accuracy | any evaluation.metrics name
      space:
        training.learningRate: {low: 1.0e-4, high: 3.0e-3, log: true}
        lora.r: {values: [8, 16, 32]}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from slmops_pipelines.specs.base import SpecModel

Strategy = Literal["grid", "random", "tpe"]

# Parameter -> (kind, bounds that make sense).  A registry, not an if-chain: the trial
# runner applies a parameter by its dotted path; this table says which paths exist.
PARAMETERS: dict[str, tuple[str, float, float]] = {
    "training.learningRate": ("float", 0.0, 1.0),
    "training.warmupRatio": ("float", 0.0, 0.999),
    "training.weightDecay": ("float", 0.0, 1.0),
    "training.batchSize": ("int", 1, 4096),
    "training.gradientAccumulationSteps": ("int", 1, 4096),
    "training.maxSteps": ("int", 1, 10_000_000),
    "lora.r": ("int", 1, 1024),
    "lora.alpha": ("int", 1, 4096),
    "lora.dropout": ("float", 0.0, 0.999),
}
LOSSES = {"eval_loss", "train_loss"}


class SearchParameter(SpecModel):
    """One dimension of the space: a range, or a list of values."""

    low: float | None = Field(default=None, description="Lower bound (inclusive).")
    high: float | None = Field(default=None, description="Upper bound (inclusive).")
    log: bool = Field(default=False, description="Sample the range on a log scale (learning rates).")
    values: list[float] | None = Field(default=None, min_length=1, description="The values to try.")

    @model_validator(mode="after")
    def _range_or_values(self) -> SearchParameter:
        if self.values is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give values or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or give values)")
        if self.low >= self.high:
            raise ValueError(f"empty or inverted range: low {self.low:g} >= high {self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self

    @property
    def bounds(self) -> tuple[float, float]:
        """``(low, high)`` of a range (the validator has checked it has both); ValueError for values."""
        if self.low is None or self.high is None:
            raise ValueError("a parameter given by values has no range")
        return self.low, self.high


class SearchSpec(SpecModel):
    """Hyperparameter search: trials of the same job with different settings; the best one wins."""

    strategy: Strategy = Field(default="random", description="grid, random, or tpe (Optuna's TPE).")
    trials: int = Field(
        default=8, ge=1, le=1000, description="Trials to run (grid: at most the grid's size)."
    )
    parallelism: int = Field(default=1, ge=1, le=64, description="Trials run side by side.")
    metric: str = Field(
        default="eval_loss",
        description="What decides the best trial: eval_loss, train_loss, accuracy, or an evaluation.metrics name.",
    )
    direction: Literal["minimize", "maximize"] | None = Field(
        default=None, description="Default: minimize for losses, maximize otherwise."
    )
    space: dict[str, SearchParameter] = Field(min_length=1, description="Parameter path -> range or values.")
    pruning: Literal["none", "median"] = Field(
        default="median",
        description="Stop a trial whose eval loss is worse than the median of others at that step.",
    )
    seed: int = Field(default=0, ge=0, description="Seed of the sampler: the same seed, the same trials.")

    @model_validator(mode="after")
    def _check(self) -> SearchSpec:
        for name, parameter in self.space.items():
            if name not in PARAMETERS:
                raise ValueError(f"unknown parameter {name!r}; known: {', '.join(sorted(PARAMETERS))}")
            kind, lowest, highest = PARAMETERS[name]
            if parameter.values is not None:
                bounds = parameter.values
            else:  # a range: SearchParameter has checked that it has both ends
                bounds = [end for end in (parameter.low, parameter.high) if end is not None]
            for value in bounds:
                if not lowest <= value <= highest:
                    raise ValueError(f"{name}: {value:g} is outside [{lowest:g}, {highest:g}]")
                if kind == "int" and value != int(value):
                    raise ValueError(f"{name}: {value:g} is not an integer")
            if self.strategy == "grid" and parameter.values is None and kind != "int":
                raise ValueError(f"{name}: a grid needs values (or an integer range)")
        if self.parallelism > self.trials:
            raise ValueError(f"parallelism ({self.parallelism}) is more than trials ({self.trials})")
        return self

    @property
    def goal(self) -> Literal["minimize", "maximize"]:
        return self.direction or ("minimize" if self.metric in LOSSES else "maximize")
