"""The model a server serves: one onnxruntime-genai target, its adapters, and how prompts are rendered.

Model ids (``GET /v1/models``, a request's ``model``): the base model's id (``--name``, by
default the TARGET's last path segment, such as the job's name) and each adapter's name.
A request for an adapter is rendered the way the job rendered that adapter's data (its own
evaluation data when the optimization gave it some, else the job's); the base model's
requests the way the job's data was.  The thread pool is sized where the server runs
(:func:`slmops_pipelines.steps.cpus.usable_cpus`), never from the machine that built the target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops_pipelines.chat.prompts import PromptRenderer
from slmops_pipelines.chat.targets import ChatTarget
from slmops_pipelines.errors import InputError
from slmops_pipelines.serve.openai_api import ApiError


@dataclass
class ServedModel:
    """What every request is answered with: the engine, the tokenizer, a renderer per model id."""

    base_id: str
    engine: Any  # GenaiEngine: one model, its adapters loaded once
    tokenizer: Any
    renderers: dict[str | None, PromptRenderer]  # adapter name (None: the base) -> its rendering
    context_length: int
    eos_ids: set[int]
    pad_id: int
    threads: int | None  # None: onnxruntime chose (never for a served model: it is sized here)
    description: str

    @property
    def ids(self) -> list[str]:
        return [self.base_id, *(name for name in self.renderers if name is not None)]

    def adapter_of(self, model_id: str) -> str | None:
        """The adapter a model id names (None: the base); 404 for an id this server does not serve."""
        if model_id == self.base_id:
            return None
        if model_id in self.renderers:
            return model_id
        raise ApiError(
            404,
            f"the model {model_id!r} does not exist here (models: {', '.join(self.ids)})",
            param="model",
            code="model_not_found",
        )

    def chat_prompt(self, adapter: str | None, messages: list[dict[str, str]]) -> list[int]:
        """The token ids of a conversation, rendered as the job rendered this adapter's prompts."""
        renderer = self.renderers[adapter]
        try:
            return renderer.token_ids(renderer.render_messages(messages))
        except InputError as exc:
            raise ApiError(400, exc.message, param="messages") from exc

    def completion_prompt(self, text: str) -> list[int]:
        """The token ids of a completion prompt: the text as is (BOS where the model uses one)."""
        return self.renderers[None].token_ids(text)

    def check_fits(self, prompt_ids: list[int], *, param: str) -> None:
        """``param``: the request field that brought the prompt (``messages`` or ``prompt``)."""
        if len(prompt_ids) >= self.context_length:
            raise ApiError(
                400,
                f"the prompt has {len(prompt_ids)} tokens; this model's context is {self.context_length} "
                "tokens, and the answer needs at least one",
                param=param,
                code="context_length_exceeded",
            )


def base_id_of(target: str) -> str:
    """The TARGET's last path segment: ``runs/tone-opt`` -> ``tone-opt``, ``s3://b/x/`` -> ``x``."""
    return target.rstrip("/").rsplit("/", 1)[-1] or "model"


def load_served(target: ChatTarget, *, base_id: str, threads: int | None = None) -> ServedModel:
    """Load the target once: its model and adapters, tokenizer and renderers."""
    from slmops_pipelines.chat.engines import genai_provider
    from slmops_pipelines.models.load import load_tokenizer
    from slmops_pipelines.quiet import quiet_libraries
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

    quiet_libraries()
    if target.runtime != "genai":
        raise InputError(
            f"slmops serve runs onnxruntime-genai targets (an optimized output or a genai folder); "
            f"{target.description} is a PyTorch model: optimize it first, or talk to it with slmops chat",
            field="target",
        )
    if base_id in target.adapters:
        raise InputError(f"--name {base_id} is also an adapter's name: pick another", field="name")
    folder = target.model_dir
    tokenizer = load_tokenizer(target.tokenizer_dir or folder, trust_remote_code=target.trust_remote_code)
    try:
        engine = GenaiEngine(
            folder, provider=genai_provider(folder), adapters=dict(target.adapters), threads=threads
        )
    except RuntimeError as exc:
        raise InputError(
            f"cannot load {folder} with onnxruntime-genai: {str(exc)[:300]}", field="target"
        ) from exc
    renderers: dict[str | None, PromptRenderer] = {None: PromptRenderer(tokenizer, target.dataset)}
    for name in target.adapters:
        renderers[name] = PromptRenderer(tokenizer, target.adapter_datasets.get(name) or target.dataset)
    return ServedModel(
        base_id,
        engine,
        tokenizer,
        renderers,
        **_limits(folder),
        threads=engine.threads,
        description=target.description,
    )


def _limits(folder: Path) -> dict[str, Any]:
    """ServedModel's context_length, eos_ids and pad_id: what genai_config.json declares."""
    model = json.loads((folder / "genai_config.json").read_text())["model"]
    eos = model.get("eos_token_id", [])
    eos_ids = {int(t) for t in (eos if isinstance(eos, list) else [eos])}
    pad = model.get("pad_token_id")
    return {
        "context_length": int(model.get("context_length") or 2048),
        "eos_ids": eos_ids,
        "pad_id": int(pad if pad is not None else min(eos_ids)),
    }
