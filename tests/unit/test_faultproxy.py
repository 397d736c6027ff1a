"""The fault proxy against a tiny echo server on loopback (no broker, no bridge)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from bridge.lab.faultproxy import (
    BLACKHOLE,
    HOLD_UP,
    PASS,
    REFUSE,
    FaultProxy,
    Mode,
    latency,
    reset_after,
    throttle,
)

SHORT = 0.3  # "nothing arrives" windows: long enough to notice, short enough for unit tests


@dataclass
class EchoServer:
    """Echoes everything; records what it received and whether a peer reset it."""

    port: int = 0
    received: bytearray = field(default_factory=bytearray)
    resets: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
        except ConnectionResetError:
            self.resets += 1
        finally:
            writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    """An echo server on a free loopback port."""
    state = EchoServer()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    """A proxy in front of the echo server."""
    async with FaultProxy("127.0.0.1", echo.port) as p:
        yield p


async def _connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(5):
        return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, timeout: float = 5
) -> bytes:
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(timeout):
        return await reader.readexactly(len(data))


async def _read_until_eof(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(5):
        while await reader.read(100):
            pass


async def test_pass_forwards_both_ways_and_counts(proxy: FaultProxy) -> None:
    """In pass mode data is echoed through the proxy and counted per direction."""
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"hello" * 1000) == b"hello" * 1000
    writer.close()
    assert proxy.stats.connections == 1
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == 5000


async def test_refuse_closes_open_connections_and_refuses_new(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    """Refuse closes what is open and stops listening; pass listens again on the same port."""
    port = proxy.port
    reader, writer = await _connect(proxy)
    await _roundtrip(reader, writer, b"x")
    await proxy.set_mode(REFUSE)
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed by the proxy
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await _connect(proxy)
    await proxy.set_mode(PASS)
    assert proxy.port == port
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"again") == b"again"
    writer.close()
    assert proxy.stats.active <= 1


async def test_blackhole_accepts_but_never_forwards(proxy: FaultProxy, echo: EchoServer) -> None:
    """Blackhole: connects succeed, nothing is forwarded, open links stall; after pass the held
    data flows, as when a partition heals."""
    old_reader, old_writer = await _connect(proxy)
    await _roundtrip(old_reader, old_writer, b"before")
    await proxy.set_mode(BLACKHOLE)
    reader, writer = await _connect(proxy)  # accepted by the proxy
    writer.write(b"new")
    old_writer.write(b"old")
    await asyncio.gather(writer.drain(), old_writer.drain())
    for r in (reader, old_reader):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(SHORT):
                await r.read(1)
    assert bytes(echo.received) == b"before"
    await proxy.set_mode(PASS)
    async with asyncio.timeout(5):
        assert await old_reader.readexactly(3) == b"old"
        assert await reader.readexactly(3) == b"new"
    writer.close()
    old_writer.close()


@dataclass
class Talker:
    """A target that speaks when told to and records what it received, and when it ended."""

    port: int = 0
    received: bytearray = field(default_factory=bytearray)
    writer: asyncio.StreamWriter | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        try:
            while data := await reader.read(65536):
                self.received += data
        except ConnectionResetError:
            pass
        finally:
            self.ended.set()
            writer.close()


@pytest.mark.parametrize("then", ["pass", "refuse"])
async def test_hold_up_forwards_only_towards_the_client(then: str) -> None:
    """hold_up: the target still reaches the client, what the client sends is held; pass lets
    the held bytes through late, refuse closes the connection and they never arrive."""
    talker = Talker()
    server = await asyncio.start_server(talker.handle, "127.0.0.1", 0)
    talker.port = server.sockets[0].getsockname()[1]
    async with server, FaultProxy("127.0.0.1", talker.port) as proxy:
        reader, writer = await _connect(proxy)
        writer.write(b"before")
        await writer.drain()
        async with asyncio.timeout(5):
            while talker.received != b"before":
                await asyncio.sleep(0.01)
        await proxy.set_mode(HOLD_UP)
        writer.write(b"held")
        await writer.drain()
        assert talker.writer is not None
        talker.writer.write(b"down")
        async with asyncio.timeout(5):
            assert await reader.readexactly(4) == b"down"
        await asyncio.sleep(SHORT)
        assert talker.received == b"before"
        await proxy.set_mode(Mode.parse(then))
        async with asyncio.timeout(5):
            if then == "pass":
                while talker.received != b"beforeheld":
                    await asyncio.sleep(0.01)
            else:
                await talker.ended.wait()
                assert talker.received == b"before"
        writer.close()


async def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    """Latency makes a round trip take at least the delay in each direction."""
    reader, writer = await _connect(proxy)
    started = time.monotonic()
    await _roundtrip(reader, writer, b"ping")
    fast = time.monotonic() - started
    await proxy.set_mode(latency(0.2))
    started = time.monotonic()
    await _roundtrip(reader, writer, b"ping")
    slow = time.monotonic() - started
    writer.close()
    assert slow >= 0.39  # 2 x 0.2 s, less a little timer granularity
    assert slow > fast


async def test_reset_after_forwards_n_bytes_then_resets(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    """reset_after(n) on an open connection forwards n more bytes, then both sides get RST."""
    reader, writer = await _connect(proxy)
    await _roundtrip(reader, writer, b"hello")
    await proxy.set_mode(reset_after(3))
    writer.write(b"abcdefgh")
    await writer.drain()
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(5):
            await reader.read(100)
    async with asyncio.timeout(5):
        while echo.resets == 0:
            await asyncio.sleep(0.01)
    assert bytes(echo.received) == b"helloabc"
    assert proxy.stats.resets == 1
    writer.close()


async def test_reset_after_applies_to_new_connections(proxy: FaultProxy) -> None:
    """Each new connection gets its own byte budget under reset_after."""
    await proxy.set_mode(reset_after(4))
    for _ in range(2):
        reader, writer = await _connect(proxy)
        writer.write(b"0123456789")
        with pytest.raises(ConnectionResetError):
            await _read_until_eof(reader)
        writer.close()
    assert proxy.stats.resets == 2


async def test_throttle_slows_a_transfer(proxy: FaultProxy) -> None:
    """Throttle at 20 kB/s makes a 10 kB echo take at least about half a second."""
    reader, writer = await _connect(proxy)
    await proxy.set_mode(throttle(20_000))
    started = time.monotonic()
    await _roundtrip(reader, writer, b"t" * 10_000, timeout=10)
    writer.close()
    assert time.monotonic() - started >= 0.4


async def test_switching_modes_on_one_connection(proxy: FaultProxy) -> None:
    """One connection survives pass → latency → blackhole → throttle → pass, in order."""
    reader, writer = await _connect(proxy)
    got = [await _roundtrip(reader, writer, b"1")]
    await proxy.set_mode(latency(0.05))
    got.append(await _roundtrip(reader, writer, b"2"))
    await proxy.set_mode(BLACKHOLE)
    writer.write(b"3")
    await writer.drain()
    await asyncio.sleep(SHORT)
    await proxy.set_mode(throttle(1000))
    got.append(await reader.readexactly(1))
    got.append(await _roundtrip(reader, writer, b"4"))
    await proxy.set_mode(PASS)
    got.append(await _roundtrip(reader, writer, b"5"))
    writer.close()
    assert got == [b"1", b"2", b"3", b"4", b"5"]
    assert proxy.mode == PASS


async def test_unreachable_target_closes_the_client(echo: EchoServer) -> None:
    """When the target refuses, the client's connection is closed and the failure counted."""
    async with FaultProxy("127.0.0.1", 1) as proxy:
        reader, writer = await _connect(proxy)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        assert proxy.stats.upstream_failures == 1


async def test_close_ends_every_connection(echo: EchoServer) -> None:
    """Leaving the context closes open (also blackholed) connections."""
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await _connect(proxy)
        await proxy.set_mode(BLACKHOLE)
        _, writer2 = await _connect(proxy)
        async with asyncio.timeout(5):
            while proxy.stats.connections < 2:
                await asyncio.sleep(0.01)
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    assert proxy.stats.active == 0
    writer.close()
    writer2.close()


def test_mode_parse_and_str() -> None:
    """Modes parse from and print as ``kind[:value]``."""
    assert Mode.parse("pass") == PASS
    assert Mode.parse("latency:0.25") == latency(0.25)
    assert Mode.parse("reset_after:4096") == reset_after(4096)
    assert str(throttle(1000)) == "throttle:1000"
    assert str(BLACKHOLE) == "blackhole"
    assert Mode.parse("hold_up") == HOLD_UP


@pytest.mark.parametrize("text", ["latency", "latency:-1", "reset_after:1.5", "jam", "throttle:x"])
def test_mode_rejects_bad_values(text: str) -> None:
    """A mode without its value, with a bad value or an unknown name is refused."""
    with pytest.raises(ValueError, match=r"mode|value|bytes|number"):
        Mode.parse(text)
