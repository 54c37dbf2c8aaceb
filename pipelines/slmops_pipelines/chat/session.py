"""A conversation with one loaded model: render, generate, stream text, time it, remember.

:class:`ChatSession` is what ``slmops generate`` (one request) and ``slmops chat`` (a REPL)
drive; it holds the engine (loaded once), the renderer, the active adapter and, for models
that learned conversations, the history.  Text streams through :class:`TextStream`, which
decodes the tokens so far and hands out only what is new -- a token may be half a UTF-8
character or change how its neighbour decodes, so pieces are never decoded alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slmops_pipelines.chat.engines import ChatEngine, Sampling
from slmops_pipelines.chat.prompts import Message, PromptRenderer
from slmops_pipelines.errors import InputError

if TYPE_CHECKING:
    from slmops_pipelines.chat.targets import ChatTarget

NO_ADAPTER = "none"  # ``--adapter none`` / ``/adapter none``: the base model alone


@dataclass
class Reply:
    """One generated answer and how fast it came."""

    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float  # from the request to the last token
    first_token_s: float | None  # time to first token (prefill)
    last_token_s: float | None

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: the tokens after the first over the time they took (prefill excluded)."""
        if self.new_tokens > 1 and self.first_token_s is not None and self.last_token_s is not None:
            spent = self.last_token_s - self.first_token_s
            if spent > 0:
                return (self.new_tokens - 1) / spent
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        first = f"{self.first_token_s * 1000:.0f} ms" if self.first_token_s is not None else "-"
        return (
            f"{self.new_tokens} tokens, {self.tokens_per_s:.1f} tokens/s, time to first token {first} "
            f"(prompt: {self.prompt_tokens} tokens)"
        )


class TextStream:
    """Token ids in, new text out, in time that does not grow with the answer.

    Decoding every id so far on each token costs the square of the answer's length (seconds
    of a server's event loop for a long answer); so, as vLLM's incremental detokenizer does,
    only the ids since the last piece shown are decoded, after the few before them that give
    a tokenizer its context (a leading space, bytes of one character split over tokens).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = ""
        self._prefix = 0  # ids[_prefix:_read] were shown already: decoded again for their context
        self._read = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        text = decode(self.ids[self._prefix :], skip_special_tokens=True)
        if text.endswith("\ufffd") or len(text) <= len(before):  # half a character: wait for its bytes
            return ""
        if not text.startswith(before):  # the tokenizer re-merged: wait until they agree again
            return ""
        piece = text[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.shown += piece
        return piece

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)


class ChatSession:
    """One model, loaded once; requests rendered as the job rendered its prompts."""

    def __init__(
        self, engine: ChatEngine, renderer: PromptRenderer, *, sampling: Sampling, description: str = ""
    ) -> None:
        self.engine = engine
        self.renderer = renderer
        self.sampling = sampling
        self.description = description
        self.history: list[Message] = []

    @property
    def adapters(self) -> list[str]:
        return list(self.engine.adapters)

    @property
    def adapter(self) -> str | None:
        return self.engine.active_adapter

    def use_adapter(self, name: str) -> None:
        """Switch adapters by name (``none``: the base model); an unknown name lists the known ones."""
        check_adapter(name, self.adapters)
        self.engine.use_adapter(None if name == NO_ADAPTER and NO_ADAPTER not in self.adapters else name)

    def reset(self) -> None:
        self.history = []

    def render(self, text: str) -> str:
        """The prompt text the model receives for ``text`` (the history included in a multi-turn chat)."""
        return self.renderer.render(text, self.history)

    def reply(self, text: str, on_text: Callable[[str], None] | None = None) -> Reply:
        """Generate the answer to ``text``, handing each new piece of text to ``on_text``."""
        prompt_ids = self.renderer.token_ids(self.render(text))
        stream = TextStream(self.renderer.tokenizer)
        stamps: list[float] = []
        started = time.perf_counter()

        def on_token(token: int) -> None:
            stamps.append(time.perf_counter() - started)
            piece = stream.push(token)
            if piece and on_text is not None:
                on_text(piece)

        self.engine.generate(prompt_ids, self.sampling, on_token)
        answer = stream.text()
        if on_text is not None and answer.startswith(stream.shown) and answer != stream.shown:
            on_text(answer[len(stream.shown) :])  # what a held-back piece still owed
        if self.renderer.multi_turn:
            self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        return Reply(
            text=answer,
            prompt_tokens=len(prompt_ids),
            new_tokens=len(stamps),
            seconds=time.perf_counter() - started,
            first_token_s=stamps[0] if stamps else None,
            last_token_s=stamps[-1] if stamps else None,
        )


def check_adapter(name: str, known: list[str]) -> None:
    """An InputError listing the known adapters when ``name`` is not one of them (nor ``none``)."""
    if name in known or name == NO_ADAPTER:
        return
    listed = ", ".join(known) if known else "none: this model has no separate adapters"
    raise InputError(f"no adapter named {name!r} (known: {listed})", field="adapter")


def open_session(
    target: ChatTarget, *, sampling: Sampling, raw: bool = False, adapter: str | None = None
) -> ChatSession:
    """Load the target's tokenizer and model once; pick ``adapter`` (default: the first one)."""
    from slmops_pipelines.chat.engines import GenaiChatEngine, TorchChatEngine
    from slmops_pipelines.models.load import load_tokenizer
    from slmops_pipelines.quiet import quiet_libraries

    quiet_libraries()  # the answer, not the libraries' progress bars and kernel warnings
    if adapter is not None:
        check_adapter(adapter, list(target.adapters))  # before minutes of loading a model
    tokenizer = load_tokenizer(
        target.tokenizer_dir or target.model_dir, trust_remote_code=target.trust_remote_code
    )
    engine: ChatEngine
    if target.runtime == "genai":
        engine = GenaiChatEngine(target.model_dir, target.adapters)
    else:
        engine = TorchChatEngine(
            target.model_dir, target.adapters, tokenizer=tokenizer, trust_remote_code=target.trust_remote_code
        )
    renderer = PromptRenderer(tokenizer, target.dataset, raw=raw)
    session = ChatSession(engine, renderer, sampling=sampling, description=target.description)
    if adapter is not None:
        session.use_adapter(adapter)
    return session
