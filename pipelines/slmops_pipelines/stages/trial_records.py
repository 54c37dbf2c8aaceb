"""Each search trial's state in the output location: written by the trials, counted for status.

A trial writes ``.slmops/trials/trial-NNN.json`` when it starts (RUNNING) and when it ends
(COMPLETE, PRUNED or FAIL, with its value); the operator reads them for
``status.progress.trials`` while the run goes on.  A new run clears them first.
"""

from __future__ import annotations

import json
from typing import Any

from slmops_pipelines.specs import FineTuneJobSpec
from slmops_pipelines.storage import ArtifactStore

TRIALS_PREFIX = ".slmops/trials"


def trial_recorder(output_uri: str, number: int):
    """Each trial's state in the output location, where the operator counts them for status."""
    from slmops_pipelines.storage import open_store

    store = open_store(output_uri)

    def record(state: dict[str, Any]) -> None:
        try:
            store.write_text(f"{TRIALS_PREFIX}/trial-{number:03d}.json", json.dumps(state))
        except Exception as exc:  # best effort: status, not results
            print(f"[slmops] could not record trial {number}: {exc}", flush=True)

    return record


def trial_counts(store: ArtifactStore, spec: FineTuneJobSpec) -> dict[str, Any] | None:
    """total/done/running/pruned/failed/bestTrial/bestValue from the recorded trials (None: no search)."""
    if spec.search is None:
        return None
    states = [json.loads(store.read_text(info.key)) for info in store.list(TRIALS_PREFIX)]
    done = [t for t in states if t["state"] != "RUNNING"]
    complete = [t for t in done if t["state"] == "COMPLETE" and t["value"] is not None]
    pick = max if spec.search.goal == "maximize" else min
    best = pick(complete, key=lambda t: t["value"]) if complete else None
    return {
        "total": spec.search.trials,
        "done": len(done),
        "running": len(states) - len(done),
        "pruned": sum(t["state"] == "PRUNED" for t in done),
        "failed": sum(t["state"] == "FAIL" for t in done),
        "bestTrial": best["trial"] if best else None,
        "bestValue": best["value"] if best else None,
    }


def clear_trials(output_uri: str) -> None:
    """A previous run's trials are not this run's."""
    from slmops_pipelines.storage import open_store

    open_store(output_uri).delete_prefix(TRIALS_PREFIX)
