"""Bad input gets the right reason code and closes only the offender (bystanders unharmed)."""

from __future__ import annotations

import asyncio
import random

import pytest

from mqttv5.protocol.packets import (
    Connack,
    Connect,
    Disconnect,
    PubAck,
    Publish,
    Subscribe,
    Subscription,
)
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient


async def _bystander(port: int) -> tuple[RawClient, RawClient]:
    sub = await RawClient.connect(port, "bystander-sub")
    await sub.subscribe("ok/#", qos=1)
    pub = await RawClient.connect(port, "bystander-pub")
    return sub, pub


async def _bystanders_fine(sub: RawClient, pub: RawClient, n: int) -> None:
    ack = await pub.publish("ok/1", b"still here %d" % n, qos=1, packet_id=n)
    assert isinstance(ack, PubAck)
    got = await sub.expect(Publish)
    assert got.payload == b"still here %d" % n
    sub.send(PubAck(got.packet_id))


def _offence(name: str) -> tuple[bytes, ReasonCode]:
    """Raw bytes a connected v5 client sends, and the DISCONNECT code it must get."""
    cases = {
        "malformed": (bytes.fromhex("3001ff"), ReasonCode.MALFORMED_PACKET),
        "qos3": (bytes.fromhex("360400016100"), ReasonCode.MALFORMED_PACKET),
        "wildcard_topic": (Publish("a/+", b"x").encode(), ReasonCode.TOPIC_NAME_INVALID),
        "unknown_alias": (
            Publish("", b"x", properties=Properties(topic_alias=3)).encode(),
            ReasonCode.PROTOCOL_ERROR,
        ),
        "alias_too_big": (
            Publish("t", b"x", properties=Properties(topic_alias=11)).encode(),
            ReasonCode.TOPIC_ALIAS_INVALID,
        ),
        "reserved_type": (bytes.fromhex("0000"), ReasonCode.MALFORMED_PACKET),
        "subscribe_bad_flags": (
            b"\x80" + Subscribe(1, [Subscription("a")]).encode()[1:],
            ReasonCode.MALFORMED_PACKET,
        ),
        "too_large": (b"\x30\xff\xff\x7f", ReasonCode.PACKET_TOO_LARGE),
        "varint_5_bytes": (b"\x30\xff\xff\xff\xff\x01", ReasonCode.MALFORMED_PACKET),
        "connack_from_client": (Connack().encode(), ReasonCode.PROTOCOL_ERROR),
        "qos2_above_max": (
            Publish("t", b"x", 2, packet_id=1).encode(),
            ReasonCode.QOS_NOT_SUPPORTED,
        ),
    }
    return cases[name]


OFFENCES = [
    "malformed",
    "qos3",
    "wildcard_topic",
    "unknown_alias",
    "alias_too_big",
    "reserved_type",
    "subscribe_bad_flags",
    "too_large",
    "varint_5_bytes",
    "connack_from_client",
    "qos2_above_max",
]


@pytest.mark.parametrize("offence", OFFENCES)
def test_offender_gets_reason_code_and_bystanders_unharmed(offence: str) -> None:
    async def main() -> None:
        async with started_broker(maximum_qos=1 if offence == "qos2_above_max" else 2) as b:
            sub, pub = await _bystander(b.ports[0])
            await _bystanders_fine(sub, pub, 1)
            bad = await RawClient.connect(b.ports[0], "offender")
            data, code = _offence(offence)
            bad.send_bytes(data)
            packets = await bad.closed()
            assert packets and isinstance(packets[-1], Disconnect), packets
            assert packets[-1].reason_code == code
            await _bystanders_fine(sub, pub, 2)

    run(main())


@pytest.mark.spec("MQTT-3.3.4-9")
def test_receive_maximum_exceeded() -> None:
    async def main() -> None:
        async with started_broker(receive_maximum=2) as b:
            sub, pub = await _bystander(b.ports[0])
            bad = await RawClient.connect(b.ports[0], "flood")
            # QoS 2 publishes stay unacknowledged until PUBREL: the third exceeds the limit
            for pid in (1, 2, 3):
                bad.send(Publish("x", b"y", 2, packet_id=pid))
            packets = await bad.closed()
            assert isinstance(packets[-1], Disconnect)
            assert packets[-1].reason_code == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED
            await _bystanders_fine(sub, pub, 1)

    run(main())


def test_random_garbage_never_kills_the_broker() -> None:
    async def main() -> None:
        async with started_broker(connect_timeout=0.5) as b:
            sub, pub = await _bystander(b.ports[0])
            rng = random.Random(1234)
            lingering = []
            for i in range(300):
                c = await RawClient.open(b.ports[0])
                if i % 2:
                    c.send_bytes(bytes.fromhex("101000044d5154540502003c0003") + b"abc")
                c.send_bytes(rng.randbytes(rng.randrange(1, 300)))
                if i % 3:
                    c.abort()
                else:
                    lingering.append(c)  # left open: garbage, or half a packet, then silence
            await _bystanders_fine(sub, pub, 1)
            for c in lingering:
                c.abort()
            await asyncio.sleep(0.3)
            assert len(b.handlers) == 2
            await _bystanders_fine(sub, pub, 2)

    run(main())


def test_truncated_packet_then_close_is_harmless() -> None:
    async def main() -> None:
        async with started_broker() as b:
            sub, pub = await _bystander(b.ports[0])
            c = await RawClient.connect(b.ports[0], "trunc")
            c.send_bytes(Publish("ok/1", b"x" * 100).encode()[:50])
            await asyncio.sleep(0.1)
            c.abort()
            await sub.nothing()
            await _bystanders_fine(sub, pub, 1)

    run(main())


def test_slow_consumer_is_bounded_and_others_unaffected() -> None:
    async def main() -> None:
        async with started_broker(outbound_high_water=64 * 1024) as b:
            # A subscriber that never reads: its socket buffers fill, then QoS 0 is dropped.
            stalled = await RawClient.open(b.ports[0], rcvbuf=4096)
            stalled.send(Connect("stalled"))
            stalled.send(Subscribe(1, [Subscription("load/#")]))
            await asyncio.sleep(0.1)
            fast = await RawClient.connect(b.ports[0], "fast")
            await fast.subscribe("load/#")
            pub = await RawClient.connect(b.ports[0], "p")
            payload = b"z" * 1024
            received = 0

            async def reader() -> None:
                nonlocal received
                while received < 3000:
                    await fast.expect(Publish, wait=5)
                    received += 1

            task = asyncio.create_task(reader())
            for i in range(3000):
                pub.send(Publish("load/x", payload))
                if i % 100 == 0:
                    await pub.writer.drain()
                    await asyncio.sleep(0)
            await task
            assert received == 3000
            assert b.counters.dropped_slow_consumer > 0
            handler = next(h for h in b.handlers if h.client_id == "stalled")
            assert handler.transport is not None
            # bounded: the high-water mark plus what one tick can add before writing pauses
            # (the fan-out of one 64 KiB read from the publisher)
            assert handler.transport.get_write_buffer_size() < 64 * 1024 + 70 * 1100

    run(main(), 60)


def test_global_memory_limit_pauses_publishers_until_queues_drain() -> None:
    limit = 64 * 1024

    async def main() -> None:
        async with started_broker(memory_limit=limit, max_queued_messages=0) as b:
            keep = Properties(session_expiry_interval=60)
            sub = await RawClient.connect(b.ports[0], "offline", properties=keep)
            await sub.subscribe("mem/#", qos=1)
            await sub.disconnect()
            pub = await RawClient.connect(b.ports[0], "p")
            payload = b"m" * 1000
            sent = 0

            def send_more(window: int) -> None:
                nonlocal sent
                while sent < 300 and sent - acks < window:  # honour Receive Maximum 20
                    sent += 1
                    pub.send(Publish("mem/x", payload, 1, packet_id=sent))

            acks = 0
            send_more(20)
            while True:
                try:
                    await pub.expect(PubAck, wait=0.5)
                except TimeoutError:
                    break
                acks += 1
                send_more(20)
            assert b.reading_paused
            assert acks < 300  # the publisher was stopped...
            assert b.queued_total <= limit + 21 * 1000  # ...within a window of the limit
            # the consumer returns and drains: the publisher is resumed and nothing is lost
            sub = await RawClient.connect(b.ports[0], "offline", clean_start=False, properties=keep)
            got = 0
            while got < 300:
                p = await sub.expect(Publish, wait=5)
                sub.send(PubAck(p.packet_id))
                got += 1
                while acks < sent:
                    try:
                        await pub.expect(PubAck, wait=0.01)
                    except TimeoutError:
                        break
                    acks += 1
                    send_more(20)
            assert got == 300
            assert not b.reading_paused

    run(main(), 60)
