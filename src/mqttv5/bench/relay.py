"""A UDP relay between clients and a server that can drop datagrams and change its address.

Used by the UDP benchmark (loss rows) and the tests: ``loss`` drops that share of datagrams in
each direction (seeded, so a run repeats), and :meth:`UdpRelay.rebind` moves the relay's
server-side socket to a new port, which is what a NAT does when its mapping expires (the server
sees the same client arrive from another address).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

__all__ = ["UdpRelay"]


class _Upstream(asyncio.DatagramProtocol):
    """The relay's socket towards the server for one client."""

    def __init__(self, relay: UdpRelay, client: Any) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay._to_client(data, self.client)


class _Downstream(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay) -> None:
        self.relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relay._listen = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay._from_client(data, addr)


class UdpRelay:
    """Relay datagrams from clients on ``port`` to ``target``, dropping ``loss`` of them.

    Args:
        target: the server's ``(host, port)``.
        loss: the share of datagrams dropped in each direction (0 to 1).
        seed: seed of the drop decisions.
    """

    def __init__(self, target: tuple[str, int], loss: float = 0.0, seed: int = 1) -> None:
        self.target = target
        self.loss = loss
        self.random = random.Random(seed)
        self._listen: asyncio.DatagramTransport | None = None
        self._upstreams: dict[Any, _Upstream] = {}
        self.forwarded = 0
        self.dropped = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port``; return the bound port."""
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: _Downstream(self), local_addr=(host, port))
        assert self._listen is not None
        return int(self._listen.get_extra_info("sockname")[1])

    def close(self) -> None:
        """Close every socket."""
        for upstream in self._upstreams.values():
            if upstream.transport is not None:
                upstream.transport.close()
        self._upstreams.clear()
        if self._listen is not None:
            self._listen.close()

    async def rebind(self) -> None:
        """Give every client a new source port towards the server (a NAT rebinding)."""
        for client, old in list(self._upstreams.items()):
            await self._open_upstream(client)  # replaces the entry; no gap without one
            if old.transport is not None:
                old.transport.close()

    async def _open_upstream(self, client: Any) -> _Upstream:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_datagram_endpoint(
            lambda: _Upstream(self, client), remote_addr=self.target
        )
        self._upstreams[client] = upstream
        return upstream

    def _dropped(self) -> bool:
        if self.loss > 0 and self.random.random() < self.loss:
            self.dropped += 1
            return True
        self.forwarded += 1
        return False

    def _from_client(self, data: bytes, client: Any) -> None:
        if self._dropped():
            return
        upstream = self._upstreams.get(client)
        if upstream is None:
            task = asyncio.ensure_future(self._open_upstream(client))
            task.add_done_callback(lambda t: self._send_up(t.result(), data))
            self._upstreams[client] = _Upstream(self, client)  # placeholder until it opens
            return
        self._send_up(upstream, data)

    @staticmethod
    def _send_up(upstream: _Upstream, data: bytes) -> None:
        if upstream.transport is not None and not upstream.transport.is_closing():
            upstream.transport.sendto(data)

    def _to_client(self, data: bytes, client: Any) -> None:
        if self._dropped():
            return
        if self._listen is not None and not self._listen.is_closing():
            self._listen.sendto(data, client)
