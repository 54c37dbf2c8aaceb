"""The progress display: a live bar on terminals, one line per logging step in logs."""

from __future__ import annotations

import io

from rich.console import Console

from slmops_operator.cli.progress import RichReporter

EVENTS = [
    {"event": "train_begin", "total_steps": 10, "step": 4, "resumed_from": 4, "world_size": 1},
    {"event": "step", "step": 5, "total_steps": 10, "eta_seconds": 12.4},
    {"event": "log", "step": 5, "loss": 0.5},
    {"event": "log", "step": 5, "eval_loss": 0.75},
    {"event": "train_end", "step": 10},
]


def render(terminal: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=100, color_system=None)
    with RichReporter(console) as reporter:
        for event in EVENTS:
            reporter.training_event(event)
    return out.getvalue()


def test_log_mode_prints_step_loss_and_eta():
    text = render(terminal=False)
    assert "resuming from checkpoint at step 4" in text
    assert "step 5/10: loss 0.5000, ETA 12s" in text
    assert "step 5: eval loss 0.7500" in text


def test_terminal_mode_draws_a_bar():
    text = render(terminal=True)
    assert "training" in text and "loss 0.5000" in text and "10/10" not in text
