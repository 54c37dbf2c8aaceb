"""Run an OptimizeJob locally: the stages of :mod:`slmops_pipelines.stages.optimize` in one process.

Every target is built into its own folder, then evaluated with onnxruntime-genai next to
the fine-tuned PyTorch model (merged, fp32: the fair baseline) and the base model.  Targets
whose provider this machine lacks are built and reported ``skipped: provider not
available``.  Violated gates fail the job after metrics and report are written, and no
manifest is written: the output is not a success.
"""

from __future__ import annotations

import shutil
import time

from slmops_pipelines.local.reporting import NullReporter, Reporter
from slmops_pipelines.models import input_cache
from slmops_pipelines.quiet import quiet_libraries
from slmops_pipelines.specs import OptimizeJobSpec
from slmops_pipelines.stages import optimize as stages
from slmops_pipelines.stages.optimize import GateError, JobLocator
from slmops_pipelines.stages.outputs import JobOutcome, JobRun, open_output, work_dir
from slmops_pipelines.stages.preflight import check_optimize, raise_findings
from slmops_pipelines.stages.usage import metered
from slmops_pipelines.steps import publish

PREPARED = "prepared"


@input_cache.one_run()  # an input replaced while the job runs fails it; never two versions
def run_optimize(run: JobRun, *, locate_job: JobLocator, reporter: Reporter | None = None) -> JobOutcome:
    """Run the job to completion (or find it complete); raise JobError with a clear message on failure."""
    reporter = reporter or NullReporter()
    quiet_libraries()
    started = time.time()
    spec: OptimizeJobSpec = run.spec
    output_uri = run.output_uri
    identity = run.identity()
    reporter.stage("output", f"checking {output_uri}")
    store, finished = open_output(output_uri, identity)
    if finished is not None:
        reporter.info(f"{output_uri} already holds this job's finished output: nothing to do")
        return JobOutcome(store.uri, publish.read_json(store, "metrics.json") or {}, already_complete=True)
    reporter.stage("preflight", "the model, its adapters and the evaluation data")
    raise_findings(check_optimize(spec, locate_job=locate_job))
    work = work_dir(store)
    prepared = work / PREPARED

    with metered(store, "prepare"):  # the output is claimed: its usage records are this job's
        stages.prepare_source(spec, locate_job=locate_job, prepared_dir=prepared, say=reporter.stage)
    results = []
    for name_ in stages.target_names(spec):
        with metered(store, "target"):
            results.append(
                stages.build_target(
                    spec,
                    target_name=name_,
                    prepared_dir=prepared,
                    targets_dir=work / "targets",
                    say=reporter.stage,
                )
            )

    reporter.stage("report", "metrics, comparison and report")
    wall = time.time() - started
    metrics_doc = stages.write_report(
        run, prepared_dir=prepared, results=results, out_dir=work, wall_time_s=wall, started_at=started
    )
    # The merged copy of base + adapter and the rendered rows are inputs, not outputs.
    shutil.rmtree(prepared, ignore_errors=True)
    if not stages.violated_gates(metrics_doc):
        reporter.stage("publish", f"writing {output_uri}")
    artifacts = stages.publish_output(
        store, spec=spec, identity=identity, out_dir=work, metrics_doc=metrics_doc
    )
    return JobOutcome(store.uri, metrics_doc, artifacts)


__all__ = ["GateError", "run_optimize"]
