"""Broker lifecycle: graceful shutdown, takeover of a stalled connection, subscription events."""

from __future__ import annotations

import asyncio

import pytest

from mqttv5.broker.message import BrokerMessage
from mqttv5.protocol.packets import Connect, Disconnect, Publish, Subscribe, Subscription
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient


def test_shutdown_sends_server_shutting_down() -> None:
    async def main() -> None:
        async with started_broker() as b:
            c5 = await RawClient.connect(b.ports[0], "five")
            c4 = await RawClient.connect(b.ports[0], "four", version=4)
            loop = asyncio.get_running_loop()
            start = loop.time()
            await b.stop()
            assert loop.time() - start < 5.0
            packets = await c5.closed()
            assert isinstance(packets[-1], Disconnect)
            assert packets[-1].reason_code == ReasonCode.SERVER_SHUTTING_DOWN
            assert await c4.closed() == []  # 3.1.1 has no DISCONNECT from the server

    run(main())


@pytest.mark.spec("MQTT-3.1.4-3")
def test_takeover_of_a_stalled_connection_is_quick() -> None:
    async def main() -> None:
        async with started_broker(outbound_high_water=32 * 1024 * 1024) as b:
            keep = Properties(session_expiry_interval=60)
            stalled = await RawClient.open(b.ports[0], rcvbuf=4096)
            stalled.send(Connect("stuck", clean_start=True, properties=keep))
            stalled.send(Subscribe(1, [Subscription("flood/#", qos=0)]))
            await asyncio.sleep(0.1)
            pub = await RawClient.connect(b.ports[0], "pub")
            for i in range(12000):  # more than the kernel's socket buffers can hold
                pub.send(Publish("flood/x", b"f" * 1000))
                if i % 500 == 0:
                    await pub.writer.drain()
            await pub.writer.drain()
            await asyncio.sleep(0.5)
            handler = next(h for h in b.handlers if h.client_id == "stuck")
            assert handler.transport is not None
            assert handler.transport.get_write_buffer_size() > 100_000  # its buffer is full
            loop = asyncio.get_running_loop()
            start = loop.time()
            new = await RawClient.connect(b.ports[0], "stuck", clean_start=False, properties=keep)
            assert loop.time() - start < 1.0
            assert new.connack.session_present is True

    run(main())


def test_subscription_events_for_a_cluster_backend() -> None:
    events: list[tuple[str, str, bool]] = []

    async def main() -> None:
        async with started_broker() as b:
            b.router.subscription_listeners.append(
                lambda s, e, added: events.append((s.client_id, e.topic_filter, added))
            )
            c = await RawClient.connect(b.ports[0], "ev")
            await c.subscribe("a/+", "$share/g/b")
            await c.disconnect()
            await asyncio.sleep(0.1)

    run(main())
    assert events == [
        ("ev", "a/+", True),
        ("ev", "$share/g/b", True),
        ("ev", "a/+", False),
        ("ev", "$share/g/b", False),
    ]


def test_sys_topics_count_traffic() -> None:
    async def main() -> None:
        async with started_broker(sys_interval=0.2) as b:
            pub = await RawClient.connect(b.ports[0], "p")
            for i in range(5):
                await pub.publish("x", b"y", qos=1, packet_id=i + 1)
            await asyncio.sleep(0.3)
            c = await RawClient.connect(b.ports[0], "sys")
            await c.subscribe("$SYS/broker/messages/received", "$SYS/broker/clients/connected")
            got = {p.topic: p.payload for p in [await c.expect(Publish), await c.expect(Publish)]}
            assert int(got["$SYS/broker/messages/received"]) >= 5
            assert int(got["$SYS/broker/clients/connected"]) >= 1
            assert isinstance(b.router.retained.get("$SYS/broker/uptime"), BrokerMessage)

    run(main())
