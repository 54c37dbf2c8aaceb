"""The HTTP server: OpenAI's API over the batcher, health, readiness, metrics, a graceful stop.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (also
under ``/openai/v1``, where KServe's LLM runtimes serve OpenAI's API),
``GET /health`` (live: the process answers), ``GET /ready`` (the model is loaded and the
server is not draining), ``GET /metrics`` (Prometheus).

The socket opens before the model loads, so that a probe sees the server live while it
loads; requests meanwhile get 503 with ``Retry-After``.  A full queue is 429 with
``Retry-After``.  On SIGTERM (or SIGINT) the server stops taking requests (503, ``/ready``
fails so that load balancers move on), lets those in flight finish (``--drain-seconds`` at
most), then exits.  A client that disconnects ends its sequence at once (see
:mod:`.batcher`).  One log line per request at INFO: status, model, tokens, milliseconds.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from slmops_pipelines.chat.engines import Sampling
from slmops_pipelines.chat.session import TextStream
from slmops_pipelines.serve import openai_api as api
from slmops_pipelines.serve.batcher import Batcher, QueueFull, Sequence
from slmops_pipelines.serve.inbox import Inbox
from slmops_pipelines.serve.metrics import ServeMetrics
from slmops_pipelines.serve.model import ServedModel

log = logging.getLogger("slmops.serve")

RETRY_AFTER_S = 1
# OpenAI's paths, and the same under /openai as KServe's own LLM runtimes serve them.
API_PREFIXES = ("/v1", "/openai/v1")  # what a 429 or a 503 while loading tells the client to wait


@dataclass
class Settings:
    max_batch: int = 8
    max_queue: int = 64
    max_tokens: int = 1024  # the answer's length when a request names none (within the context)
    drain_seconds: float = 30.0


@dataclass
class _Answer:
    """One request's generation as the handler sees it: tokens arrive in ``inbox``."""

    seq: Sequence
    inbox: Inbox
    started: float
    stamps: list[float] = field(default_factory=list)


class Server:
    """One model behind OpenAI's API (see the module's notes)."""

    def __init__(self, load: Callable[[], ServedModel], settings: Settings | None = None) -> None:
        self.load_model = load
        self.settings = settings or Settings()
        self.model: ServedModel | None = None
        self.batcher: Batcher | None = None
        self.load_error: str | None = None
        self.draining = False
        self.in_flight = 0
        self.metrics = ServeMetrics(
            queue_depth=lambda: self.batcher.queue_depth if self.batcher else 0,
            running=lambda: self.batcher.running if self.batcher else 0,
        )

    # -- the application -------------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=8 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/metrics", self.prometheus)
        for prefix in API_PREFIXES:
            app.router.add_get(f"{prefix}/models", self.models)
            app.router.add_post(f"{prefix}/chat/completions", self.chat_completions)
            app.router.add_post(f"{prefix}/completions", self.completions)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        try:
            return await handler(request)
        except api.ApiError as exc:
            self._refused(request, exc)
            return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
        except web.HTTPException as exc:  # aiohttp's own: 404 for an unknown path, 405...
            error = api.ApiError(exc.status, exc.reason, type="invalid_request_error")
            return web.json_response(error.body(), status=exc.status)
        except Exception as exc:  # a fault of ours: still an error body OpenAI's clients can read
            if request.get("streaming"):
                raise  # the answer has begun: nothing else can be sent
            log.error(
                "500 %s %s: %s: %s", request.get("model_id") or "-", request.path, type(exc).__name__, exc
            )
            log.debug("the failure", exc_info=True)
            error = api.ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
            self._refused(request, error)
            return web.json_response(error.body(), status=500)

    def _refused(self, request: web.Request, exc: api.ApiError) -> None:
        """Count and log a request refused before it generated (one that generated is counted already)."""
        if request.get("accounted") or not request.path.startswith(tuple(f"{p}/" for p in API_PREFIXES)):
            return
        model_id = str(request.get("model_id", ""))
        self.metrics.requests.labels(model=model_id, status=str(exc.status)).inc()
        log.info("%d %s %s (%s)", exc.status, model_id or "-", request.path, exc.code or exc.message[:120])

    async def load(self) -> None:
        """Load the model (in a thread: the server answers probes meanwhile) and start the batcher."""
        started = time.perf_counter()
        try:
            model = await asyncio.to_thread(self.load_model)
        except Exception as exc:
            self.load_error = str(exc)
            raise
        s = self.settings
        batcher = Batcher(
            model.engine,
            eos_ids=model.eos_ids,
            pad_id=model.pad_id,
            context_length=model.context_length,
            max_batch=s.max_batch,
            max_queue=s.max_queue,
            on_batch=self.metrics.batch_size.observe,
        )
        batcher.start()
        self.model, self.batcher = model, batcher
        log.info(
            "ready in %.1f s: %s (models: %s; %s thread%s; batches of up to %d)",
            time.perf_counter() - started,
            model.description,
            ", ".join(model.ids),
            model.threads,
            "" if model.threads == 1 else "s",
            s.max_batch,
        )

    # -- probes ------------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        if self.model is None or self.draining:
            state = "draining" if self.draining else ("failed" if self.load_error else "loading")
            return web.json_response({"status": state}, status=503)
        return web.json_response({"status": "ready", "models": self.model.ids})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), content_type="text/plain", charset="utf-8")

    async def models(self, request: web.Request) -> web.Response:
        model = self._serving()
        return web.json_response(api.models_list(model.ids))

    # -- generation ---------------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=False)

    async def _answer(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        """Parse, pick the model id's adapter, render (chat) or take the text as is, generate."""
        model = self._serving()
        req = api.parse(api.ChatCompletionRequest if chat else api.CompletionRequest, await _json(request))
        request["model_id"] = req.model
        adapter = model.adapter_of(req.model)
        prompt = model.chat_prompt(adapter, req.conversation()) if chat else model.completion_prompt(req.text)
        return await self._generate(request, req, adapter, prompt, chat=chat)

    def _serving(self) -> ServedModel:
        if self.draining:
            raise api.ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
        if self.model is None:
            message = (
                f"the model failed to load: {self.load_error}" if self.load_error else "the model is loading"
            )
            raise api.ApiError(
                503,
                message,
                type="server_error",
                code="model_loading",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return self.model

    def _sampling(self, req: Any, prompt: list[int]) -> Sampling:
        model = self.model
        assert model is not None
        model.check_fits(prompt, param="messages" if isinstance(req, api.ChatCompletionRequest) else "prompt")
        room = model.context_length - len(prompt)
        wanted = req.token_limit
        if wanted is not None and wanted > room:
            raise api.ApiError(
                400,
                f"the prompt ({len(prompt)} tokens) and max_tokens ({wanted}) exceed this model's context "
                f"({model.context_length} tokens)",
                param="max_tokens",
                code="context_length_exceeded",
            )
        limit = wanted if wanted is not None else min(room, self.settings.max_tokens)
        return Sampling(
            max_new_tokens=limit,
            min_new_tokens=min(req.min_tokens, limit),
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
        )

    async def _generate(
        self, request: web.Request, req: Any, adapter: str | None, prompt: list[int], *, chat: bool
    ) -> web.StreamResponse:
        assert self.model is not None and self.batcher is not None
        answer = self._submit(adapter, prompt, self._sampling(req, prompt))
        self.in_flight += 1
        status, completion_tokens, finish = 200, 0, "error"
        try:
            if req.stream:
                response, completion_tokens, finish = await self._stream(
                    request, req, answer, prompt, chat=chat
                )
                return response
            text, completion_tokens, finish = await self._collect(request, req, answer)
            id_ = api.new_id("chatcmpl" if chat else "cmpl")
            usage = api.usage(len(prompt), completion_tokens)
            return web.json_response(api.answer(id_, req.model, text, finish, usage, chat=chat))
        except api.ApiError as exc:
            status = exc.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            answer.seq.cancel()  # a no-op for an answer that ended; frees the slot of one that did not
            self.in_flight -= 1
            request["accounted"] = True
            self._account(req.model, status, len(prompt), completion_tokens, finish, answer)

    def _submit(self, adapter: str | None, prompt: list[int], sampling: Sampling) -> _Answer:
        inbox = Inbox(asyncio.get_running_loop())

        def on_token(token: int) -> None:
            inbox.put(("token", token, time.perf_counter()))

        def on_end(reason: str, error: str | None) -> None:
            inbox.put(("end", reason, error))

        seq = Sequence(prompt, adapter, sampling, on_token, on_end)
        assert self.batcher is not None
        try:
            self.batcher.submit(seq)
        except QueueFull as exc:
            raise api.ApiError(
                429,
                str(exc),
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from exc
        return _Answer(seq, inbox, time.perf_counter())

    async def _tokens(self, request: web.Request, answer: _Answer):  # -> AsyncIterator[int], then the reason
        """The answer's tokens in the bunches they come in; returns (StopAsyncIteration) at its end.

        A bunch is what the batcher made since the handler last looked: one streamed chunk for
        all of it, not one per token, so a client that falls behind costs fewer writes and
        fewer parses, not more.  Checks the connection while it waits: a client that went
        away cancels the sequence.
        """
        while True:
            try:
                bunch = await answer.inbox.take(timeout=0.5)
            except asyncio.TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    answer.seq.cancel()
                    raise ConnectionResetError("the client went away") from None
                continue
            tokens = [value for kind, value, _ in bunch if kind == "token"]
            answer.stamps.extend(extra for kind, _, extra in bunch if kind == "token")
            if tokens:
                yield tokens
            ended = next(((value, extra) for kind, value, extra in bunch if kind == "end"), None)
            if ended is None:
                continue
            if ended[0] == "error":
                raise api.ApiError(500, f"generation failed: {ended[1]}", type="server_error")
            return

    async def _collect(self, request: web.Request, req: Any, answer: _Answer) -> tuple[str, int, str]:
        """The whole answer (non-streaming): text, tokens, finish reason."""
        assert self.model is not None
        text = TextStream(self.model.tokenizer)
        stops, produced = req.stops, 0
        async for tokens in self._tokens(request, answer):
            produced, cut = _push(text, tokens, stops, produced)
            if cut is not None:
                return text.shown[:cut], produced, "stop"
        return text.text(), produced, "stop" if answer.seq.finish_reason == "stop" else "length"

    async def _stream(
        self, request: web.Request, req: Any, answer: _Answer, prompt: list[int], *, chat: bool
    ) -> tuple[web.StreamResponse, int, str]:
        """Server-sent events: a chunk per piece of text, the last with its finish reason, then [DONE]."""
        assert self.model is not None
        id_ = api.new_id("chatcmpl" if chat else "cmpl")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        request["streaming"] = True

        async def send(event: dict[str, Any] | str) -> None:
            data = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
            await response.write(f"data: {data}\n\n".encode())

        if chat:  # the first chunk names the role, as OpenAI's do
            first = api.chunk(id_, req.model, chat=True)
            first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            await send(first)
        text, sent, produced, finish = TextStream(self.model.tokenizer), 0, 0, "length"
        stops = req.stops
        try:
            async for tokens in self._tokens(request, answer):
                produced, cut = _push(text, tokens, stops, produced)
                whole = text.shown  # decoded so far, less a character whose bytes are still coming
                if cut is not None:
                    whole, finish = whole[:cut], "stop"
                safe = len(whole) if cut is not None else _safe_length(whole, stops)
                if safe > sent:
                    await send(api.chunk(id_, req.model, chat=chat, piece=whole[sent:safe]))
                    sent = safe
                if cut is not None:
                    answer.seq.cancel()
                    break
            else:
                finish = "stop" if answer.seq.finish_reason == "stop" else "length"
                whole = text.text()
                if len(whole) > sent:  # what a held-back piece still owed
                    await send(api.chunk(id_, req.model, chat=chat, piece=whole[sent:]))
            await send(api.chunk(id_, req.model, chat=chat, finish_reason=finish))
            if req.include_usage:
                await send(
                    api.usage_chunk(
                        id_, req.model, chat=chat, prompt_tokens=len(prompt), completion_tokens=produced
                    )
                )
            await send("[DONE]")
            await response.write_eof()
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            answer.seq.cancel()  # the client went away: its slot is free at once
            finish = "cancelled"
        except api.ApiError as exc:  # the stream has started: say it in the stream
            await send(exc.body())
            finish = "error"
        return response, produced, finish

    def _account(
        self, model_id: str, status: int, prompt: int, completion: int, finish: str, answer: _Answer
    ) -> None:
        m, seconds = self.metrics, time.perf_counter() - answer.started
        m.requests.labels(model=model_id, status=str(status)).inc()
        m.prompt_tokens.labels(model=model_id).inc(prompt)
        m.completion_tokens.labels(model=model_id).inc(completion)
        stamps = answer.stamps
        if stamps:
            m.time_to_first_token.labels(model=model_id).observe(stamps[0] - answer.started)
            for before, after in itertools.pairwise(stamps):
                m.time_per_token.labels(model=model_id).observe(after - before)
        m.request_seconds.labels(model=model_id).observe(seconds)
        log.info(
            "%d %s %d+%d tokens %.0f ms (%s)", status, model_id, prompt, completion, seconds * 1000, finish
        )

    # -- running and stopping -----------------------------------------------------------------------

    async def drain(self) -> None:
        """Stop taking requests; wait for those in flight (``drain_seconds`` at most)."""
        self.draining = True
        deadline = time.monotonic() + self.settings.drain_seconds
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight:
            log.warning(
                "stopping with %d request(s) unfinished after %.0f s",
                self.in_flight,
                self.settings.drain_seconds,
            )


async def serve(
    server: Server, host: str, port: int, *, access_log: bool = False, stop: asyncio.Event | None = None
) -> None:
    """Listen, load the model, answer until SIGTERM/SIGINT (or ``stop`` is set), drain, stop.

    The signal handlers are installed in the main thread only (Python's rule); an embedder
    that runs the server elsewhere stops it with ``stop``.
    """
    runner = web.AppRunner(server.application(), access_log=log if access_log else None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, shutdown_timeout=server.settings.drain_seconds)
    await site.start()
    log.info("listening on http://%s:%d (OpenAI API under /v1); loading the model", host, port)
    stop = stop or asyncio.Event()
    if threading.current_thread() is threading.main_thread():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    loading = asyncio.create_task(server.load())
    try:
        waiting = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({loading, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if loading in done and loading.exception() is not None:
            raise loading.exception()  # type: ignore[misc]
        await waiting
        log.info("stopping: draining %d request(s) in flight", server.in_flight)
        await server.drain()
    finally:
        loading.cancel()
        await runner.cleanup()
        if server.batcher is not None:
            server.batcher.stop()
        server.model = server.batcher = None  # onnxruntime-genai frees the model with its last reference
        gc.collect()
        log.info("stopped")


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise api.ApiError(400, f"the request body is not valid JSON: {exc}") from exc


def _push(text: TextStream, tokens: list[int], stops: list[str], produced: int) -> tuple[int, int | None]:
    """Decode a bunch of tokens; (tokens counted, where a stop sequence begins or None).

    Stops at the token that completes a stop sequence: the tokens after it are not the answer's.
    """
    for token in tokens:
        produced += 1
        before = len(text.shown)
        if text.push(token) and stops and (cut := _stop_at(text.shown, stops, before)) is not None:
            return produced, cut
    return produced, None


def _stop_at(text: str, stops: list[str], new: int = 0) -> int | None:
    """Where the first stop sequence in ``text`` begins (None: none there).

    ``text[:new]`` was searched already: only a stop that ends after it is looked for, so a
    long answer costs its length once, not once per token.
    """
    found = [i for i in (text.find(s, max(0, new - len(s) + 1)) for s in stops) if i >= 0]
    return min(found) if found else None


def _safe_length(text: str, stops: list[str]) -> int:
    """How much of ``text`` can be sent: all but a tail that may be the start of a stop sequence."""
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                held = max(held, n)
                break
    return len(text) - held
