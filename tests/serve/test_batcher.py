"""The batcher's admission: clients that come back together start as one batch, nobody waits for nothing.

A batch cannot grow once it has started (onnxruntime-genai's generator), so a request started
alone a few milliseconds before its peers costs a step of its own for the whole answer.  These
drive the real batcher over the suite's tiny onnxruntime-genai model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from slmops_pipelines.chat.engines import Sampling
from slmops_pipelines.serve.batcher import Batcher, Sequence


@pytest.fixture(scope="module")
def engine(genai_target: Path):
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

    return GenaiEngine(genai_target, threads=1)


@pytest.fixture
def sizes() -> list[int]:
    """Each batch's size, as it started."""
    return []


@pytest.fixture
def batcher(engine, sizes: list[int]) -> Iterator[Batcher]:
    """A running batcher whose waits (5 s) are far longer than any answer here: a test that
    took one would show."""
    running = Batcher(
        engine,
        eos_ids={2},
        pad_id=0,
        context_length=16384,
        max_batch=8,
        gather_s=5.0,
        join_s=5.0,
        on_batch=sizes.append,
    )
    running.start()
    yield running
    running.stop()


@contextmanager
def running_batcher(batcher: Batcher) -> Iterator[Batcher]:
    """``batcher`` running for the block, stopped after it."""
    batcher.start()
    try:
        yield batcher
    finally:
        batcher.stop()


def send(batcher: Batcher, max_new_tokens: int = 4) -> threading.Event:
    """Submit one request; the event is set when it ends."""
    done = threading.Event()

    def on_end(reason: str, error: str | None) -> None:
        assert error is None, error
        done.set()

    sampling = Sampling(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    batcher.submit(Sequence([1, 5, 6, 7], None, sampling, lambda token: None, on_end))
    return done


def test_clients_that_come_back_one_after_another_start_as_one_batch(batcher, sizes):
    first = [send(batcher) for _ in range(4)]  # four clients at once
    assert all(done.wait(30) for done in first)
    before, started = len(sizes), time.monotonic()
    again = []
    for _ in range(4):  # they come back a few milliseconds apart, as clients do
        again.append(send(batcher))
        time.sleep(0.03)
    assert all(done.wait(30) for done in again)
    assert sizes[before:] == [4]
    assert time.monotonic() - started < 2.5  # started when the fourth came, not after 5 s


def test_one_client_at_a_time_never_waits_for_company(batcher, sizes):
    for _ in range(3):
        started = time.monotonic()
        assert send(batcher).wait(30)
        assert time.monotonic() - started < 2.5  # not the 5 s gather window
    assert sizes == [1, 1, 1]


def test_a_request_does_not_wait_for_a_batch_far_from_its_end(batcher, sizes):
    long = send(batcher, max_new_tokens=100000)  # decodes for minutes
    deadline = time.monotonic() + 10
    while not sizes:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    assert send(batcher).wait(30)
    assert time.monotonic() - started < 2.5  # started beside it, not after a 5 s wait
    assert sizes == [1, 1] and not long.is_set()


@pytest.mark.parametrize(
    ("running_tokens", "sent_after", "new_tokens", "sync_max_s", "waits"),
    [(300, 200, 10000, 600.0, True), (3000, 500, 1000, 600.0, False), (3000, 500, 10000, 0.0, False)],
    ids=["ends-within-half", "ends-later", "past-the-cap"],
)
def test_a_request_waits_for_a_batch_that_ends_within_half_its_own_answer(
    engine, running_tokens, sent_after, new_tokens, sync_max_s, waits
):
    """Clients whose answers ended apart would stay apart (two batches, a step each) for every
    answer after: one that comes when a running batch has less left than half its own answer
    waits for it, one that comes earlier starts beside it at once, and so does one whose wait
    would pass ``sync_max_s`` (the first two lift that cap).  A step here takes a fraction of
    a millisecond and a busy machine's pauses swing the pace severalfold, so the margins are
    wide: 100 steps left against half of 10000, 2500 against half of 1000."""
    with running_batcher(Batcher(
        engine, eos_ids={2}, pad_id=0, context_length=16384, gather_s=0.01, join_s=0.01, sync_max_s=sync_max_s,
    )) as batcher:  # fmt: skip
        events: dict[str, float] = {}
        produced = threading.Semaphore(0)

        def submit(name: str, tokens: int, on_token) -> Sequence:
            sampling = Sampling(max_new_tokens=tokens, min_new_tokens=tokens)
            on_end = lambda reason, error: events.setdefault(f"{name} end", time.monotonic())  # noqa: E731
            seq = Sequence([1, 5, 6, 7], None, sampling, on_token, on_end)
            batcher.submit(seq)
            return seq

        submit("running", running_tokens, lambda token: produced.release())
        for _ in range(sent_after):  # the running batch is that far into its answer
            assert produced.acquire(timeout=30)
        new = submit("new", new_tokens, lambda token: events.setdefault("new first", time.monotonic()))
        deadline = time.monotonic() + 60
        while not {"new first", "running end"} <= events.keys():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        new.cancel()
        assert (events["new first"] > events["running end"]) is waits


def test_clients_of_an_answer_longer_than_the_memory_of_demand_come_back_as_one_batch(engine):
    """Demand is remembered ``recent_s``; a running batch renews it every step, so its clients,
    back after an answer longer than that, still start together."""
    sizes: list[int] = []
    with running_batcher(Batcher(
        engine, eos_ids={2}, pad_id=0, context_length=16384, gather_s=5.0, join_s=5.0,
        recent_s=1.0, on_batch=sizes.append,
    )) as batcher:  # fmt: skip
        started = time.monotonic()
        first = [send(batcher, max_new_tokens=4000) for _ in range(4)]
        assert all(done.wait(60) for done in first)
        assert time.monotonic() - started > 1.0  # the answer outlasted the memory of its submits
        again = []
        for _ in range(4):
            again.append(send(batcher, max_new_tokens=4))
            time.sleep(0.03)
        assert all(done.wait(30) for done in again)
        assert sizes == [4, 4]


def test_a_request_that_waited_for_a_batch_gives_its_clients_time_to_come_back(engine):
    """A request that waits for a running batch's end (to start with its clients) has used up
    its own wait for company by then: started alone at that end, before the clients' next
    requests came, it began a split that came back round after round (seen: batches of 1 and 7
    for 8 clients).  From the end it gives them ``gather_s``, and they start as one batch."""
    sizes: list[int] = []
    with running_batcher(Batcher(
        engine, eos_ids={2}, pad_id=0, context_length=16384, gather_s=0.3, join_s=0.01,
        sync_max_s=600.0, on_batch=sizes.append,
    )) as batcher:  # fmt: skip
        produced = threading.Semaphore(0)
        back: list[threading.Event] = []

        def come_back(reason: str, error: str | None) -> None:  # a client's next request, 30 ms after
            threading.Timer(0.03, lambda: back.append(send(batcher, max_new_tokens=4))).start()

        sampling = Sampling(max_new_tokens=3000, min_new_tokens=3000)
        for _ in range(4):
            batcher.submit(
                Sequence([1, 5, 6, 7], None, sampling, lambda token: produced.release(), come_back)
            )
        for _ in range(4 * 2000):  # 1000 steps left: longer than gather_s here, a fifth of half of 10000
            assert produced.acquire(timeout=30)
        # It may start with them: the same search options (min_new_tokens is the batch's).
        late = Sampling(max_new_tokens=10000, min_new_tokens=4)
        batcher.submit(Sequence([1, 5, 6, 7], None, late, lambda token: None, lambda reason, error: None))
        deadline = time.monotonic() + 60
        while len(back) < 4 or not all(done.wait(0.1) for done in back):
            assert time.monotonic() < deadline
        assert sizes == [4, 5]


class _FirstPrefillWaits:
    """The engine, its first batch's generator held until ``go`` is set: requests sent meanwhile
    arrive while that batch is being prefilled."""

    def __init__(self, engine) -> None:
        self.engine, self.building, self.go = engine, threading.Event(), threading.Event()

    def use_adapter(self, name: str | None) -> None:
        self.engine.use_adapter(name)

    def generator(self, *args, **kwargs):
        if not self.building.is_set():
            self.building.set()
            assert self.go.wait(30)
        return self.engine.generator(*args, **kwargs)


def answer(batcher: Batcher, prompt: list[int]) -> tuple[list[int], threading.Event]:
    tokens: list[int] = []
    done = threading.Event()
    sampling = Sampling(max_new_tokens=12, min_new_tokens=12)
    batcher.submit(Sequence(prompt, None, sampling, tokens.append, lambda reason, error: done.set()))
    return tokens, done


def test_requests_that_come_during_a_batchs_prefill_join_it_and_answer_as_alone(engine):
    """A burst's first request starts alone (nobody else was expected); the others, arriving
    while its prefill runs, join it before its first token instead of decoding beside it as a
    second batch for the whole answer, and every answer is the one it gets alone."""
    prompts = [[1, 5, 6, 7], [1, 9, 10, 11, 12, 13], [1, 20, 21], [1, 30, 31, 32, 33]]
    # Padded on the right with the model's own pad token (2), which onnxruntime-genai masks.
    with running_batcher(
        Batcher(engine, eos_ids={2}, pad_id=2, context_length=16384, gather_s=0.01)
    ) as alone:
        expected = []
        for prompt in prompts:
            tokens, done = answer(alone, prompt)
            assert done.wait(30)
            expected.append(tokens)
    held, sizes = _FirstPrefillWaits(engine), []
    with running_batcher(
        Batcher(held, eos_ids={2}, pad_id=2, context_length=16384, gather_s=0.01, on_batch=sizes.append)
    ) as batcher:
        answers = [answer(batcher, prompts[0])]
        assert held.building.wait(30)  # the first request's batch is being built, alone
        answers += [answer(batcher, prompt) for prompt in prompts[1:]]
        held.go.set()
        assert all(done.wait(30) for _, done in answers)
        assert sizes == [4]
        assert [tokens for tokens, _ in answers] == expected
