"""Phases and conditions: the status a job shows for each thing that can happen to it.

Pure functions from (what happened, the current status) to a status patch, so that every
transition is testable without an API server.  Conditions follow the API conventions: a
condition's ``lastTransitionTime`` moves only when its ``status`` changes, and every
condition carries the generation it was computed for.

=============  =========  ==========  ==========  =====================================
phase          Ready      Succeeded   Failed      notes
=============  =========  ==========  ==========  =====================================
Pending        False      Unknown     False       waiting (a dependency, suspended)
Queued         False      Unknown     False       the namespace's running limit is reached
Running        False      Unknown     False       the run is under way
Succeeded      True       True        False       artifacts and metrics are in status
Failed         False      False       True        reason and message say why (and which field)
Cancelled      False      False       False       the run was stopped
=============  =========  ==========  ==========  =====================================

A ``Suspended`` condition is True while ``spec.suspend`` holds the job.  Two conditions say
what is wrong while the job keeps its phase, and recover when it passes:
``BackendAvailable`` (calls to the backend fail) and ``OutputsReadable`` (a succeeded run's
results cannot be read yet).
"""

from __future__ import annotations

import datetime
from typing import Any

from slmops_operator.api.status import PHASES

FINISHED = ("Succeeded", "Failed", "Cancelled")

_TABLE = {
    #            Ready    Succeeded  Failed
    "Pending": ("False", "Unknown", "False"),
    "Queued": ("False", "Unknown", "False"),
    "Running": ("False", "Unknown", "False"),
    "Succeeded": ("True", "True", "False"),
    "Failed": ("False", "False", "True"),
    "Cancelled": ("False", "False", "False"),
}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: str,
    *,
    reason: str,
    message: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Conditions with ``type_`` set; its transition time moves only when its status changes."""
    previous = next((c for c in conditions if c.get("type") == type_), None)
    # The transition time is kept while the status stays; a new or changed status moves it.
    kept = (
        previous.get("lastTransitionTime")
        if previous is not None and previous.get("status") == status
        else None
    )
    condition = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:1024],
        "lastTransitionTime": kept or now(),
        "observedGeneration": generation,
    }
    return [c for c in conditions if c.get("type") != type_] + [condition]


def phase_patch(
    status: dict[str, Any] | None,
    phase: str,
    *,
    reason: str,
    message: str,
    generation: int | None,
    suspended: bool = False,
) -> dict[str, Any]:
    """The status patch for entering (or staying in) ``phase``."""
    assert phase in PHASES, phase
    status = status or {}
    conditions = list(status.get("conditions") or [])
    ready, succeeded, failed = _TABLE[phase]
    for type_, value in (("Ready", ready), ("Succeeded", succeeded), ("Failed", failed)):
        conditions = set_condition(
            conditions, type_, value, reason=reason, message=message, generation=generation
        )
    conditions = set_condition(
        conditions,
        "Suspended",
        "True" if suspended else "False",
        reason="Suspended" if suspended else reason,
        message="spec.suspend is true" if suspended else "",
        generation=generation,
    )
    patch: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "observedGeneration": generation,
        "message": message[:1024],
    }
    if phase == "Running" and not status.get("startTime"):
        patch["startTime"] = now()
    if phase in FINISHED and not status.get("completionTime"):
        patch["completionTime"] = now()
    return patch


def changed(status: dict[str, Any] | None, patch: dict[str, Any]) -> bool:
    """Whether applying ``patch`` would change anything but transition times."""
    status = status or {}

    def strip(conditions):
        return sorted(
            ({k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conditions or []),
            key=lambda c: c.get("type", ""),
        )

    for key, value in patch.items():
        if key == "conditions":
            if strip(value) != strip(status.get("conditions")):
                return True
        elif key in ("startTime", "completionTime"):
            continue
        elif status.get(key) != value:
            return True
    return False


def condition_status(status: dict[str, Any] | None, type_: str) -> str | None:
    """The status ("True", "False", "Unknown") of one condition, None when absent."""
    found = next((c for c in (status or {}).get("conditions") or [] if c.get("type") == type_), None)
    return found.get("status") if found else None


def backend_recovered(conditions: list[dict[str, Any]], *, generation: int | None) -> list[dict[str, Any]]:
    """After a successful backend call: trouble conditions that were False turn True."""
    for type_, reason in (("BackendAvailable", "BackendReachable"), ("OutputsReadable", "OutputsRead")):
        if condition_status({"conditions": conditions}, type_) == "False":
            conditions = set_condition(
                conditions, type_, "True", reason=reason, message="", generation=generation
            )
    return conditions
