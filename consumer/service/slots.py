"""Request slots: at most CONSUMER_MAX_IN_FLIGHT_REQUESTS batches with a request on the wire,
or about to send one.

A batch holds its slot while it sends and gives it back while it waits between requests (a
retry's backoff, an unknown outcome's settle time, a closed API gate), taking one again before
its next request; a batch waiting to take one back goes before new batches. So batches of
resources that keep failing, however many, never hold every slot while they wait, and the
others go on at their usual pace (issue 24).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable


class Slots:
    def __init__(self, limit: int, on_free: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._on_free = on_free

    def free(self) -> int:
        """Slots a new batch may take now (batches taking theirs back come first)."""
        return max(0, self.limit - self.used - len(self._waiters))

    def take(self) -> Hold:
        """A slot for a new batch, now (the caller saw `free() > 0`)."""
        self.used += 1
        return Hold(self)

    def _give_back(self) -> None:
        self.used -= 1
        while self._waiters and self.used < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.used += 1
                waiter.set_result(None)
                return
        self._on_free()

    async def _take_back(self) -> None:
        if self.used < self.limit and not self._waiters:
            self.used += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give_back()  # granted as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise


class Hold:
    """One batch's claim on a slot; `release` is idempotent (a task cancelled anywhere frees
    its slot once)."""

    __slots__ = ("_slots", "held")

    def __init__(self, slots: Slots | None) -> None:
        self._slots = slots
        self.held = slots is not None

    @classmethod
    def none(cls) -> Hold:
        """No slot management (tests of the sender alone)."""
        return cls(None)

    def release(self) -> None:
        if self.held and self._slots is not None:
            self.held = False
            self._slots._give_back()

    @contextlib.asynccontextmanager
    async def waiting(self) -> AsyncIterator[None]:
        """Give the slot back for the wait inside, and take one again after it."""
        if self._slots is None or not self.held:
            yield
            return
        self.release()
        yield  # an error (a cancel) inside ends the batch: no slot is taken back for it
        await self._slots._take_back()
        self.held = True
