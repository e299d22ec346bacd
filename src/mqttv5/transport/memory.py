"""The simulated network: in-process streams with a seeded scheduler.

:class:`SimNetwork` connects :class:`MemoryStream` pairs through two one-way pipes. A seeded
``random.Random`` decides each chunk's delay and whether a write kills its link, so a test run
with the same seed makes the same choices. Hosts can be partitioned (bytes stay queued and new
connections fail until :meth:`SimNetwork.heal`), and links killed on demand.

A server side plugs in with :meth:`SimNetwork.listen` (``handler(stream)`` runs in a task per
accepted connection, like ``asyncio.start_server``); a client opens a link with
:meth:`SimNetwork.connect` or, after :meth:`SimNetwork.register`, through a ``memory://host:port``
URL.

Example::

    net = SimNetwork(seed=7, delay=(0.001, 0.005))
    net.listen("broker", 1883, handle_connection)
    stream = await net.connect("broker", 1883, local="client-a")
    net.partition("client-a", "broker")   # traffic stalls
    net.heal("client-a", "broker")        # and flows again, in order
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

from ..protocol.errors import ConnectionClosed
from .base import PeerInfo, Stream, TransportError
from .url import Endpoint, register_scheme

__all__ = ["Link", "MemoryListener", "MemoryStream", "SimNetwork"]

_EOF: Final = b""

Handler = Callable[["MemoryStream"], Awaitable[None]]


class _Pipe:
    """One direction of a link: ordered, delayed delivery into the far end's stream."""

    def __init__(self, net: SimNetwork, src: str, dst: str, target: MemoryStream) -> None:
        self.net = net
        self.src = src
        self.dst = dst
        self.target = target
        self.pending: deque[tuple[float, bytes]] = deque()
        self.queued_bytes = 0
        self.last_due = 0.0
        self.handle: asyncio.TimerHandle | None = None
        self.dead = False

    def send(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        due = max(self.last_due, loop.time() + self.net._draw_delay())
        self.last_due = due
        self.pending.append((due, data))
        self.queued_bytes += len(data)
        self.schedule()

    def schedule(self) -> None:
        if self.handle is not None or not self.pending or self.dead:
            return
        if self.net.is_partitioned(self.src, self.dst):
            return
        loop = asyncio.get_running_loop()
        self.handle = loop.call_at(self.pending[0][0], self._deliver)

    def _deliver(self) -> None:
        self.handle = None
        if self.dead or self.net.is_partitioned(self.src, self.dst):
            return
        now = asyncio.get_running_loop().time()
        pending = self.pending
        while pending and pending[0][0] <= now:
            _, data = pending.popleft()
            self.queued_bytes -= len(data)
            self.target._feed(data)
        self.schedule()

    def kill(self) -> None:
        self.dead = True
        self.pending.clear()
        self.queued_bytes = 0
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class MemoryStream:
    """One end of a simulated link, a :class:`~mqttv5.transport.base.Stream`."""

    def __init__(self, local: str, peer: PeerInfo) -> None:
        self.local = local
        self.peer = peer
        self._chunks: list[bytes] = []
        self._eof = False
        self._error: str | None = None
        self._closed = False
        self._reader: asyncio.Future[None] | None = None
        self._out: _Pipe | None = None
        self.link: Link | None = None

    # -- receiving side (called by the pipe) ------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if data is _EOF or not data:
            self._eof = True
        else:
            self._chunks.append(data)
        self._wake()

    def _fail(self, reason: str) -> None:
        if self._error is None:
            self._error = reason
        self._wake()

    def _wake(self) -> None:
        fut = self._reader
        if fut is not None:
            self._reader = None
            if not fut.done():
                fut.set_result(None)

    # -- Stream interface ------------------------------------------------------------------

    async def read(self) -> bytes:
        """Everything delivered since the last call; ``b""`` after the peer closed."""
        while not self._chunks:
            if self._error is not None:
                raise ConnectionClosed(reason_string=self._error)
            if self._eof or self._closed:
                return b""
            fut = asyncio.get_running_loop().create_future()
            self._reader = fut
            await fut
        chunks = self._chunks
        self._chunks = []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def write(self, data: bytes) -> None:
        """Send bytes through the link (delivered after the simulated delay)."""
        if self._closed or self._error is not None or self._out is None:
            raise ConnectionClosed(reason_string=self._error or "stream closed")
        if not data:
            return
        self._out.send(bytes(data))
        net = self._out.net
        if net.kill_rate and net.rng.random() < net.kill_rate and self.link is not None:
            self.link.kill("link dropped by the simulated network")

    def writelines(self, data: list[bytes]) -> None:
        """Send several byte strings as one chunk."""
        self.write(b"".join(data))

    def write_buffer_size(self) -> int:
        """Bytes written and not yet delivered to the peer."""
        return self._out.queued_bytes if self._out is not None else 0

    async def drain(self) -> None:
        """Returns at once (the simulated network has unbounded buffers) unless closed."""
        if self._error is not None:
            raise ConnectionClosed(reason_string=self._error)

    async def close(self) -> None:
        """Graceful close: the peer reads ``b""`` after everything written so far."""
        if self._closed:
            return
        self._closed = True
        if self._out is not None and not self._out.dead and self._error is None:
            self._out.send(_EOF)
        self._wake()
        if self.link is not None:
            self.link._end_closed()

    def abort(self) -> None:
        """Close at once: the peer sees a reset."""
        if self._closed and self._error is not None:
            return
        self._closed = True
        self._wake()
        if self.link is not None:
            self.link.kill("connection reset by peer")


class Link:
    """A connection between two simulated hosts: ``client`` and ``server`` ends."""

    def __init__(self, net: SimNetwork, client: MemoryStream, server: MemoryStream) -> None:
        self.net = net
        self.client = client
        self.server = server
        self.pipes = (
            _Pipe(net, client.local, server.local, server),
            _Pipe(net, server.local, client.local, client),
        )
        client._out, server._out = self.pipes
        client.link = server.link = self
        self.dead = False
        self._closed_ends = 0

    @property
    def hosts(self) -> tuple[str, str]:
        """``(client host, server host)``."""
        return self.client.local, self.server.local

    def kill(self, reason: str = "link killed by the simulated network") -> None:
        """Break the link: both ends' reads raise :class:`ConnectionClosed`."""
        if self.dead:
            return
        self.dead = True
        for pipe in self.pipes:
            pipe.kill()
        self.client._fail(reason)
        self.server._fail(reason)
        self.net._forget(self)

    def _end_closed(self) -> None:
        self._closed_ends += 1
        if self._closed_ends >= 2:
            self.net._forget(self)

    def _resume(self) -> None:
        for pipe in self.pipes:
            pipe.schedule()


class MemoryListener:
    """A simulated server socket; see :meth:`SimNetwork.listen`."""

    def __init__(self, net: SimNetwork, host: str, port: int, handler: Handler) -> None:
        self.net = net
        self.host = host
        self.port = port
        self.handler = handler
        self.tasks: set[asyncio.Task[None]] = set()

    def _accept(self, stream: MemoryStream) -> None:
        task = asyncio.get_running_loop().create_task(self._run(stream))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, stream: MemoryStream) -> None:
        try:
            await self.handler(stream)
        finally:
            stream.abort()

    async def close(self) -> None:
        """Stop accepting and cancel the running handlers."""
        self.net._listeners.pop((self.host, self.port), None)
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            try:
                await task
            except asyncio.CancelledError:
                pass


class SimNetwork:
    """A deterministic in-process network.

    Args:
        seed: seeds the scheduler's ``random.Random``.
        delay: ``(low, high)`` seconds; each chunk's one-way delay is drawn uniformly from it
            (order within one direction is kept).
        kill_rate: probability that a write kills its link (both ends then read a
            :class:`ConnectionClosed`).
    """

    def __init__(
        self, seed: int = 0, *, delay: tuple[float, float] = (0.0, 0.0), kill_rate: float = 0.0
    ) -> None:
        self.rng = random.Random(seed)
        self.delay = delay
        self.kill_rate = kill_rate
        self._listeners: dict[tuple[str, int], MemoryListener] = {}
        self._links: list[Link] = []
        self._cut: set[frozenset[str]] = set()
        self._next_port = 49152
        self.connections_made = 0

    # -- configuration ---------------------------------------------------------------------

    def _draw_delay(self) -> float:
        low, high = self.delay
        return low if high <= low else self.rng.uniform(low, high)

    def set_delay(self, low: float, high: float | None = None) -> None:
        """Change the one-way delay range for chunks written from now on."""
        self.delay = (low, low if high is None else high)

    def set_kill_rate(self, rate: float) -> None:
        """Change the per-write probability of killing a link."""
        self.kill_rate = rate

    # -- topology --------------------------------------------------------------------------

    def listen(self, host: str, port: int, handler: Handler) -> MemoryListener:
        """Accept connections to ``host:port``; ``handler(stream)`` runs in a task for each."""
        listener = MemoryListener(self, host, port, handler)
        self._listeners[(host, port)] = listener
        return listener

    async def connect(
        self, host: str, port: int, *, local: str = "client", connect_timeout: float | None = None
    ) -> MemoryStream:
        """Open a link from host ``local`` to the listener at ``host:port``.

        Raises:
            TransportError: nobody listens there, or the hosts are partitioned.
        """
        address = f"{host}:{port}"
        await asyncio.sleep(self._draw_delay())
        if self.is_partitioned(local, host):
            raise TransportError(address, "host unreachable (network partitioned)")
        listener = self._listeners.get((host, port))
        if listener is None:
            raise TransportError(address, "connection refused")
        self._next_port += 1
        client = MemoryStream(local, PeerInfo(host, port, None, "memory"))
        server = MemoryStream(host, PeerInfo(local, self._next_port, None, "memory"))
        link = Link(self, client, server)
        self._links.append(link)
        self.connections_made += 1
        listener._accept(server)
        return client

    def register(self, scheme: str = "memory", default_local: str = "client") -> None:
        """Make ``scheme://host:port`` URLs open links on this network (``?local=NAME`` sets
        the client's host name)."""

        async def opener(endpoint: Endpoint, connect_timeout: float | None) -> Stream:
            local = endpoint.query.get("local", default_local)
            return await self.connect(
                endpoint.host, endpoint.port, local=local, connect_timeout=connect_timeout
            )

        register_scheme(scheme, opener, 1883)

    @property
    def links(self) -> list[Link]:
        """The links currently open."""
        return list(self._links)

    def _forget(self, link: Link) -> None:
        if link in self._links:
            self._links.remove(link)

    # -- faults ----------------------------------------------------------------------------

    def is_partitioned(self, a: str, b: str) -> bool:
        """True when traffic between hosts ``a`` and ``b`` is cut."""
        return bool(self._cut) and frozenset((a, b)) in self._cut

    def partition(self, a: str, b: str, *, kill: bool = False) -> None:
        """Cut hosts ``a`` and ``b`` apart: bytes between them stay queued (or, with ``kill``,
        their links die) and new connections between them fail until :meth:`heal`."""
        self._cut.add(frozenset((a, b)))
        if kill:
            for link in self.links:
                if set(link.hosts) == {a, b}:
                    link.kill("link lost in a network partition")

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """End the partition between ``a`` and ``b`` (all partitions when no host is given);
        queued bytes are delivered in order."""
        if a is None or b is None:
            self._cut.clear()
        else:
            self._cut.discard(frozenset((a, b)))
        for link in self.links:
            link._resume()

    def kill(self, host: str | None = None) -> int:
        """Kill every link (or every link touching ``host``); returns how many died."""
        victims = [lk for lk in self.links if host is None or host in lk.hosts]
        for link in victims:
            link.kill()
        return len(victims)

    def kill_random(self) -> Link | None:
        """Kill one link chosen by the seeded generator; returns it (None if there is none)."""
        if not self._links:
            return None
        link = self.rng.choice(self._links)
        link.kill()
        return link
