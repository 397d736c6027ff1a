"""A loopback TCP proxy that injects network faults, switchable at runtime.

Put it between the bridge and the broker (or the API) and change its :class:`Mode` while the
bridge runs. Kernel tools (``tc netem``, ``iptables``) are not available on the development and
CI machines, so this is how the fault tests and ``metriqo-bridge soak`` break the network::

    async with FaultProxy("127.0.0.1", broker.port) as proxy:
        ...  # point the bridge at 127.0.0.1:proxy.port
        await proxy.set_mode(BLACKHOLE)
        await proxy.set_mode(HOLD_UP)
        await proxy.set_mode(reset_after(4096))
        await proxy.set_mode(PASS)

Modes (each also applies to connections that are already open):

- ``pass``: forward both ways.
- ``refuse``: stop listening and close every open connection; connects are refused.
- ``blackhole``: accept connections but read nothing and forward nothing; open connections
  stall. A chunk that was being read when the mode changed is held, not dropped: like a
  partition that heals, held data flows (late) once the mode changes back.
- ``hold_up``: forward target → client only; what the client sends is not read (held, and
  forwarded late if the mode changes back while the connection is open). With the bridge as
  the client, its PUBACKs leave the bridge but never reach the broker: ``kill -9`` the bridge,
  then ``refuse`` (which closes the connection, dropping what was held), and the broker never
  learns of them.
- ``latency:S``: delay each chunk by S seconds in each direction (chunks of one direction
  are delayed one after another, so this also limits throughput).
- ``reset_after:N``: forward N more bytes (both directions together) of each connection, then
  reset both sides with RST (``SO_LINGER`` 0).
- ``throttle:B``: forward at most about B bytes per second per direction and connection.

Raw non-blocking sockets are used instead of streams so that "never read" really means the
kernel buffers fill up and the peer's TCP window closes, and so a reset can be a real RST.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal, Self, get_args

ModeKind = Literal["pass", "refuse", "blackhole", "hold_up", "latency", "reset_after", "throttle"]
_CHUNK = 65536
_KINDS: tuple[ModeKind, ...] = get_args(ModeKind)


@dataclass(frozen=True, slots=True)
class Mode:
    """How the proxy treats traffic; ``value`` is seconds, bytes or bytes/s by ``kind``."""

    kind: ModeKind
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown proxy mode {self.kind!r}; one of {', '.join(_KINDS)}")
        if self.kind in ("latency", "throttle") and not self.value > 0:
            raise ValueError(f"{self.kind} needs a positive value")
        if self.kind == "reset_after" and (self.value < 0 or self.value != int(self.value)):
            raise ValueError("reset_after needs a whole number of bytes >= 0")

    @classmethod
    def parse(cls, text: str) -> Mode:
        """``pass``, ``refuse``, ``blackhole``, ``hold_up``, ``latency:0.2``,
        ``reset_after:4096`` or ``throttle:10000`` (for command lines and soak schedules)."""
        kind, _, value = text.strip().partition(":")
        try:
            number = float(value) if value else 0.0
        except ValueError:
            raise ValueError(f"bad proxy mode {text!r}: {value!r} is not a number") from None
        return cls(kind, number)  # type: ignore[arg-type]  # checked in __post_init__

    def __str__(self) -> str:
        has_value = self.kind in ("latency", "reset_after", "throttle")
        return f"{self.kind}:{self.value:g}" if has_value else self.kind


PASS = Mode("pass")
REFUSE = Mode("refuse")
BLACKHOLE = Mode("blackhole")
HOLD_UP = Mode("hold_up")


def latency(seconds: float) -> Mode:
    """Delay each chunk by ``seconds`` in each direction."""
    return Mode("latency", seconds)


def reset_after(n_bytes: int) -> Mode:
    """Forward ``n_bytes`` more of each connection, then reset it."""
    return Mode("reset_after", n_bytes)


def throttle(bytes_per_s: float) -> Mode:
    """Forward about ``bytes_per_s`` per direction and connection."""
    return Mode("throttle", bytes_per_s)


@dataclass(slots=True)
class ProxyStats:
    """Counters for assertions (cumulative since start)."""

    connections: int = 0  # accepted
    active: int = 0  # open now
    bytes_up: int = 0  # client → target, forwarded
    bytes_down: int = 0  # target → client, forwarded
    resets: int = 0  # connections reset by ``reset_after``
    upstream_failures: int = 0  # target refused or unreachable


class _Reset(Exception):
    """A pump spent the connection's byte budget; the connection is to be reset."""


@dataclass(eq=False, slots=True)
class _Conn:
    client: socket.socket
    upstream: socket.socket | None = None
    budget: int | None = None  # bytes left before a reset, under ``reset_after``
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class FaultProxy:
    """TCP proxy from ``listen_host:port`` to ``target_host:target_port`` with a runtime mode.

    An async context manager; :attr:`port` is known once entered (``listen_port=0`` picks a
    free one, kept across ``refuse``). :attr:`stats` counts connections and bytes.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_port: int = 0,
        listen_host: str = "127.0.0.1",
    ) -> None:
        self._target = (target_host, target_port)
        self._listen = (listen_host, listen_port)
        self._mode = PASS
        self._flowing = asyncio.Event()  # set unless blackholed
        self._flowing.set()
        self._up_flowing = asyncio.Event()  # client → target: set unless held
        self._up_flowing.set()
        self._switching = asyncio.Lock()
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._conns: set[_Conn] = set()
        self._port: int | None = None
        self.stats = ProxyStats()

    @property
    def port(self) -> int:
        """The listening port (fixed at the first start, kept across ``refuse``)."""
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def mode(self) -> Mode:
        """The current mode."""
        return self._mode

    async def __aenter__(self) -> Self:
        self._start_listening()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening and close every connection."""
        await self._stop_listening()
        await self._drop_connections()

    async def set_mode(self, mode: Mode) -> None:
        """Switch mode; takes effect for open connections at their next chunk."""
        async with self._switching:
            await self._switch(mode)

    async def _switch(self, mode: Mode) -> None:
        previous, self._mode = self._mode, mode
        budget = int(mode.value) if mode.kind == "reset_after" else None
        for conn in self._conns:
            conn.budget = budget
        if mode.kind == "refuse":
            await self._stop_listening()
            await self._drop_connections()
            self._flowing.set()  # only now: held connections must not wake up and forward
            return
        if previous.kind == "refuse":
            self._start_listening()
        if mode.kind == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode.kind == "hold_up":
            self._up_flowing.clear()
        else:
            self._up_flowing.set()

    # -- listening ------------------------------------------------------------------------

    def _start_listening(self) -> None:
        if self._listener is not None:
            return
        host, port = self._listen
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        try:
            sock.bind((host, self._port or port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self._port = int(sock.getsockname()[1])
        # Tracked and cancelled explicitly: ``refuse`` stops this loop but not the proxy.
        self._accept_task = asyncio.create_task(self._accept_loop(sock), name="faultproxy.accept")

    async def _stop_listening(self) -> None:
        task, self._accept_task = self._accept_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # the loop's reader is removed before the fd is closed
        sock, self._listener = self._listener, None
        if sock is not None:
            sock.close()

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            accepting = asyncio.ensure_future(loop.sock_accept(listener))
            try:
                client, _ = await asyncio.shield(accepting)
            except asyncio.CancelledError:
                # Cancelled (stop listening) just as a connection was accepted: the socket is
                # in the finished future and would leak unclosed.
                if accepting.done() and not accepting.cancelled() and not accepting.exception():
                    accepting.result()[0].close()
                else:
                    accepting.cancel()
                raise
            except OSError:  # out of descriptors, or aborted before accept: try again soon
                await asyncio.sleep(0.05)
                continue
            client.setblocking(False)
            conn = _Conn(client)
            if self._mode.kind == "reset_after":
                conn.budget = int(self._mode.value)
            self._conns.add(conn)
            self.stats.connections += 1
            self.stats.active += 1
            conn.task = asyncio.create_task(self._serve(conn), name="faultproxy.connection")

    async def _drop_connections(self) -> None:
        tasks = [c.task for c in self._conns if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for conn in list(self._conns):  # a task cancelled before its first step ran no finally
            self._forget(conn)

    def _forget(self, conn: _Conn) -> None:
        conn.client.close()
        if conn.upstream is not None:
            conn.upstream.close()
        if conn in self._conns:
            self._conns.discard(conn)
            self.stats.active -= 1

    # -- one connection ---------------------------------------------------------------------

    async def _serve(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._flowing.wait()  # a blackholed connection is accepted, never read
            host, port = self._target
            conn.upstream = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            conn.upstream.setblocking(False)
            try:
                await loop.sock_connect(conn.upstream, (host, port))
            except OSError:
                self.stats.upstream_failures += 1
                return
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(conn, conn.client, conn.upstream, up=True))
                tg.create_task(self._pump(conn, conn.upstream, conn.client, up=False))
        except* _Reset:
            self.stats.resets += 1
            for sock in (conn.client, conn.upstream):
                if sock is not None:  # close() below then sends RST instead of FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except* OSError:
            pass  # a peer reset or vanished: close the other side too
        finally:
            self._forget(conn)

    async def _wait_flowing(self, up: bool) -> None:
        """Until this direction may move data (both events can change while waiting)."""
        while not (self._flowing.is_set() and (self._up_flowing.is_set() or not up)):
            await self._flowing.wait()
            if up:
                await self._up_flowing.wait()

    async def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket, *, up: bool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_flowing(up)
            mode = self._mode
            size = _CHUNK if mode.kind != "throttle" else max(1, min(_CHUNK, int(mode.value / 20)))
            data = await loop.sock_recv(src, size)
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)  # pass the half-close on
                return
            if self._mode.kind == "latency":
                await asyncio.sleep(self._mode.value)
            await self._wait_flowing(up)  # blackholed or held meanwhile: hold the chunk
            mode = self._mode
            reset = conn.budget is not None and len(data) >= conn.budget
            if conn.budget is not None:
                data = data[: conn.budget]
                conn.budget -= len(data)
            if data:
                await loop.sock_sendall(dst, data)
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
            if reset:
                raise _Reset
            if mode.kind == "throttle":
                await asyncio.sleep(len(data) / mode.value)
