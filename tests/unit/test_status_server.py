"""The bridge's own HTTP server (``/metrics``, health) as it stops."""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest
from prometheus_client import CollectorRegistry

from bridge.settings import HttpSettings
from bridge.status import STOP_GRACE_S, StatusServer


def _server() -> StatusServer:
    return StatusServer(CollectorRegistry(), list, HttpSettings(host="127.0.0.1", port=0))


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port))


async def test_stopping_right_after_a_scraper_connected_closes_its_connection() -> None:
    """A scraper connects from another thread and the bridge stops at once: Python 3.11's
    Server.close() could fall between the accept and the transport's setup, leaving a
    transport nobody closed (bridge/serving.py); the collector then warns, an error under
    this suite."""
    for _ in range(20):
        async with _server() as server:
            client = await asyncio.to_thread(_connect, server.port)
        client.close()
        gc.collect()  # a half-built transport would warn here, inside this test


async def test_a_stopped_server_answers_no_more() -> None:
    async with _server() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert b'{"status":"ok"}' in await reader.read()
        writer.close()
        port = server.port
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_stop_waits_for_a_stuck_request_only_briefly() -> None:
    """A request whose answer never comes (here ``/debug/top-devices`` waiting forever) holds
    a stop for ``STOP_GRACE_S``, not aiohttp's default minute; the scraper's connection is
    closed."""
    stuck = asyncio.Event()

    async def top(_limit: int) -> object:
        stuck.set()
        await asyncio.Event().wait()  # never answers
        return []

    server = StatusServer(
        CollectorRegistry(), list, HttpSettings(host="127.0.0.1", port=0), top_devices=top
    )
    await server.__aenter__()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /debug/top-devices HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(stuck.wait(), 30)
    # Ten times the grace, so a busy machine does not fail it; aiohttp's own is 60 s.
    await asyncio.wait_for(server.__aexit__(None, None, None), 10 * STOP_GRACE_S)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
