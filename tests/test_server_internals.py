"""service/server.py subclasses uvicorn's h11 protocol and server and reads their internals (pyproject.toml pins
uvicorn's minor version): this fails loudly, naming what changed, when an upgrade moves them."""

import asyncio
import inspect

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from service.server import GuardedH11Protocol


def test_the_uvicorn_internals_the_guarded_protocol_uses_are_there():
    for method in ("connection_made", "connection_lost", "handle_events", "on_response_complete"):
        assert method in vars(H11Protocol), f"uvicorn's H11Protocol no longer defines {method}"
    assert list(inspect.signature(H11Protocol.connection_made).parameters) == ["self", "transport"]
    assert list(inspect.signature(uvicorn.Server.handle_exit).parameters) == ["self", "sig", "frame"]
    config = uvicorn.Config(lambda scope, receive, send: None, http=GuardedH11Protocol)
    config.load()
    loop = asyncio.new_event_loop()
    try:
        protocol = GuardedH11Protocol(config, ServerState(), {}, _loop=loop)
        # what _follow_request, _expire and _make_room read
        assert isinstance(protocol.conn, h11.Connection) and protocol.conn.their_state is h11.IDLE
        assert isinstance(protocol.conn.trailing_data, tuple) and protocol.conn.trailing_data[0] == b""
        assert isinstance(protocol.connections, set) and protocol.loop is loop
    finally:
        loop.close()


def _refusing_app_run(declared: int | None, chunks: list[bytes], status: int = 503):
    """An app that answers `status` without reading the body, behind RefusedBodyDrainMiddleware: the messages, in
    order, that the server side saw (what was received, what was sent)."""
    from service.uploads import RefusedBodyDrainMiddleware

    events = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"refused"})

    async def receive():
        chunk = chunks.pop(0)
        events.append(("received", len(chunk)))
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        events.append(("sent", message["type"]))

    headers = [(b"content-length", str(declared).encode())] if declared is not None else []
    asyncio.run(RefusedBodyDrainMiddleware(app, max_bytes=1000)(
        {"type": "http", "method": "POST", "path": "/video", "headers": headers}, receive, send))
    return events


def test_a_refused_body_is_read_to_its_end_before_the_answer():
    """A client still sending its body when the answer comes gets the answer, not a reset: the rest of the body
    is read first (up to a bound); a body declared over the bound is not waited for."""
    assert _refusing_app_run(300, [b"x" * 100] * 3) == [("received", 100)] * 3 + [
        ("sent", "http.response.start"), ("sent", "http.response.body")]
    assert _refusing_app_run(None, [b"x" * 100] * 2) == [("received", 100)] * 2 + [
        ("sent", "http.response.start"), ("sent", "http.response.body")]
    assert _refusing_app_run(5000, [b"x" * 100] * 50) == [("sent", "http.response.start"), ("sent", "http.response.body")]
    # an answer that is not an error leaves the body to the app
    assert _refusing_app_run(300, [b"x" * 100] * 3, status=200) == [("sent", "http.response.start"),
                                                                     ("sent", "http.response.body")]
