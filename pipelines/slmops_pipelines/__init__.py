"""slmops pipelines: the ML work of slmops, as plain Python steps.

Layers, each importing only the ones below it:

* ``specs``    -- typed job specifications (pydantic).  The Kubernetes API models in
                  ``slmops_operator.api`` wrap these, so they are the single source of truth
                  for both the CRD schema and the configs the steps receive.
* ``storage``  -- one artifact-store interface over local folders and S3.
* ``models``   -- resolving model URIs (``hf://``, ``s3://``, local, GGUF) to local folders.
* ``steps``    -- data prep, training, evaluation, reporting, publishing.  Plain Python with typed
                  configs: nothing here knows about kopf, KFP or Kubernetes.
* ``local``    -- the embedded engine: runs a whole job on this machine by calling the steps.

Heavy libraries (torch, transformers, datasets) are imported inside the functions that need
them, so that ``import slmops_pipelines`` stays cheap and torch-free.
"""

__version__ = "0.1.0"
