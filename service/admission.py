"""Admission control for explanation work (saliency maps, uncached filter visualisations) and videos.

Explanations run on an executor of their own, so they never take the threads that decode /predict's images.
At most `workers` run and `max_waiting` wait; a request beyond that is answered 503 before its images are
decoded. Each admitted explanation request gets a cancellation event, set when its client disconnects or the
service starts draining: work that has not started is dropped, and running work stops at its next forward pass.
Videos are admitted by the same rule (`Admission`), FER_MAX_VIDEOS_IN_FLIGHT at once.
"""

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from starlette.requests import Request

from service.runtime.explain import Cancelled

T = TypeVar("T")


class Busy(RuntimeError):
    """Every place of a kind of work is taken; the client should retry later."""


class Draining(RuntimeError):
    """The service is shutting down and takes no new work."""


class Ticket:
    """An admitted request's place: its cancellation event."""

    def __init__(self) -> None:
        self.cancel = threading.Event()


class Admission:
    """At most `capacity` requests of one kind at once (`what` names them in the refusal): a place for one for as
    long as a block runs, or Busy / Draining at once. The plane's one admission rule, for explanations and videos;
    only the explanation pool cancels its tickets (a video stops when its client leaves)."""

    def __init__(self, capacity: int, what: str, draining: threading.Event):
        self.capacity, self.what = capacity, what
        self.tickets: set[Ticket] = set()
        self._draining = draining  # set by the server the moment SIGTERM arrives

    @contextlib.contextmanager
    def admitted(self) -> Iterator[Ticket]:
        if self._draining.is_set():
            raise Draining("the service is shutting down")
        if len(self.tickets) >= self.capacity:
            raise Busy(f"too many {self.what} at once (limit {self.capacity})")
        ticket = Ticket()
        self.tickets.add(ticket)
        try:
            yield ticket
        finally:
            self.tickets.discard(ticket)


class ExplanationPool:
    def __init__(self, workers: int, max_waiting: int, draining: threading.Event, poll_s: float = 0.25):
        self.admission = Admission(workers + max_waiting, "explanation requests running or waiting", draining)
        self.admitted = self.admission.admitted
        self.poll_s = poll_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="explain")
        self._draining = draining

    async def run(self, ticket: Ticket, request: Request | None, work: Callable[..., T], *args) -> T:
        """`work(*args, cancel=ticket.cancel)` on the pool; cancelled when `request`'s client disconnects.
        Raises Cancelled (client gone) or Draining (shutdown) instead of a result."""
        def guarded():
            if ticket.cancel.is_set():  # dropped before it started
                raise Cancelled("cancelled before it started")
            return work(*args, cancel=ticket.cancel)

        future = asyncio.get_running_loop().run_in_executor(self._executor, guarded)
        watcher = asyncio.create_task(self._watch(request, ticket)) if request is not None else None
        try:
            return await future
        except Cancelled:
            if self._draining.is_set():
                raise Draining("the service is shutting down") from None
            raise
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _watch(self, request: Request, ticket: Ticket) -> None:
        """Cancel the ticket when its client disconnects or the service starts draining."""
        while not ticket.cancel.is_set():
            if self._draining.is_set() or await request.is_disconnected():
                ticket.cancel.set()
                return
            await asyncio.sleep(self.poll_s)

    def drain(self) -> None:
        """Refuse new work, cancel queued and running work (it stops at its next forward pass)."""
        self._draining.set()
        for ticket in list(self.admission.tickets):
            ticket.cancel.set()

    def close(self) -> None:
        """Drain, then wait for the workers, which finish quickly once cancelled."""
        self.drain()
        self._executor.shutdown(wait=True)
