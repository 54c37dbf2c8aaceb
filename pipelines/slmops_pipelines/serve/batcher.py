"""Concurrent requests decoded together: onnxruntime-genai batches, one adapter per batch.

onnxruntime-genai's ``Generator`` decodes a batch of sequences in one pass per token, with
one active adapter and one set of search options for the whole batch; its continuous
batching ``Engine`` takes no adapters.  So one worker thread runs every model call and:

* **admits** waiting requests into a new batch whenever fewer than ``max_batch`` sequences
  are being decoded, taking the oldest request and the others waiting for the same adapter
  and sampling (temperature, top-p, seed) with it;
* **gathers** before it admits, since a batch cannot grow once it has started: as many
  requests as were wanted at once in the last ``recent_s`` seconds (the clients that keep it
  busy come back together after their answers), waiting at most ``gather_s`` when idle (from
  the last batch's end, for a request that waited for that end) and ``join_s`` while batches
  run;
* **synchronizes**: a request that comes while a batch is running waits for that batch's end
  (its sequences' ``max_new_tokens`` reached, at the steps' recent pace) where that comes
  within ``sync`` of the request's own answer time and ``sync_max_s`` at most, so that they
  start as one batch: two batches of 7 and 1 cost a step each, nearly twice one batch of 8,
  and clients whose answers ended apart would otherwise stay apart for every answer after
  (8 clients measured 2+6 batches round after round);
* **regroups**: requests that come while a new batch is being prefilled, for the same adapter
  and sampling, join it before its first token (the prefill runs again with them, up to
  ``regroup`` times): a burst of clients whose first request started alone a few milliseconds
  ahead of the others decodes as one batch, not two for the whole answer;
* **steps** every active batch by one token in turn, so a request that does not wait for a
  batch's end starts at the next turn (its prefill, then its tokens, interleaved with the
  others'); time to first token is bounded by that wait (``sync_max_s``), one step of each
  active batch and its own prefill;
* ends a sequence at an end-of-sequence token, at its ``max_new_tokens``, or when its
  client goes away (:meth:`Sequence.cancel`): from then on it no longer counts against
  ``max_batch`` and its tokens are dropped, and a batch whose sequences all ended is
  released at once.

Prompts of different lengths are padded on the right with the pad token, which
onnxruntime-genai masks per sequence (a batch answers exactly as each prompt would alone;
``tests/serve`` checks it).  The queue holds at most ``max_queue`` waiting requests:
:meth:`Batcher.submit` refuses more (the server's 429).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slmops_pipelines.chat.engines import Sampling

if TYPE_CHECKING:
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

# What a sequence hands its owner, from the worker thread: a token id, or the end (a reason).
OnToken = Callable[[int], None]
OnEnd = Callable[[str, str | None], None]  # finish reason ("stop", "length", "cancelled", "error"), error


class QueueFull(Exception):
    """More requests are waiting than ``max_queue``."""


@dataclass(eq=False)
class Sequence:
    """One request's generation: its prompt, adapter and sampling, and where its tokens go."""

    prompt_ids: list[int]
    adapter: str | None
    sampling: Sampling
    on_token: OnToken
    on_end: OnEnd
    queued_at: float = field(default_factory=time.monotonic)
    produced: int = 0
    ended: bool = False
    cancelled: bool = False
    finish_reason: str = ""  # once ended: stop, length, cancelled or error

    @property
    def key(self) -> tuple[Any, ...]:
        """What a batch shares: the adapter and the search options (``min_new_tokens`` included)."""
        s = self.sampling
        return (self.adapter, s.greedy, 0.0 if s.greedy else s.temperature, s.top_p, s.seed, s.min_new_tokens)

    def cancel(self) -> None:
        """The client went away (or a stop sequence ended the text): stop, free the slot."""
        self.cancelled = True


class _Batch:
    """Sequences decoded together by one generator."""

    def __init__(self, engine: GenaiEngine, sequences: list[Sequence], *, pad_id: int, context: int) -> None:
        import numpy as np

        self.sequences = sequences
        longest = max(len(s.prompt_ids) for s in sequences)
        most = max(s.sampling.max_new_tokens for s in sequences)
        engine.use_adapter(sequences[0].adapter)  # one worker thread: set, then made into the generator
        least = sequences[0].sampling.min_new_tokens  # shared: part of the batch's key
        self.generator = engine.generator(
            min(context, longest + most),
            min_length=min(context, longest + least) if least else 0,
            search=search_options(sequences),
        )
        rows = [s.prompt_ids + [pad_id] * (longest - len(s.prompt_ids)) for s in sequences]
        self.generator.append_tokens(np.asarray(rows, dtype=np.int32))  # the prefill

    @property
    def live(self) -> list[Sequence]:
        return [s for s in self.sequences if not s.ended]

    @property
    def steps_left(self) -> int:
        """Steps until every sequence reached its ``max_new_tokens`` (the batch may end sooner)."""
        return max((s.sampling.max_new_tokens - s.produced for s in self.live), default=0)

    def step(self, eos: frozenset[int]) -> None:
        """One token for every sequence still running."""
        for seq in self.live:
            if seq.cancelled:
                _end(seq, "cancelled")
        if not self.live:
            return
        if self.generator.is_done():  # the batch's max_length: the context is full
            for seq in self.live:
                _end(seq, "length")
            return
        self.generator.generate_next_token()
        tokens = self.generator.get_next_tokens()
        for row, seq in enumerate(self.sequences):
            if seq.ended:
                continue
            token = int(tokens[row])
            if token in eos:
                _end(seq, "stop")
                continue
            seq.produced += 1
            seq.on_token(token)
            if seq.produced >= seq.sampling.max_new_tokens:
                _end(seq, "length")


def search_options(sequences: list[Sequence]) -> dict[str, Any]:
    """onnxruntime-genai's search options for a batch of sequences that share their sampling."""
    sampling = sequences[0].sampling
    search: dict[str, Any] = {"batch_size": len(sequences), "do_sample": not sampling.greedy}
    if not sampling.greedy:
        search.update(temperature=sampling.temperature, top_p=sampling.top_p)
    if sampling.seed is not None:
        search["random_seed"] = sampling.seed
    return search


def _end(seq: Sequence, reason: str, error: str | None = None) -> None:
    if not seq.ended:
        seq.ended, seq.finish_reason = True, reason
        seq.on_end(reason, error)


class Batcher:
    """The worker thread that admits, batches and steps every request (see the module's notes)."""

    def __init__(
        self,
        engine: GenaiEngine,
        *,
        eos_ids: set[int],
        pad_id: int,
        context_length: int,
        max_batch: int = 8,
        max_queue: int = 64,
        gather_s: float = 0.05,
        join_s: float = 0.1,
        recent_s: float = 2.0,
        sync: float = 0.5,
        sync_max_s: float = 1.0,
        regroup: int = 2,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.engine, self.eos = engine, frozenset(eos_ids)
        self.pad_id, self.context = pad_id, context_length
        self.max_batch, self.max_queue = max_batch, max_queue
        self.gather_s, self.join_s, self.recent_s = gather_s, join_s, recent_s
        self.sync, self.sync_max_s = sync, sync_max_s
        self.regroup = regroup  # how many times a batch's prefill may run again for newcomers
        self.demand: deque[tuple[float, int]] = deque()  # (when, requests wanted at once): lately's peak
        self.turn_s = 0.0  # how long a turn of the worker (admitting, stepping every batch) takes lately
        self._turn_ended: float | None = None  # when the last turn with batches ended
        self._idle_since = 0.0  # when the last batch ended: its clients come back from then on
        self.on_batch = on_batch or (lambda size: None)
        self.waiting: deque[Sequence] = deque()
        self.batches: list[_Batch] = []
        self._starting = 0  # admitted, their batch still being built: their slots are taken already
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="slmops-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the worker (what runs is cancelled: drain first if it should finish)."""
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=30)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def running(self) -> int:
        """Sequences being decoded now."""
        return sum(len(b.live) for b in list(self.batches))

    def submit(self, seq: Sequence) -> None:
        with self._wake:
            if len(self.waiting) >= self.max_queue + max(0, self._free()):
                raise QueueFull(
                    f"{self.max_batch} requests are being answered and {len(self.waiting)} are waiting "
                    f"(--max-batch {self.max_batch}, --max-queue {self.max_queue}): try again shortly"
                )
            self.waiting.append(seq)
            self._note_demand()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self.waiting and not self.batches:
                    self._wake.wait()
                if self._stop:
                    break
                if self.batches:  # its clients are wanted at once too: remembered until they come back
                    self._note_demand()
                if not self.batches and self.waiting and not self._due():
                    self._wake.wait(self._patience())  # idle: let the requests arriving with this one join it
                admitted = self._admit() if self._due() else []
            started = time.monotonic() if self._turn_ended is None else self._turn_ended
            for group in admitted:
                self._start(group)
            for batch in list(self.batches):
                self._step(batch)
            self._note_pace(started)
        for seq in [*self.waiting, *(s for b in self.batches for s in b.live)]:
            _end(seq, "cancelled")

    def _note_pace(self, started: float) -> None:
        """The pace that tells a batch about to end: a turn's whole period, from the last turn's
        end (the lock, admitting and prefills count too: timing the steps alone missed most of
        a turn when steps are short or the machine is busy); the first turn, as it is."""
        if not self.batches:
            self._turn_ended = None
            return
        self._turn_ended = time.monotonic()
        elapsed = self._turn_ended - started
        self.turn_s = 0.8 * self.turn_s + 0.2 * elapsed if self.turn_s else elapsed

    def _admit(self) -> list[list[Sequence]]:
        """Groups of waiting sequences (same adapter and sampling) that fit the free slots."""
        for seq in [s for s in self.waiting if s.cancelled]:
            self.waiting.remove(seq)
            _end(seq, "cancelled")
        groups = []
        free = self._free()
        while self.waiting and free > 0:
            group = self._take(self.waiting[0].key, free)
            groups.append(group)
            free -= len(group)
        return groups

    def _take(self, key: tuple[Any, ...], count: int) -> list[Sequence]:
        """The oldest ``count`` waiting requests of ``key``, out of the queue, their slots taken."""
        group = [s for s in self.waiting if s.key == key and not s.cancelled][: max(0, count)]
        for seq in group:
            self.waiting.remove(seq)
        self._starting += len(group)
        return group

    def _due(self) -> bool:
        """Whether the waiting requests start now (see the module's notes): no batch ends within
        what the oldest may wait for it, and it has waited long enough for company or the
        requests wanted at once lately are all here (or fill the free slots)."""
        if not self.waiting:
            return False
        if self._batch_ends_within_reach():
            return False  # start with its clients, as one batch
        if self._patience() <= 0:
            return True
        decoding = self.max_batch - self._free()
        return len(self.waiting) >= min(self._free(), self._expected() - decoding)

    def _batch_ends_within_reach(self) -> bool:
        """Whether a running batch ends before the oldest waiting request has waited ``sync`` of
        its own answer's time (at least ``join_s``, at most ``sync_max_s``), at the recent pace."""
        if not self.batches or not self.turn_s:
            return False
        oldest = self.waiting[0]
        waited = time.monotonic() - oldest.queued_at
        answer_s = oldest.sampling.max_new_tokens * self.turn_s
        reach = max(self.join_s, min(self.sync * answer_s, self.sync_max_s))
        soonest = min(b.steps_left for b in self.batches) * self.turn_s
        return waited + soonest <= reach

    def _patience(self) -> float:
        """How much longer the oldest waiting request may wait for company: counted from its
        arrival, or when idle from the last batch's end, if later: a request that waited for a
        batch to end (to start with its clients) then gives them ``gather_s`` to come back
        (started alone at the end, it began a split that came back round after round)."""
        if not self.waiting:
            return self.join_s if self.batches else self.gather_s
        if self.batches:
            return self.join_s - (time.monotonic() - self.waiting[0].queued_at)
        return self.gather_s - (time.monotonic() - max(self.waiting[0].queued_at, self._idle_since))

    def _note_demand(self) -> None:
        """Remember how many requests are wanted at once now (under the lock)."""
        now, wanted = time.monotonic(), self.max_batch - self._free() + len(self.waiting)
        if self.demand and self.demand[-1][1] == wanted:  # the same peak, renewed: one entry, not one a step
            self.demand[-1] = (now, wanted)
        else:
            self.demand.append((now, wanted))
        while self.demand and now - self.demand[0][0] > self.recent_s:
            self.demand.popleft()

    def _expected(self) -> int:
        """The most requests wanted at once lately: the clients that keep the server busy."""
        now = time.monotonic()
        return max((n for when, n in self.demand if now - when <= self.recent_s), default=1)

    def _free(self) -> int:
        """Slots for more sequences: ``max_batch`` less those decoding (a cancelled one holds none)."""
        decoding = sum(1 for b in list(self.batches) for s in b.live if not s.cancelled)
        return self.max_batch - decoding - self._starting

    def _start(self, group: list[Sequence]) -> None:
        """Build the group's batch (its prefill runs here, outside the lock, while requests
        arrive); requests for the same batch that came during the prefill join it before its
        first token: the prefill runs again with them (at most ``regroup`` times)."""
        batch = self._build(group)
        for _ in range(self.regroup):
            if batch is None:
                break
            with self._wake:
                newcomers = self._newcomers(group[0].key)
            if not newcomers:
                break
            group = group + newcomers
            batch = self._build(group)  # the first generator goes, its prefill unused
        with self._wake:  # the slots move from starting to decoding at once: none is free between
            self._starting -= len(group)
            if batch is not None:
                self.batches.append(batch)
        if batch is not None:
            self.on_batch(len(group))

    def _build(self, group: list[Sequence]) -> _Batch | None:
        """A batch prefilled for ``group``, or None when the runtime refused it (its requests fail)."""
        try:
            return _Batch(self.engine, group, pad_id=self.pad_id, context=self.context)
        except Exception as exc:  # the runtime refused the batch: its requests fail, the server goes on
            for seq in group:
                _end(seq, "error", f"{type(exc).__name__}: {exc}")
            return None

    def _newcomers(self, key: tuple[Any, ...]) -> list[Sequence]:
        """Waiting requests that may join a batch of ``key`` being built, within the free slots
        (under the lock).  Its rows have no token yet, so prefilling them again with the
        newcomers answers exactly as before: a row prefilled again after tokens of its own may
        not continue as it would have (measured on a block-32 target: 20 of 30 did not)."""
        return self._take(key, self._free())

    def _step(self, batch: _Batch) -> None:
        try:
            batch.step(self.eos)
        except Exception as exc:
            for seq in batch.live:
                _end(seq, "error", f"{type(exc).__name__}: {exc}")
        if not batch.live:
            self.batches.remove(batch)  # its generator (and its KV cache) goes with it
            if not self.batches:
                self._idle_since = time.monotonic()
