"""A raw MQTT test client: our packet codec over a real TCP socket, with no state machine, so a
test can send anything (including what a well-behaved client never would)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any, TypeVar

from mqttv5.protocol.packets import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketDecoder,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Suback,
    Subscribe,
    Subscription,
    Will,
)
from mqttv5.protocol.properties import Properties

FACTOR = float(os.environ.get("MQTTV5_TEST_TIMEOUT_FACTOR", "1"))
T = TypeVar("T")


def timeout(seconds: float) -> float:
    """A test timeout scaled by MQTTV5_TEST_TIMEOUT_FACTOR."""
    return seconds * FACTOR


class Closed(Exception):
    """The broker closed the connection."""


OPEN: list[RawClient] = []


def close_all() -> None:
    """Abort every RawClient still open (called by the test runner before the loop ends)."""
    while OPEN:
        writer = OPEN.pop().writer
        writer.transport.abort()
        writer.close()


class RawClient:
    """One TCP connection speaking packets."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: int):
        self.reader = reader
        self.writer = writer
        self.version = version
        self.decoder = PacketDecoder(version)
        self.inbox: list[Packet] = []
        self.eof = False
        OPEN.append(self)

    @classmethod
    async def open(
        cls, port: int, host: str = "127.0.0.1", version: int = 5, rcvbuf: int | None = None
    ) -> RawClient:
        if rcvbuf is None:
            reader, writer = await asyncio.open_connection(host, port)
            return cls(reader, writer, version)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # a slow reader, for tests
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer, version)

    @classmethod
    async def connect(
        cls,
        port: int,
        client_id: str = "",
        *,
        version: int = 5,
        clean_start: bool = True,
        keep_alive: int = 60,
        properties: Properties | None = None,
        will: Will | None = None,
        username: str | None = None,
        password: bytes | None = None,
        expect_code: int = 0,
    ) -> RawClient:
        """Open a connection and complete CONNECT/CONNACK (asserting the reason code)."""
        client = await cls.open(port, version=version)
        client.send(
            Connect(
                client_id,
                protocol_level=version,
                clean_start=clean_start,
                keep_alive=keep_alive,
                properties=properties or Properties(),
                will=will,
                username=username,
                password=password,
            )
        )
        connack = await client.expect(Connack)
        client.connack = connack
        assert connack.reason_code == expect_code, connack
        return client

    connack: Connack

    def send(self, packet: Packet) -> None:
        self.writer.write(packet.encode(self.version))

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, wait: float = 2.0) -> Packet:
        """The next packet; raises Closed at EOF and TimeoutError after ``wait`` seconds."""
        if self.inbox:
            return self.inbox.pop(0)
        async with asyncio.timeout(timeout(wait)):
            while not self.inbox:
                data = await self.reader.read(65536)
                if not data:
                    self.eof = True
                    raise Closed()
                self.inbox.extend(self.decoder.feed(data))
        return self.inbox.pop(0)

    async def expect(self, kind: type[T], wait: float = 2.0) -> T:
        packet = await self.recv(wait)
        assert isinstance(packet, kind), f"expected {kind.__name__}, got {packet!r}"
        return packet

    async def nothing(self, wait: float = 0.3) -> None:
        """Assert no packet arrives within ``wait`` seconds."""
        with contextlib.suppress(TimeoutError):
            packet = await self.recv(wait)
            raise AssertionError(f"unexpected {packet!r}")

    async def closed(self, wait: float = 3.0) -> list[Packet]:
        """Wait for the broker to close; return the packets that came before."""
        got: list[Packet] = []
        with contextlib.suppress(Closed):
            while True:
                got.append(await self.recv(wait))
        return got

    async def subscribe(
        self, *filters: str, qos: int = 0, packet_id: int = 1, **opts: Any
    ) -> Suback:
        props = opts.pop("properties", None) or Properties()
        subs = [Subscription(f, qos, **opts) for f in filters]
        self.send(Subscribe(packet_id, subs, props))
        return await self.expect(Suback)

    async def publish(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        packet_id: int | None = None,
        properties: Properties | None = None,
    ) -> Packet | None:
        """Publish and complete the QoS flow; return PUBACK / PUBCOMP (None for QoS 0)."""
        if qos and packet_id is None:
            packet_id = 1
        self.send(Publish(topic, payload, qos, retain, False, packet_id, properties))
        if qos == 1:
            return await self.expect(PubAck)
        if qos == 2:
            rec = await self.expect(PubRec)
            assert packet_id is not None
            self.send(PubRel(packet_id))
            comp = await self.expect(PubComp)
            assert rec.packet_id == comp.packet_id
            return comp
        return None

    async def disconnect(self, code: int = 0) -> None:
        from mqttv5.protocol.reason_codes import ReasonCode

        self.send(Disconnect(ReasonCode(code)))
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def abort(self) -> None:
        self.writer.transport.abort()
