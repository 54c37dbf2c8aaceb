"""Multi-node training through an engine the cluster already runs: PyTorchJob or TrainJob.

* :mod:`.manifests` -- the workload objects (pure functions of the job);
* :mod:`.launcher` -- submit or adopt, follow, propagate failure, delete on cancellation;
* :mod:`.train` -- what the train step does when ``resources.nodes > 1``: stage the data,
  run the workload, bring the result back as the step's output.

The pods run :mod:`slmops_pipelines.steps.train.node`, which joins torchrun to the
rendezvous the engine provides.  There is no launcher of our own between the nodes.
"""
