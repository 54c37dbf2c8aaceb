"""How the engine tells its caller what is happening (a progress bar, a status, a log)."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def stage(self, name: str, message: str) -> None:
        """A new stage began (model, data, train, evaluate, report, publish)."""

    def training_event(self, event: dict) -> None:
        """An event from the training processes (train_begin, step, log, save, evaluate, ...)."""

    def info(self, message: str) -> None:
        """Something worth telling the user."""

    def search_progress(self, counts: dict) -> None:
        """A hyperparameter search's trials so far (total, done, running, pruned, failed, bestTrial, bestValue)."""


class NullReporter:
    def stage(self, name: str, message: str) -> None:
        pass

    def training_event(self, event: dict) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def search_progress(self, counts: dict) -> None:
        pass
