"""Resource limits (limits.py): per-address connections and rate, per-client message rate and
bandwidth, the retained quota — over real sockets, plus the token bucket on its own."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from mqttv5.broker.limits import ClientLimits, TokenBucket, monitor_for
from mqttv5.protocol.packets import Connack, Connect, Disconnect, PubAck, Publish, PubRec
from mqttv5.protocol.reason_codes import ReasonCode
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import Closed, RawClient

RC = ReasonCode


class TestTokenBucket:
    def test_take_and_refill(self) -> None:
        bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
        assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
        assert not bucket.take(0.4)  # 0.8 tokens
        assert bucket.take(0.5)  # 1.0 token
        assert bucket.refill(100.0) == 3.0  # never above the burst

    def test_charge_goes_into_debt_and_says_how_long(self) -> None:
        bucket = TokenBucket(rate=10.0, burst=5.0, now=0.0)
        assert bucket.charge(0.0, 5) == 0.0
        assert bucket.charge(0.0, 10) == pytest.approx(1.0)  # 10 tokens owed at 10/s
        assert not bucket.full(0.9)
        assert bucket.charge(1.0) == pytest.approx(0.1)
        assert bucket.full(2.0)


class TestConnections:
    def test_per_address_count(self) -> None:
        async def main() -> None:
            async with started_broker(max_connections_per_address=2) as b:
                port = b.ports[0]
                first = await RawClient.connect(port, "a1")
                await RawClient.connect(port, "a2")
                refused = await RawClient.open(port)
                assert await refused.closed() == []  # closed before CONNECT, nothing sent
                assert b.counters.refused_address_limit == 1
                await first.disconnect()
                await asyncio.sleep(0.05)
                await RawClient.connect(port, "a3")  # a slot is free again

        run(main())

    def test_listener_overrides_the_global_count(self) -> None:
        async def main() -> None:
            async with started_broker(
                max_connections_per_address=1, listener={"max_connections_per_address": 0}
            ) as b:
                for n in range(3):
                    await RawClient.connect(b.ports[0], f"o{n}")  # 0 on the listener: unlimited

        run(main())

    @pytest.mark.parametrize("version", [5, 4])
    def test_connection_rate_gets_0x9f(self, version: int) -> None:
        async def main() -> None:
            async with started_broker(max_connection_rate=1, connection_rate_burst=2) as b:
                port = b.ports[0]
                await RawClient.connect(port, "r1", version=version)
                await RawClient.connect(port, "r2", version=version)
                c = await RawClient.open(port, version=version)
                c.send(Connect("r3", protocol_level=version))
                packets = await c.closed()
                assert isinstance(packets[0], Connack)
                if version == 5:
                    assert packets[0].reason_code == RC.CONNECTION_RATE_EXCEEDED
                else:
                    assert packets[0].encode(4) == b"\x20\x02\x00\x03"  # server unavailable
                assert b.counters.refused_connection_rate == 1
                await asyncio.sleep(1.05)  # one token back
                await RawClient.connect(port, "r4", version=version)

        run(main())

    def test_off_by_default_and_no_per_client_object(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                await RawClient.connect(b.ports[0], "z")
                assert all(h.limits is None for h in b.handlers)
                assert b.config.max_connections_per_address == 0
                assert b.config.max_publish_rate == 0

        run(main())


async def _drain(sub: RawClient, wait: float = 0.5) -> list[Publish]:
    got: list[Publish] = []
    while True:
        try:
            packet = await sub.recv(wait)
        except TimeoutError:
            return got
        if isinstance(packet, Publish):
            got.append(packet)
            if packet.qos:
                sub.send(PubAck(packet.packet_id))


class TestPublishRate:
    def test_qos0_over_the_rate_is_dropped_and_counted(self) -> None:
        async def main() -> None:
            async with started_broker(max_publish_rate=5, publish_rate_burst=5) as b:
                port = b.ports[0]
                sub = await RawClient.connect(port, "sub")
                await sub.subscribe("q0/#")
                pub = await RawClient.connect(port, "pub")
                for n in range(15):
                    pub.send(Publish("q0/t", b"%d" % n))
                got = await _drain(sub)
                assert 5 <= len(got) <= 7  # the burst, and what refilled meanwhile
                assert b.counters.dropped_rate_limited == 15 - len(got)
                assert b.counters.disconnected_rate_limit == 0

        run(main())

    def test_qos1_is_throttled_never_dropped(self) -> None:
        async def main() -> None:
            async with started_broker(max_publish_rate=20, publish_rate_burst=5) as b:
                port = b.ports[0]
                sub = await RawClient.connect(port, "sub")
                await sub.subscribe("q1/#", qos=1)
                pub = await RawClient.connect(port, "pub")
                start = time.monotonic()
                for n in range(1, 31):
                    ack = await pub.publish("q1/t", b"%d" % n, qos=1, packet_id=n)
                    assert isinstance(ack, PubAck) and not ack.reason_code.is_error
                elapsed = time.monotonic() - start
                got = await _drain(sub)
                assert [p.payload for p in got] == [b"%d" % n for n in range(1, 31)]
                assert elapsed >= (30 - 5) / 20 * 0.8  # paced near 20/s after the burst of 5
                assert b.counters.throttled_publishers > 0
                assert b.counters.dropped_rate_limited == 0

        run(main())

    def test_far_above_the_rate_is_disconnected_with_0x96(self) -> None:
        async def main() -> None:
            async with started_broker(max_publish_rate=2, publish_rate_burst=2) as b:
                pub = await RawClient.connect(b.ports[0], "flood")
                for n in range(30):  # 2 pass, 20 dropped within the tolerance, then 0x96
                    pub.send(Publish("f/t", b"%d" % n))
                packets = await pub.closed()
                assert isinstance(packets[-1], Disconnect)
                assert packets[-1].reason_code == RC.MESSAGE_RATE_TOO_HIGH
                assert b.counters.disconnected_rate_limit == 1

        run(main())


class TestBandwidth:
    def test_reading_is_throttled_and_keep_alive_survives(self) -> None:
        async def main() -> None:
            async with started_broker(max_inbound_bytes_per_second=20_000) as b:
                port = b.ports[0]
                sub = await RawClient.connect(port, "sub")
                await sub.subscribe("bw/#", qos=1)
                pub = await RawClient.connect(port, "pub", keep_alive=1)
                # 60 kB in one read: handled, then 40 kB of debt at 20 kB/s pauses reading ~2 s
                for n in range(1, 7):
                    pub.send(Publish("bw/t", bytes(10_000), 1, packet_id=n))
                acks = [await pub.expect(PubAck) for _ in range(6)]
                assert not any(a.reason_code.is_error for a in acks)
                await asyncio.sleep(0.1)
                start = time.monotonic()
                pub.send(Publish("bw/t", b"late", 1, packet_id=7))
                late = await pub.expect(PubAck, wait=5)
                assert not late.reason_code.is_error
                assert time.monotonic() - start >= 1.2  # waited for the bucket
                got = await _drain(sub, 0.3)
                assert len(got) == 7 and got[-1].payload == b"late"
                assert b.counters.throttled_bandwidth > 0
                assert b.counters.protocol_errors == 0  # keep-alive (1 s) not held against it

        run(main())


class TestRetainedQuota:
    def test_count_limit(self) -> None:
        async def main() -> None:
            async with started_broker(max_retained_messages=2) as b:
                port = b.ports[0]
                pub = await RawClient.connect(port, "pub")
                for n, topic in enumerate(["r/1", "r/2"], 1):
                    ack = await pub.publish(topic, b"x", qos=1, retain=True, packet_id=n)
                    assert isinstance(ack, PubAck) and not ack.reason_code.is_error
                ack = await pub.publish("r/3", b"x", qos=1, retain=True, packet_id=3)
                assert isinstance(ack, PubAck) and ack.reason_code == RC.QUOTA_EXCEEDED
                rec = await pub.publish("r/3", b"x", qos=2, retain=True, packet_id=4)
                assert rec is not None
                await pub.publish("r/3", b"q0", retain=True)  # QoS 0: dropped
                ack = await pub.publish("r/1", b"new", qos=1, retain=True, packet_id=5)
                assert isinstance(ack, PubAck) and not ack.reason_code.is_error  # a replacement
                await pub.publish("r/2", b"", qos=1, retain=True, packet_id=6)  # clears r/2
                ack = await pub.publish("r/4", b"x", qos=1, retain=True, packet_id=7)
                assert isinstance(ack, PubAck) and not ack.reason_code.is_error
                sub = await RawClient.connect(port, "sub")
                await sub.subscribe("r/#")
                got = await _drain(sub, 0.3)
                assert sorted((p.topic, p.payload) for p in got) == [("r/1", b"new"), ("r/4", b"x")]
                assert b.counters.refused_retained_quota == 3

        run(main())

    def test_refused_qos2_gets_pubrec_0x97(self) -> None:
        async def main() -> None:
            async with started_broker(max_retained_messages=1) as b:
                pub = await RawClient.connect(b.ports[0], "pub")
                await pub.publish("a", b"x", qos=1, retain=True, packet_id=1)
                pub.send(Publish("b", b"x", 2, True, False, 2))
                rec = await pub.expect(PubRec)
                assert rec.reason_code == RC.QUOTA_EXCEEDED

        run(main())

    def test_byte_limit_and_reload(self) -> None:
        async def main() -> None:
            async with started_broker(max_retained_bytes=100) as b:
                pub = await RawClient.connect(b.ports[0], "pub")
                ack = await pub.publish("t1", bytes(58), qos=1, retain=True, packet_id=1)
                assert isinstance(ack, PubAck) and not ack.reason_code.is_error  # 60 bytes
                ack = await pub.publish("t2", bytes(58), qos=1, retain=True, packet_id=2)
                assert isinstance(ack, PubAck) and ack.reason_code == RC.QUOTA_EXCEEDED
                ack = await pub.publish("t1", bytes(8), qos=1, retain=True, packet_id=3)
                assert isinstance(ack, PubAck) and not ack.reason_code.is_error  # 10 bytes now
                ack = await pub.publish("t2", bytes(58), qos=1, retain=True, packet_id=4)
                assert isinstance(ack, PubAck) and not ack.reason_code.is_error  # 70 in all
                assert monitor_for(b).retained_bytes == 70
                ack = await pub.publish("t3", bytes(58), qos=1, retain=True, packet_id=5)
                assert isinstance(ack, PubAck) and ack.reason_code == RC.QUOTA_EXCEEDED
                b.reload(dataclasses.replace(b.config, max_retained_bytes=0))
                ack = await pub.publish("t3", bytes(58), qos=1, retain=True, packet_id=6)
                assert isinstance(ack, PubAck) and not ack.reason_code.is_error

        run(main())

    def test_mqtt311_refusal_is_silent(self) -> None:
        async def main() -> None:
            async with started_broker(max_retained_messages=1) as b:
                pub = await RawClient.connect(b.ports[0], "old", version=4)
                await pub.publish("a", b"x", qos=1, retain=True, packet_id=1)
                ack = await pub.publish("b", b"x", qos=1, retain=True, packet_id=2)
                assert isinstance(ack, PubAck) and not ack.reason_code.is_error  # 3.1.1: no code
                assert b.router.retained.get("b") is None
                with pytest.raises((Closed, TimeoutError)):
                    await pub.recv(0.2)

        run(main())


def test_client_limits_only_when_a_per_client_limit_applies() -> None:
    async def main() -> None:
        async with started_broker(max_inbound_bytes_per_second=1_000_000) as b:
            await RawClient.connect(b.ports[0], "x")
            (handler,) = b.handlers
            assert isinstance(handler.limits, ClientLimits)
            assert handler.limits.publish is None and handler.limits.bytes is not None

    run(main())
