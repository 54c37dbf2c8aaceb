"""The OpenAI HTTP API as clients use it: request bodies, errors, responses and stream chunks.

Requests are pydantic models that ignore the fields this server does not act on (clients
send ``logprobs``, ``user``, ``frequency_penalty``...), so that the official ``openai``
client works unchanged; a value this server cannot honour (``n`` above 1, a negative
``max_tokens``) is a 400 naming the parameter.  Errors have OpenAI's shape::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ApiError(Exception):
    """An answer other than 200: its HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # the newer name of max_tokens
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(default=1, ge=1, le=1)  # one choice per request
    # Not OpenAI's: the least new tokens before end-of-sequence counts, as llama.cpp's and vLLM's
    # servers take it (benchmarks ask for answers of a known length).
    min_tokens: int = Field(default=0, ge=0)

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @property
    def stops(self) -> list[str]:
        found = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in found if s]

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text (a list of content parts: its text parts, joined)."""
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)

    def conversation(self) -> list[dict[str, str]]:
        """The messages as the prompt renderer takes them (``developer`` is OpenAI's newer ``system``)."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]


class CompletionRequest(_Request):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("one prompt per request")
        return value

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def parse(model: type[BaseModel], body: Any) -> Any:
    """The request, or a 400 naming the first parameter that is missing or out of range."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}", param=param) from exc


# -- responses ------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def answer(
    id_: str, model: str, text: str, finish_reason: str, usage_: dict[str, int], *, chat: bool
) -> dict[str, Any]:
    """A whole (non-streamed) answer: a chat completion's message, or a completion's text."""
    content: dict[str, Any] = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
    return {
        "id": id_,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, **content, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage_,
    }


def chunk(
    id_: str, model: str, *, chat: bool, piece: str | None = None, finish_reason: str | None = None
) -> dict[str, Any]:
    """One stream event: a piece of text, or (``finish_reason``) the last one."""
    if chat:
        delta: dict[str, Any] = {} if piece is None else {"content": piece}
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "finish_reason": finish_reason,
            "logprobs": None,
        }
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": piece or "", "finish_reason": finish_reason, "logprobs": None}
        kind = "text_completion"
    return {"id": id_, "object": kind, "created": int(time.time()), "model": model, "choices": [choice]}


def usage_chunk(
    id_: str, model: str, *, chat: bool, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The chunk ``stream_options.include_usage`` asks for: no choices, the usage."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    return {
        "id": id_,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def models_list(ids: list[str], owner: str = "slmops") -> dict[str, Any]:
    created = int(time.time())
    return {
        "object": "list",
        "data": [{"id": i, "object": "model", "created": created, "owned_by": owner} for i in ids],
    }
