"""uvicorn, hardened against slow and stuck clients.

uvicorn (0.54) has no timeout on reading a request: `timeout_keep_alive` only covers the idle time between
requests and is cancelled by the first byte received, so a client that sends half a header and stalls holds
its connection, and its file descriptor, forever; an ASGI middleware cannot help because the app only runs once
the headers are complete. Its `limit_concurrency` answers 503 once headers arrive but still accepts every
connection. So the h11 protocol is extended here (uvicorn takes a protocol class as `http`):

- a deadline for the headers (from the connection's start or the end of the previous response) and another
  for the body (from the end of the headers); a connection that misses one is closed (408 when headers were
  started);
- a cap on open connections, kept below the process's descriptor limit: past it, the connection that has
  waited longest for its headers (idle or stalled) is closed to make room; when every connection is busy
  with a request, the newcomer gets 503 and is closed;
- log lines a flood of bad clients can trigger (accept failures on descriptor exhaustion, invalid requests)
  are rate-limited.
"""

import asyncio
import logging
import os
import resource
import signal
import threading
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("service")

# Descriptors kept for the process itself: model files, spooled uploads, logs, and what loading the model opens
# after the cap is computed (both backends measured by FER_BACKEND=auto, the face detector, worker threads).
DESCRIPTOR_RESERVE = 96
# The listen queue, and so the most connections asyncio accepts in one loop turn.
ACCEPT_BACKLOG = 32
# Descriptors accepted connections hold before the cap can close any: the connection that takes one past the
# cap is accepted in one turn of the event loop, gets its transport in the next, closes an older connection in
# `connection_made` in the third and that socket is closed in the fourth; each of those turns may accept a full
# backlog more. The budget holds them on top of the cap.
ACCEPT_IN_FLIGHT = 4 * ACCEPT_BACKLOG
REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
           b"connection: close\r\ncontent-length: 46\r\n\r\n{\"detail\": \"too many connections, retry later\"}")
HEADER_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                  b"content-length: 46\r\n\r\n{\"detail\": \"request headers not received in time\"}")
RATE_LIMITED_MESSAGES = ("socket.accept() out of system resource", "Invalid HTTP request received.")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body deadlines and a connection cap (class attributes, set by
    `guarded_protocol`)."""

    header_timeout_s = 10.0
    body_timeout_s = 60.0
    max_connections = 1000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._phase: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self.waiting_since: float | None = None  # set while the connection waits for a request's headers
        super().connection_made(transport)
        self._follow_request()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_request()

    def _follow_request(self) -> None:
        """Arm the deadline of the phase the client is in: sending headers, sending a body, or neither."""
        if self.transport.is_closing():
            self._cancel_deadline()
            return
        phase = {h11.IDLE: "headers", h11.SEND_BODY: "body"}.get(self.conn.their_state)
        if phase == self._phase:
            return
        self._cancel_deadline()
        self._phase = phase
        self.waiting_since = self.loop.time() if phase == "headers" else None
        if phase is not None:
            timeout = self.header_timeout_s if phase == "headers" else self.body_timeout_s
            self._deadline = self.loop.call_later(timeout, self._expire)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        """Headers late: 408 if some were sent (silence otherwise). Body late: the app sees a disconnect."""
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._phase == "headers" and self.conn.trailing_data[0]:
            self.transport.write(HEADER_TIMEOUT)
        self.transport.close()

    def _make_room(self) -> None:
        waiting = [c for c in self.connections
                   if c is not self and getattr(c, "waiting_since", None) is not None and not c.transport.is_closing()]
        if waiting:
            min(waiting, key=lambda c: c.waiting_since).transport.close()
        else:
            self.transport.write(REFUSED)
            self.transport.close()


def guarded_protocol(header_timeout_s: float, body_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s, "max_connections": max_connections})


def connection_cap(wanted: int) -> int:
    """`wanted`, or fewer where the descriptor limit cannot hold that many connections beside what the process
    already has open plus a reserve. Raises the soft limit towards the hard one first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    needed = wanted + open_now + DESCRIPTOR_RESERVE + ACCEPT_IN_FLIGHT
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    cap = max(1, min(wanted, soft - open_now - DESCRIPTOR_RESERVE - ACCEPT_IN_FLIGHT))
    if cap < wanted:
        logger.warning("at most %d connections (FER_MAX_CONNECTIONS=%d does not fit the descriptor limit of %d)",
                       cap, wanted, soft)
    return cap


class RateLimitedMessages(logging.Filter):
    """Lets the first of each listed message through, then one per `interval_s`, saying how many were held."""

    def __init__(self, messages: tuple[str, ...] = RATE_LIMITED_MESSAGES, interval_s: float = 60.0):
        super().__init__()
        self.messages = messages
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        key = next((m for m in self.messages if message.startswith(m)), None)
        if key is None:
            return True
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.interval_s) < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            held, self._held[key], self._last[key] = self._held.get(key, 0), 0, now
        if held:  # the traceback was logged the first time
            record.msg, record.args = f"{message} ({held} more like it in the last {self.interval_s:.0f} s)", ()
            record.exc_info = None
        return True


def quiet_flood_logs() -> None:
    rate_limit = RateLimitedMessages()
    for name in ("asyncio", "uvicorn.error"):
        logging.getLogger(name).addFilter(rate_limit)


class DrainingServer(uvicorn.Server):
    """Marks the app as draining the moment SIGTERM (or SIGINT) arrives, so /readyz answers 503 on any
    connection still open, before uvicorn closes the listener and finishes in-flight requests."""

    def __init__(self, config: uvicorn.Config, draining: threading.Event):
        super().__init__(config)
        self.draining = draining

    def handle_exit(self, sig: int, frame) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.draining.set()
        super().handle_exit(sig, frame)
