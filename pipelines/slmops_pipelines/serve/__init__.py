"""``slmops serve``: what a job made, behind OpenAI's HTTP API, an adapter per request, batched.

* :mod:`.model`: the TARGET loaded once (one onnxruntime-genai model, its adapters), the
  model ids it answers to, prompts rendered as the job rendered them;
* :mod:`.batcher`: concurrent requests decoded together, one adapter per batch;
* :mod:`.openai_api`: the requests, responses, stream chunks and errors of OpenAI's API;
* :mod:`.app`: the HTTP server (aiohttp), health, readiness, Prometheus metrics, drain on SIGTERM;
* :mod:`.metrics`: what ``/metrics`` shows.

Nothing here imports torch: the server image carries onnxruntime-genai, not PyTorch.
"""

from __future__ import annotations

import asyncio

from slmops_pipelines.serve.app import Server, Settings, serve
from slmops_pipelines.serve.model import ServedModel, base_id_of, load_served


def run_server(
    target: str,
    *,
    target_name: str | None = None,
    name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int | None = None,
    settings: Settings | None = None,
    access_log: bool = False,
) -> None:
    """Serve TARGET until SIGTERM (see :mod:`.app`).

    ``threads``: by default the target's ``runtime.threads`` where it names one, else the CPUs
    this process may use (:class:`~slmops_pipelines.steps.optimize.runtime.GenaiEngine`).
    """
    from slmops_pipelines import jobs

    # Fails fast (a bad TARGET never listens); by default a target whose adapters are separate.
    chosen = jobs.chat_target(target, target_name=target_name, prefer_adapters=True)
    base_id = name or base_id_of(target)

    def load() -> ServedModel:
        return load_served(chosen, base_id=base_id, threads=threads)

    asyncio.run(serve(Server(load, settings), host, port, access_log=access_log))


__all__ = ["ServedModel", "Server", "Settings", "base_id_of", "load_served", "run_server", "serve"]
