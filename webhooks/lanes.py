"""Deliveries in flight: at most WEBHOOK_CONCURRENCY at once, and WEBHOOK_CONCURRENCY_PER_CLIENT of one client, so
that a client whose receiver is slow or failing fills its own lane and no other's.

An event of a client at its cap waits in that client's queue (at most WAITING_PER_SLOT times the cap, and no more
than a quarter of what the process may hold: a burst of a healthy receiver's events waits here for milliseconds);
the clients' queues are served in turn as slots free up. Beyond, the caller puts the event off (to the retries,
without counting an attempt): what a process holds stays bounded (HELD_PER_SLOT times the total cap), and a client
whose receiver is stuck holds a quarter of it at most.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable

from webhooks.events import Event

logger = logging.getLogger(__name__)

WAITING_PER_SLOT = 16
"""Events of one client that may wait here per delivery slot it has."""
HELD_PER_SLOT = 4
"""Events a process holds (running or waiting) per delivery slot it has: what it reads in at most."""


class Lanes:
    def __init__(self, total: int, per_client: int, deliver: Callable[[Event], Awaitable[None]]) -> None:
        self.total = total
        self.per_client = per_client
        self._deliver = deliver
        self._running: Counter[str] = Counter()
        self._running_total = 0
        self._waiting: OrderedDict[str, deque[Event]] = OrderedDict()
        self._waiting_total = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.waiting_per_client = max(
            per_client, min(WAITING_PER_SLOT * per_client, HELD_PER_SLOT * total // 4 - per_client)
        )
        """Events of one client that may wait: what it holds stays within a quarter of what the process may hold."""
        self.held: dict[str, Event] = {}
        """Every event running or waiting here, by id: what the process must keep leased."""
        self._draining = False
        self.freed = asyncio.Event()
        """Set whenever a delivery ends (room for more)."""

    @property
    def room(self) -> int:
        """Events the process may take in now: its holding capacity less those running or waiting."""
        return max(0, HELD_PER_SLOT * self.total - self._running_total - self._waiting_total)

    def offer(self, event: Event) -> bool:
        """Start the event's delivery, or queue it behind its client's; False (nothing done) when that queue is
        full too. An event already held (taken again after its lease was renewed late) is ignored."""
        if event.msg_id in self.held:
            return True
        owner = event.owner
        if self._running_total < self.total and self._running[owner] < self.per_client:
            self._start(event)
            return True
        queue = self._waiting.setdefault(owner, deque())
        if len(queue) >= self.waiting_per_client:
            return False
        queue.append(event)
        self._waiting_total += 1
        self.held[event.msg_id] = event
        return True

    def _start(self, event: Event) -> None:
        owner = event.owner
        self._running[owner] += 1
        self._running_total += 1
        self.held[event.msg_id] = event
        task = asyncio.create_task(self._run(event, owner))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, event: Event, owner: str) -> None:
        try:
            await self._deliver(event)
        except Exception:
            # The event stays pending (its lease runs out, then it is taken again): at least once.
            logger.exception("webhook delivery crashed", extra={"webhook_id": event.msg_id})
        finally:
            self.held.pop(event.msg_id, None)
            self._running[owner] -= 1
            if not self._running[owner]:
                del self._running[owner]
            self._running_total -= 1
            if not self._draining:
                self._start_waiting()
            self.freed.set()

    def _start_waiting(self) -> None:
        """Start waiting events while there is room, the clients in turn."""
        progress = True
        while progress and self._waiting and self._running_total < self.total:
            progress = False
            for owner in list(self._waiting):
                if self._running_total >= self.total:
                    break
                if self._running[owner] >= self.per_client:
                    continue
                queue = self._waiting[owner]
                event = queue.popleft()
                self._waiting_total -= 1
                self._waiting.move_to_end(owner)
                if not queue:
                    del self._waiting[owner]
                self.held.pop(event.msg_id, None)
                self._start(event)
                progress = True

    async def drain(self, grace: float) -> None:
        """Wait up to `grace` seconds for the deliveries running; those not done then are cancelled (their events
        stay pending, and are sent again). Waiting events are left pending."""
        self._draining = True
        for queue in self._waiting.values():
            for event in queue:
                self.held.pop(event.msg_id, None)
        self._waiting.clear()
        self._waiting_total = 0
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
