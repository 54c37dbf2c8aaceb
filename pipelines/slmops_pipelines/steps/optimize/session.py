"""onnxruntime settings baked into a target's ``genai_config.json``: the speed reported is the speed shipped.

onnxruntime-genai reads ``model.decoder.session_options`` from the folder it loads, so settings
written there travel with the artifact: a user who runs ``onnxruntime_genai.Model(folder)`` gets
them, and so does the job's own evaluation, which loads every target exactly that way.

* **threads**: onnxruntime sizes its intra-op pool from the physical cores it detects, which
  on virtual machines is often fewer than the CPUs a process may use: on a 2-vCPU VM it picks
  one thread, and SmolLM2-135M's int4 target decodes at 68 tokens/s instead of 110.  The
  default is what the optimize step itself may use (:func:`slmops_pipelines.steps.cpus.usable_cpus`,
  its cgroup limit in a pod); ``runtime.threads`` sets the serving machine's count.
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
from slmops_pipelines.steps.cpus import usable_cpus

SPINNING_KEY = "session.intra_op.allow_spinning"


def session_options(runtime: TargetRuntime) -> dict[str, Any]:
    """The ``session_options`` entries a target's runtime settings stand for."""
    threads = runtime.threads if runtime.threads is not None else usable_cpus()
    return {
        "intra_op_num_threads": threads,
        "graph_optimization_level": "ORT_ENABLE_ALL",
        # Unknown keys are passed to onnxruntime as session config entries, whose values are strings.
        SPINNING_KEY: "1" if runtime.spin else "0",
    }


def bake_session_options(folder: Path, runtime: TargetRuntime) -> dict[str, Any]:
    """Write the runtime settings into ``folder/genai_config.json``; return what was written."""
    path = folder / "genai_config.json"
    config = json.loads(path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    written = session_options(runtime)
    options.update(written)
    path.write_text(json.dumps(config, indent=4))
    return written
