"""onnxruntime settings baked into a target's ``genai_config.json``: the speed reported is the speed shipped.

onnxruntime-genai reads ``model.decoder.session_options`` from the folder it loads, so settings
written there travel with the artifact: a user who runs ``onnxruntime_genai.Model(folder)`` gets
them, and so does the job's own evaluation, which loads every target exactly that way.

* **threads**: only when ``runtime.threads`` asks for a count.  A count is a fact of the
  machine that runs the model, not of the one that built it: a target built in a 1-CPU
  optimize pod and served on 2 CPUs decoded at 0.55x with the builder's count baked in, and a
  big build node's count oversubscribes a small serving pod.  Without one, slmops' own loaders
  (``serve``, ``generate``, ``chat``, the job's evaluation) size the pool where they load the
  folder (:class:`~slmops_pipelines.steps.optimize.runtime.GenaiEngine`: the CPUs the process
  may use, its cgroup quota included), and plain ``onnxruntime_genai.Model`` runs it with
  onnxruntime-genai's own thread setup, which decodes at about one thread's speed on 2 vCPUs
  (the demo's int4 target: about 100 tokens/s, against about 200 with the count 2 written or
  with 0, onnxruntime's default of one thread per core of the loading machine;
  ``runtime.threads: 0`` writes that, and docs/serving.md says which to choose).  0 is not
  the default because onnxruntime's count ignores a pod's CPU limit: a 2-CPU pod on a big
  node would spin a thread per core of the node.
* **spinning**: a decoded token is hundreds of kernels of tens of microseconds each; pool
  threads that sleep between them pay a wake-up per kernel (77 against 100 tokens/s here).
  Spinning is onnxruntime's default, written down so that it is visible and can be turned off
  where the CPUs are shared.
* **graph optimization level**: ``ORT_ENABLE_ALL``, onnxruntime's default, written down for
  the same reason.

Anything already in the file's ``session_options`` (an execution provider's options) is kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmops_pipelines.specs.optimize import TargetRuntime

SPINNING_KEY = "session.intra_op.allow_spinning"


def session_options(runtime: TargetRuntime) -> dict[str, Any]:
    """The ``session_options`` entries a target's runtime settings stand for."""
    options: dict[str, Any] = {
        "graph_optimization_level": "ORT_ENABLE_ALL",
        # Unknown keys are passed to onnxruntime as session config entries, whose values are strings.
        SPINNING_KEY: "1" if runtime.spin else "0",
    }
    if runtime.threads is not None:
        options["intra_op_num_threads"] = runtime.threads
    return options


def bake_session_options(folder: Path, runtime: TargetRuntime) -> dict[str, Any]:
    """Write the runtime settings into ``folder/genai_config.json``; return what was written."""
    path = folder / "genai_config.json"
    config = json.loads(path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    written = session_options(runtime)
    options.pop("intra_op_num_threads", None)  # the builder's machine's count, if it wrote one
    options.update(written)
    path.write_text(json.dumps(config, indent=4))
    return written
