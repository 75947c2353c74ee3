"""The router never reuses a backend connection that the backend may be closing.

vLLM's server (uvicorn) closes a connection idle for 5 s. A client that keeps
idle connections as long as that sends, now and then, a request on a
connection the server is closing at that moment: the request fails with a
``ReadError`` on a healthy endpoint, which then counts a failure. The shared
client drops idle connections after ``HTTP_KEEPALIVE_S``, before the server
does. The server here makes that race certain: a request that arrives on a
connection idle longer than its timeout is not answered, the connection closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from state.context import http_client
from state.settings import Settings

SERVER_IDLE_S = 0.3


class ClosingServer:
    """An HTTP/1.1 server that closes a connection when a request finds it idle too long."""

    def __init__(self) -> None:
        self.connections = 0
        self.refused = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        idle_since = time.monotonic()
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                if time.monotonic() - idle_since > SERVER_IDLE_S:
                    self.refused += 1  # the server had closed it: the request is lost
                    break
                body = b'{"ok": true}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
                idle_since = time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def closing_server() -> AsyncIterator[tuple[str, ClosingServer]]:
    state = ClosingServer()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", state


async def test_an_idle_connection_is_dropped_before_the_backend_closes_it(closing_server):
    url, server = closing_server
    client = http_client(Settings(_env_file=None, http_keepalive_s=SERVER_IDLE_S / 2))
    try:
        assert (await client.post(f"{url}/v1/chat/completions", json={})).status_code == 200
        await asyncio.sleep(SERVER_IDLE_S + 0.1)  # idle past both timeouts
        assert (await client.post(f"{url}/v1/chat/completions", json={})).status_code == 200
    finally:
        await client.aclose()
    assert (server.connections, server.refused) == (2, 0)


async def test_a_client_that_keeps_idle_connections_longer_loses_the_request(closing_server):
    # the same client with a keep-alive longer than the server's: the race this prevents
    url, server = closing_server
    client = http_client(Settings(_env_file=None, http_keepalive_s=SERVER_IDLE_S * 10))
    try:
        await client.post(f"{url}/v1/chat/completions", json={})
        await asyncio.sleep(SERVER_IDLE_S + 0.1)
        with pytest.raises(httpx.TransportError):
            await client.post(f"{url}/v1/chat/completions", json={})
    finally:
        await client.aclose()
    assert server.refused == 1


def test_the_default_keep_alive_is_shorter_than_vllms_idle_timeout():
    assert Settings(_env_file=None).http_keepalive_s < 5.0  # vLLM closes idle connections at 5 s
