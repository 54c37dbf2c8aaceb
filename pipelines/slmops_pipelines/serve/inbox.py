"""Events from the batcher's thread to the event loop, handed over in bunches.

The batcher makes a token every fraction of a millisecond per sequence.  Waking the event
loop once per token (``call_soon_threadsafe`` each time) costs the loop a turn per token,
and each turn gives the interpreter's lock back to the batcher's thread: the loop falls
behind the tokens, and a new connection waits behind thousands of them (seen: 10 s before
a request was even read).  An inbox wakes the loop once per bunch: the first event after
the loop took the last bunch schedules one wake-up, the others just join it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

Event = tuple[str, Any, Any]


class Inbox:
    """A thread-safe mailbox read by one coroutine on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._lock = threading.Lock()
        self._woken = False  # a wake-up is on its way to the loop

    def put(self, event: Event) -> None:
        """From any thread: add ``event``; the loop is woken once for all events until it reads."""
        with self._lock:
            self._items.append(event)
            if self._woken:
                return
            self._woken = True
        self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._woken = False
        self._ready.set()

    async def take(self, timeout: float) -> list[Event]:
        """Every event there now, waiting up to ``timeout`` (``TimeoutError``) for the first."""
        if self._items:
            await asyncio.sleep(0)  # others run between two bunches, however fast tokens come
        else:
            self._ready.clear()
            if not self._items:  # cleared before looking: a put from now on sets it again
                await asyncio.wait_for(self._ready.wait(), timeout)
        with self._lock:
            bunch = list(self._items)
            self._items.clear()
        return bunch
