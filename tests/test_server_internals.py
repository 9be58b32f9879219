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
