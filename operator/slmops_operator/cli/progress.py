"""A rich progress display for local runs: stages, a training bar (step, loss, ETA)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichReporter:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = None
        self.loss = "-"
        self._stage_started = time.time()

    def __enter__(self) -> RichReporter:
        return self

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.progress.stop()

    def stage(self, name: str, message: str) -> None:
        self.console.print(f"[bold]{name:>9}[/bold]  {message}")

    def info(self, message: str) -> None:
        self.console.print(f"           {message}", style="dim")

    def training_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "train_begin":
            resumed = event.get("resumed_from")
            if resumed:
                self.info(f"resuming from checkpoint at step {resumed}")
            self.progress.start()
            self.task = self.progress.add_task(
                "training", total=event["total_steps"], completed=event.get("step", 0), loss="-"
            )
        elif self.task is None:
            return
        elif kind == "step":
            self.progress.update(self.task, completed=event["step"], total=event["total_steps"])
        elif kind == "log" and "loss" in event:
            self.progress.update(self.task, loss=f"{event['loss']:.4f}")
        elif kind == "log" and "eval_loss" in event:
            self.progress.console.print(
                f"           step {event['step']}: eval loss {event['eval_loss']:.4f}", style="dim"
            )
        elif kind == "train_end":
            self.progress.stop()
            self.task = None
