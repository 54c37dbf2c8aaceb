"""The embedded engine: run a whole job on this machine by calling the steps in order.

This is what ``slmops run job.yaml`` uses, what the operator's ``local`` backend runs in a
worker process, and what the tests drive.  The KFP pipelines call the very same steps.
"""

from slmops_pipelines.local.finetune import run_finetune
from slmops_pipelines.local.reporting import NullReporter, Reporter
from slmops_pipelines.stages.outputs import JobOutcome

__all__ = ["JobOutcome", "NullReporter", "Reporter", "run_finetune"]
