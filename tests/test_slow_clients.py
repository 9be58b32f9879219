"""Slow and stuck clients against the real server (`python -m service`) on 127.0.0.1, with real sockets: they
are cut off at the header or body deadline, and however many there are, a normal request is still answered;
the server never runs out of descriptors and its log stays short. And a client still sending its body when it is
refused gets the refusal (RefusedBodyDrainMiddleware, driven as ASGI)."""

import asyncio
import logging
import os
import resource
import socket
import time

import httpx
import pytest

from service.server import RateLimitedMessages

from .images import face_bytes
from .servers import running_server

DESCRIPTOR_LIMIT = 256  # the server's RLIMIT_NOFILE here: FER_MAX_CONNECTIONS=1000 has to shrink to fit
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
SLACK_S = 3.0  # timers on a busy 2-core machine


def limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTOR_LIMIT, DESCRIPTOR_LIMIT))


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    settings = {"FER_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S), "FER_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
                "FER_MAX_CONNECTIONS": "1000"}
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(model_dir, log_path, settings, preexec_fn=limit_descriptors) as running:
        yield running


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server["port"]), timeout=HEADER_TIMEOUT_S + BODY_TIMEOUT_S + 10)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received, time.monotonic() - started


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_half_a_header_then_silence_is_cut_off_with_408(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        received, waited = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 408 ") and b"not received in time" in received
    assert HEADER_TIMEOUT_S * 0.8 <= waited <= HEADER_TIMEOUT_S + SLACK_S


def test_a_connection_that_never_speaks_is_closed(server):
    with connect(server) as sock:
        received, waited = read_until_closed(sock)
    assert received == b"" and waited <= HEADER_TIMEOUT_S + SLACK_S


def test_trickled_headers_do_not_reset_the_deadline(server):
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 40 + b"\r\n\r\n"
    with connect(server) as sock:
        started = time.monotonic()
        try:
            for byte in request:  # one byte every 0.1 s: 4 s for the whole header
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received, _ = read_until_closed(sock)
    assert b"408" in received.split(b"\r\n")[0] or received == b""
    assert time.monotonic() - started <= HEADER_TIMEOUT_S + SLACK_S + 1


def test_a_stalled_body_is_cut_off_and_the_log_stays_clean(server):
    with connect(server) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n{\"images\": [\"")
        received, waited = read_until_closed(sock)
    assert BODY_TIMEOUT_S * 0.8 <= waited <= BODY_TIMEOUT_S + SLACK_S
    time.sleep(0.5)
    assert "Traceback" not in server["log"].read_text()


def test_a_slow_client_within_the_deadlines_is_answered(server):
    with connect(server) as sock:
        for part in (b"GET /healthz HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"Connection: close\r\n\r\n"):
            sock.sendall(part)
            time.sleep(HEADER_TIMEOUT_S / 5)
        received, _ = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 200 ") and b"alive" in received


def test_many_stalled_clients_do_not_stop_a_normal_request(server):
    stalled = []
    try:
        for _ in range(2 * DESCRIPTOR_LIMIT):  # twice as many connections as the server has descriptors
            sock = socket.create_connection(("127.0.0.1", server["port"]), timeout=10)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            stalled.append(sock)
            assert open_descriptors(server["pid"]) < DESCRIPTOR_LIMIT
        started = time.monotonic()
        health = httpx.get(f"{server['base']}/healthz", timeout=10)
        predict = httpx.post(f"{server['base']}/predict", files=[("files", ("a.png", face_bytes(), "image/png"))],
                             timeout=30)
        assert health.status_code == 200 and predict.status_code == 200
        assert time.monotonic() - started < 10
    finally:
        for sock in stalled:
            sock.close()
    log = server["log"].read_text()
    assert "at most" in log and "FER_MAX_CONNECTIONS=1000 does not fit the descriptor limit of 256" in log
    assert "out of system resource" not in log and "Traceback" not in log
    assert len(log.splitlines()) < 60, log[-3000:]


def test_a_flood_of_accept_failures_logs_one_line_a_minute():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    flood = logging.getLogger("tests.flood")
    flood.addHandler(handler)
    flood.addFilter(RateLimitedMessages(interval_s=60))
    try:
        for _ in range(1000):  # what asyncio logs on every accept retry once descriptors run out
            flood.error("socket.accept() out of system resource\nsocket: <socket>", exc_info=OSError(24, "EMFILE"))
        flood.warning("something else")
    finally:
        flood.removeHandler(handler)
    assert [record.getMessage().split("\n")[0] for record in records] == [
        "socket.accept() out of system resource", "something else"]


def refused_early(chunks: list[bytes], declared: int | None = None, status: int = 503,
                  headers: list[tuple[bytes, bytes]] = ()) -> list[tuple[str, object]]:
    """An app that answers `status` without reading the body, behind RefusedBodyDrainMiddleware (a bound of
    1,000 bytes): in order, what the server side received of the body and what it sent."""
    from service.uploads import RefusedBodyDrainMiddleware

    events = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"refused"})

    async def receive():
        if not chunks:
            events.append(("received", "disconnect"))
            return {"type": "http.disconnect"}
        chunk = chunks.pop(0)
        events.append(("received", len(chunk)))
        return {"type": "http.request", "body": chunk, "more_body": chunk != b""}

    async def send(message):
        events.append(("sent", message.get("status", message["type"])))

    length = [(b"content-length", str(declared).encode())] if declared is not None else []
    asyncio.run(RefusedBodyDrainMiddleware(app, max_bytes=1000)(
        {"type": "http", "method": "POST", "path": "/video", "headers": length + list(headers)}, receive, send))
    return events


ANSWER = [("sent", 503), ("sent", "http.response.body")]


def test_a_body_refused_before_it_is_read_is_read_to_its_end_first():
    """A client still sending its body when the answer comes gets the answer, not a reset: the rest of the body is
    read first, whether its length was declared or not, until the client hangs up or the bound is reached."""
    assert refused_early([b"x" * 100] * 3 + [b""], declared=300) == [("received", 100)] * 3 + [("received", 0)] + ANSWER
    assert refused_early([b"x" * 100] * 2 + [b""]) == [("received", 100)] * 2 + [("received", 0)] + ANSWER
    assert refused_early([b"x" * 100]) == [("received", 100), ("received", "disconnect")] + ANSWER
    # past the bound (1,000 bytes) the answer goes without the rest
    assert refused_early([b"x" * 400] * 10) == [("received", 400)] * 3 + ANSWER


def test_what_the_drain_does_not_wait_for():
    """A body declared over the bound, a 413 (refused for its size), an answer that is not an error (the app reads
    its own body), and a client that waits for `100 Continue` (reading the body would ask it to send it)."""
    assert refused_early([b"x" * 100] * 50, declared=5000) == ANSWER
    assert refused_early([b"x" * 100] * 3, declared=300, status=413) == [("sent", 413), ("sent", "http.response.body")]
    assert refused_early([b"x" * 100] * 3, declared=300, status=200) == [("sent", 200), ("sent", "http.response.body")]
    assert refused_early([b"x" * 100] * 3, declared=300, headers=[(b"expect", b"100-continue")]) == ANSWER
