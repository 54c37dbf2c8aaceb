"""Kubeflow Pipelines (KFP v2): every job as a pipeline run, built from the shared stages.

Layers, from the bottom:

* :mod:`.tasks` -- what each component does: plain Python over the folders of its input
  and output artifacts, calling :mod:`slmops_pipelines.stages` (the very functions the
  local engine calls) and logging scalar metrics for the dashboard;
* :mod:`.components` -- the KFP components: one-line bodies that call :mod:`.tasks`, in the
  images of ``images/`` (:mod:`.images`), with nothing installed at run time;
* :mod:`.placement` -- GPUs, node selectors, tolerations, the S3 Secret and the model
  cache volume, through ``kfp-kubernetes``;
* :mod:`.pipelines` -- the ``finetune``, ``optimize`` and ``finetune-optimize`` pipelines
  and their compiler (``slmops compile`` writes ``pipelines/compiled/``);
* :mod:`.local_engine` -- ``slmops run --engine kfp-local``: the compiled pipeline on this
  machine with ``kfp.local``;
* :mod:`.distributed` -- multi-node training through a PyTorchJob or a TrainJob.

Importing the pipeline definitions needs kfp, not torch: the operator compiles and submits
them from an image without torch.
"""
