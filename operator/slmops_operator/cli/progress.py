"""A rich progress display for local runs: stages, a training bar (step, loss, ETA).

On a terminal the bar redraws in place; in a log (CI, ``kubectl logs``, a pipe) a live bar
would print nothing until the end, so each logging step becomes one plain line instead.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
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
        )
        self.task: TaskID | None = None
        self.total_steps: int | None = None
        self.eta_seconds: float | None = None

    def __enter__(self) -> RichReporter:
        return self

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.progress.stop()

    def stage(self, name: str, message: str) -> None:
        self.console.print(f"[bold]{escape(name):>9}[/bold]  {escape(message)}")

    def info(self, message: str) -> None:
        self.console.print(f"           {escape(message)}", style="dim")

    def search_progress(self, counts: dict) -> None:
        if counts["running"] == 0 and counts["done"] == 0:
            return
        best = (
            ""
            if counts.get("bestTrial") is None
            else f", best: trial {counts['bestTrial']} ({counts['bestValue']:.4g})"
        )
        self.info(
            f"trials {counts['done']}/{counts['total']} done, {counts['running']} running, "
            f"{counts['pruned']} pruned, {counts['failed']} failed{best}"
        )

    def training_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "train_begin":
            self.total_steps = event["total_steps"]
            if event.get("resumed_from"):
                self.info(f"resuming from checkpoint at step {event['resumed_from']}")
        if self.console.is_terminal:
            self._update_bar(kind, event)
        else:
            self._log_line(kind, event)

    def _update_bar(self, kind: str | None, event: dict) -> None:
        if kind == "train_begin":
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

    def _log_line(self, kind: str | None, event: dict) -> None:
        if kind == "step":
            self.eta_seconds = event.get("eta_seconds")
        elif kind == "log" and "loss" in event:
            eta = f", ETA {self.eta_seconds:.0f}s" if self.eta_seconds is not None else ""
            self.info(f"step {event['step']}/{self.total_steps}: loss {event['loss']:.4f}{eta}")
        elif kind == "log" and "eval_loss" in event:
            self.info(f"step {event['step']}: eval loss {event['eval_loss']:.4f}")
