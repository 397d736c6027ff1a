"""Closing an aiohttp server without leaving a half-accepted connection behind.

Accepting a connection takes asyncio two passes of the event loop: the accept callback, then
the first step of a task that builds the transport. Python 3.11's ``Server.close()`` can fall
between the two (CPython gh-109564, not fixed in 3.11); the task then fails inside the
transport's constructor, the error is swallowed, and the half-built transport, which owns the
socket, is closed by nobody until the garbage collector finds it (a ResourceWarning). A client
that connected just before a server stops (a scraper, a bridge stopped mid-request) is enough.

The kernel hands waiting connections out in the order they were made, so once a request of our
own has been answered every connection queued before it has been taken in and set up: closing
then cannot fall into that gap for them. A client still connecting at that very moment can.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104


async def take_in_waiting(host: str, port: int, *, tls: bool = False) -> None:
    """Returns once every connection waiting on ``host:port`` when called has been accepted
    and set up, by sending a request of our own and reading its answer (any answer)."""
    client_tls = None
    if tls:
        # Our own server, asked only to answer: its certificate is not what is checked here.
        client_tls = ssl.create_default_context()
        client_tls.check_hostname = False
        client_tls.verify_mode = ssl.CERT_NONE
    target = _WILDCARDS.get(host, host)
    reader, writer = await asyncio.open_connection(target, port, ssl=client_tls)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: settle\r\nConnection: close\r\n\r\n")
        await reader.read()
    finally:
        writer.close()


async def before_close(host: str, port: int, *, tls: bool = False, within_s: float = 5.0) -> None:
    """:func:`take_in_waiting`, at most ``within_s`` and never failing: a server that cannot
    answer any more is closed all the same."""
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(within_s):
            await take_in_waiting(host, port, tls=tls)
