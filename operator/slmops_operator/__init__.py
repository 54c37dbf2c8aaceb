"""slmops operator: the Kubernetes face of slmops.

* ``api``  -- the custom resources (FineTuneJob, OptimizeJob) as pydantic models, the CRDs
              generated from them, and manifest loading/validation.
* ``cli``  -- the ``slmops`` command.

This package depends on ``slmops_pipelines`` (never the other way round) and must import
without torch: the operator image does not ship it.
"""

__version__ = "0.1.0"
