"""Talk to the models slmops made: ``slmops generate`` and ``slmops chat``, as plain Python.

* :mod:`.targets`: a TARGET (a job's output, an onnxruntime-genai folder, a PEFT adapter, a
  model folder; local or on S3) resolved to a :class:`~.targets.ChatTarget`;
* :mod:`.prompts`: the text rendered as the job rendered its training prompts;
* :mod:`.engines`: streaming generation with transformers (+PEFT) or onnxruntime-genai,
  adapters switched by name without reloading the model;
* :mod:`.session`: a conversation over one loaded model, timed (tokens/s, time to first token).

The operator's CLI reaches this through :mod:`slmops_pipelines.jobs` only.  Nothing here
imports torch, transformers or onnxruntime-genai before a model is loaded.
"""
