"""Put the simulated network between a client and a real Mosquitto.

``proxy_to(net, "broker", 1883, mosquitto_port)`` makes ``memory://broker:1883`` links forward
every byte to Mosquitto over TCP, so a test injects delay, partitions and killed links while the
peer stays a real broker.
"""

from __future__ import annotations

import asyncio
import contextlib

from mqttv5.protocol.errors import MqttError
from mqttv5.transport.memory import MemoryListener, MemoryStream, SimNetwork
from mqttv5.transport.tcp import open_tcp


async def _pipe(read: object, write: object) -> None:
    while True:
        data = await read()  # type: ignore[operator]
        if not data:
            return
        write(data)  # type: ignore[operator]


def proxy_to(net: SimNetwork, host: str, port: int, target_port: int) -> MemoryListener:
    async def handle(stream: MemoryStream) -> None:
        try:
            upstream = await open_tcp("127.0.0.1", target_port, connect_timeout=5)
        except MqttError:
            return
        up = asyncio.ensure_future(_pipe(stream.read, upstream.write))
        down = asyncio.ensure_future(_pipe(upstream.read, stream.write))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, MqttError):
                    await task
            upstream.abort()

    return net.listen(host, port, handle)
