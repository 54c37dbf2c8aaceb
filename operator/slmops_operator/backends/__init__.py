"""Backends: where the operator's jobs actually run.

* :mod:`.kfp` -- a Kubeflow Pipelines run per job (the default in a cluster);
* :mod:`.local` -- a worker process next to the operator running the local engine (laptops,
  tests, clusters without KFP).

Both implement :class:`.base.Backend`: ``submit`` (idempotent: it finds the run a previous
attempt started before starting one), ``state`` and ``cancel``.  The handlers know nothing
else about them.
"""

from slmops_operator.backends.base import Backend, JobRequest, RunState


def make_backend(settings, *, credentials=None) -> Backend:
    """The backend the settings ask for (``credentials``: reads and copies a job's Secrets)."""
    if settings.backend == "local":
        from slmops_operator.backends.local import LocalBackend

        return LocalBackend(settings, credentials=credentials)
    from slmops_operator.backends.kfp import KfpBackend

    return KfpBackend(settings, credentials=credentials)


__all__ = ["Backend", "JobRequest", "RunState", "make_backend"]
