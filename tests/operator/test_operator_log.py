"""The operator's log: a line per job transition, not kopf's line per handler success."""

from __future__ import annotations

import logging

import kopf
import pytest

from slmops_operator.handlers.status_writer import JobPass
from slmops_operator.runtime import KopfRoutine


@pytest.mark.parametrize(
    "line",
    [
        "Timer 'reconcile-finetunejobs' succeeded.",
        "Handler 'accept-optimizejobs' succeeded.",
        "Creation is processed: 1 succeeded; 0 failed.",
        "Deletion is processed: 1 succeeded; 0 failed.",
    ],
)
def test_kopfs_routine_success_lines_are_dropped(line):
    assert not KopfRoutine().filter(logging.LogRecord("kopf.objects", logging.INFO, "", 0, line, None, None))


@pytest.mark.parametrize(
    "line",
    [
        "Creation is processed: 0 succeeded; 1 failed.",
        "Timer 'reconcile-finetunejobs' failed with an exception. Will retry.",
        "Queued -> Running (RunSubmitted): run ftj-a submitted to the kfp backend",
    ],
)
def test_failures_and_transitions_are_kept(line):
    assert KopfRoutine().filter(logging.LogRecord("kopf.objects", logging.INFO, "", 0, line, None, None))


def test_a_transition_is_one_line_with_both_phases_and_the_reason(caplog, monkeypatch):
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)  # no API to post Events to here
    body = kopf.Body({"metadata": {"name": "ft", "namespace": "a", "uid": "u", "generation": 1}})
    patch = kopf.Patch()
    logger = logging.getLogger("test.job")
    with caplog.at_level(logging.INFO, logger="test.job"):
        JobPass("FineTuneJob", body, {"phase": "Queued"}, patch, logger).go(
            "Running", reason="RunSubmitted", message="run r submitted"
        )
        # The next pass finds it Running: no transition, no line.
        JobPass("FineTuneJob", body, dict(patch.status), kopf.Patch(), logger).go(
            "Running", reason="RunSubmitted", message="run r submitted"
        )
    assert [r.getMessage() for r in caplog.records] == ["Queued -> Running (RunSubmitted): run r submitted"]
    assert patch.status["phase"] == "Running"
