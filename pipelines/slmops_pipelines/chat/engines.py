"""Streaming generation with the two runtimes slmops produces models for.

One protocol, :class:`ChatEngine`: token ids in, each new token id handed to a callback as
soon as it exists (so the CLI prints while the model works), adapters switched by name
between requests.  Callbacks rather than iterators because both runtimes drive their own
loop -- transformers' ``generate`` calls a streamer, onnxruntime-genai's generator is
stepped by us -- and a callback needs no thread to bridge them.

* :class:`TorchChatEngine`: transformers (+ PEFT) ``generate``, whose own sampling
  (temperature, top-p) and stopping rules apply; greedy by default.
* :class:`GenaiChatEngine`: :class:`~slmops_pipelines.steps.optimize.runtime.GenaiEngine`
  (the very engine the OptimizeJob measured the target with: same threads, same adapters),
  stepped token by token.  Its adapters are ``<name>.onnx_adapter`` files loaded once next
  to the one base model; switching is ``set_active_adapter`` on the next generator, so the
  base model is never reloaded.

No active adapter (``None``) means the base model in both runtimes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from slmops_pipelines.errors import InputError

OnToken = Callable[[int], None]


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy unless ``temperature`` > 0."""

    max_new_tokens: int = 256
    min_new_tokens: int = 0  # end-of-sequence is not taken before (slmops serve's min_tokens)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


class ChatEngine(Protocol):
    adapters: list[str]  # the adapters this engine can switch between, by name
    active_adapter: str | None

    def use_adapter(self, name: str | None) -> None:
        """Make ``name`` (known) the adapter of the following requests; None: the base model."""

    def generate(self, prompt_ids: list[int], sampling: Sampling, on_token: OnToken) -> None:
        """Generate after ``prompt_ids``, calling ``on_token(id)`` for each new token, EOS included."""


class _CallbackStreamer:
    """What transformers' ``generate`` hands tokens to: the prompt first, then each new token."""

    def __init__(self, on_token: OnToken) -> None:
        self.on_token = on_token
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() puts the prompt ids before the first new token
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.on_token(int(token))

    def end(self) -> None:
        pass


class TorchChatEngine:
    """A transformers causal LM, with PEFT adapters loaded side by side when there are any."""

    def __init__(
        self,
        model_dir: Path,
        adapters: dict[str, Path] | None = None,
        *,
        tokenizer: Any,
        trust_remote_code: bool = False,
    ) -> None:
        from slmops_pipelines.models.load import load_causal_lm

        self.tokenizer = tokenizer
        self.model = load_causal_lm(model_dir, field="model", trust_remote_code=trust_remote_code)
        self.adapters = list(adapters or {})
        self.active_adapter: str | None = None
        if adapters:
            self.model = _with_adapters(self.model, adapters, model_dir)
            self.active_adapter = self.adapters[0]
        self.model.eval()

    def use_adapter(self, name: str | None) -> None:
        if name is not None:
            self.model.set_adapter(name)
        self.active_adapter = name

    def generate(self, prompt_ids: list[int], sampling: Sampling, on_token: OnToken) -> None:
        import contextlib

        import torch

        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        choice: dict[str, Any] = (
            {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            if sampling.greedy
            else {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
        )
        base_only = self.adapters and self.active_adapter is None
        ids = torch.tensor([prompt_ids])
        with torch.inference_mode(), self.model.disable_adapter() if base_only else contextlib.nullcontext():
            self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=sampling.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                streamer=_CallbackStreamer(on_token),
                **choice,
            )


def _with_adapters(model: Any, adapters: dict[str, Path], model_dir: Path) -> Any:
    """The model with every PEFT adapter loaded under its name (the first one active)."""
    from peft import PeftModel

    (first, first_dir), *others = adapters.items()
    try:
        peft_model = PeftModel.from_pretrained(model, first_dir, adapter_name=first)
        for name, folder in others:
            peft_model.load_adapter(folder, adapter_name=name)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise InputError(
            f"the adapter does not fit the base model {model_dir}: {str(exc)[:300]}", field="adapter"
        ) from exc
    peft_model.set_adapter(first)
    return peft_model


class GenaiChatEngine:
    """An onnxruntime-genai target folder, with its separate adapters loaded once."""

    def __init__(self, folder: Path, adapters: dict[str, Path] | None = None) -> None:
        from slmops_pipelines.steps.optimize.runtime import GenaiEngine

        provider = genai_provider(folder)
        try:
            self.engine = GenaiEngine(folder, provider=provider, adapters=adapters)
        except RuntimeError as exc:  # onnxruntime-genai's errors for a provider it cannot start
            raise InputError(
                f"cannot run {folder} with onnxruntime-genai (provider {provider}): {str(exc)[:300]}",
                field="target",
            ) from exc
        self.adapters = list(adapters or {})
        self.active_adapter: str | None = None
        if self.adapters:
            self.use_adapter(self.adapters[0])

    def use_adapter(self, name: str | None) -> None:
        self.engine.use_adapter(name)  # applies to the next generator: the model stays loaded
        self.active_adapter = name

    def generate(self, prompt_ids: list[int], sampling: Sampling, on_token: OnToken) -> None:
        import numpy as np

        search: dict[str, float | int | bool] = {"do_sample": not sampling.greedy}
        if not sampling.greedy:
            search.update(temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.seed is not None:
            search["random_seed"] = sampling.seed
        generator = self.engine.generator(len(prompt_ids) + sampling.max_new_tokens, search=search)
        generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
        produced = 0
        while not generator.is_done() and produced < sampling.max_new_tokens:
            generator.generate_next_token()
            on_token(int(generator.get_next_tokens()[0]))
            produced += 1


def genai_provider(folder: Path) -> str:
    """The provider genai_config.json names (the OptimizeJob wrote its target's), else cpu."""
    import json

    config = json.loads((folder / "genai_config.json").read_text())
    options = (
        config.get("model", {}).get("decoder", {}).get("session_options", {}).get("provider_options", [])
    )
    names = [name for entry in options for name in entry]
    return names[0] if names else "cpu"
