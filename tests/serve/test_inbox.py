"""The batcher's tokens reach the event loop in bunches: a wake-up per bunch, not per token."""

from __future__ import annotations

import asyncio
import threading

from slmops_pipelines.serve.inbox import Inbox


def test_a_fast_producer_wakes_the_loop_once_per_bunch_and_loses_nothing():
    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        wakeups = 0
        schedule = loop.call_soon_threadsafe

        def counted(*args):
            nonlocal wakeups
            wakeups += 1
            return schedule(*args)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        inbox = Inbox(loop)
        producer = threading.Thread(target=lambda: [inbox.put(("token", i, None)) for i in range(20000)])
        producer.start()
        got: list[int] = []
        while len(got) < 20000:
            got += [value for _, value, _ in await inbox.take(timeout=5)]
        producer.join()
        return got, wakeups

    got, wakeups = asyncio.run(main())
    assert got == list(range(20000))  # all of them, in order
    assert wakeups < 2000  # one per token before: 20000


def test_take_times_out_when_nothing_comes():
    async def main() -> None:
        inbox = Inbox(asyncio.get_running_loop())
        try:
            await inbox.take(timeout=0.05)
        except asyncio.TimeoutError:
            return
        raise AssertionError("take returned with nothing in the inbox")

    asyncio.run(main())
