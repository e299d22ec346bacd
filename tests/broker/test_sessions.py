"""Sessions, expiry, resume, queues and Will Messages (sections 3.1.2.4-3.1.3.2, 4.1)."""

from __future__ import annotations

import asyncio

import pytest

from mqttv5.protocol.packets import Disconnect, PubAck, Publish, Will
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient

KEEP = Properties(session_expiry_interval=60)


class TestSessionResume:
    @pytest.mark.spec("MQTT-3.1.2-5", "MQTT-4.1.0-1")
    def test_resume_keeps_subscriptions_and_queued_messages(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                sub = await RawClient.connect(b.ports[0], "r", properties=KEEP)
                await sub.subscribe("q/#", qos=1)
                await sub.disconnect()
                pub = await RawClient.connect(b.ports[0], "p")
                for i in range(3):
                    await pub.publish("q/x", bytes([i]), qos=1, packet_id=i + 1)
                await pub.publish("q/zero", b"qos0 is not queued")
                sub = await RawClient.connect(b.ports[0], "r", clean_start=False, properties=KEEP)
                assert sub.connack.session_present is True
                got = [await sub.expect(Publish) for _ in range(3)]
                assert [g.payload for g in got] == [b"\x00", b"\x01", b"\x02"]
                await sub.nothing()

        run(main())

    @pytest.mark.spec("MQTT-4.4.0-1")
    def test_unacknowledged_messages_resent_with_dup(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                sub = await RawClient.connect(b.ports[0], "d", properties=KEEP)
                await sub.subscribe("dup", qos=1)
                pub = await RawClient.connect(b.ports[0], "p")
                await pub.publish("dup", b"x", qos=1)
                first = await sub.expect(Publish)
                assert first.dup is False
                sub.abort()  # no PUBACK
                await asyncio.sleep(0.1)
                sub = await RawClient.connect(b.ports[0], "d", clean_start=False, properties=KEEP)
                again = await sub.expect(Publish)
                assert again.dup is True and again.packet_id == first.packet_id
                sub.send(PubAck(again.packet_id))
                await sub.nothing()

        run(main())

    @pytest.mark.spec("MQTT-3.1.2-4")
    def test_clean_start_discards_session(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                sub = await RawClient.connect(b.ports[0], "c", properties=KEEP)
                await sub.subscribe("gone")
                await sub.disconnect()
                sub = await RawClient.connect(b.ports[0], "c", clean_start=True)
                assert sub.connack.session_present is False
                pub = await RawClient.connect(b.ports[0], "p")
                await pub.publish("gone", b"x")
                await sub.nothing()

        run(main())

    def test_session_expires(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                props = Properties(session_expiry_interval=1)
                c = await RawClient.connect(b.ports[0], "x", properties=props)
                await c.disconnect()
                assert "x" in b.sessions
                await asyncio.sleep(1.5)
                assert "x" not in b.sessions
                c = await RawClient.connect(b.ports[0], "x", clean_start=False, properties=props)
                assert c.connack.session_present is False

        run(main())

    def test_session_expiry_zero_ends_at_disconnect(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "z")
                await c.disconnect()
                await asyncio.sleep(0.1)
                assert "z" not in b.sessions

        run(main())

    def test_v311_persistent_session_expiration(self) -> None:
        async def main() -> None:
            async with started_broker(persistent_client_expiration=1) as b:
                c = await RawClient.connect(b.ports[0], "old", version=4, clean_start=False)
                await c.disconnect()
                assert "old" in b.sessions
                await asyncio.sleep(1.5)
                assert "old" not in b.sessions

        run(main())

    @pytest.mark.spec("MQTT-3.14.2-2")
    def test_disconnect_cannot_raise_zero_expiry(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "e0")
                c.send(Disconnect(properties=Properties(session_expiry_interval=30)))
                packets = await c.closed()
                assert isinstance(packets[-1], Disconnect)
                assert packets[-1].reason_code == ReasonCode.PROTOCOL_ERROR

        run(main())

    def test_queue_limit_drops_newest(self) -> None:
        async def main() -> None:
            async with started_broker(max_queued_messages=2) as b:
                sub = await RawClient.connect(b.ports[0], "ql", properties=KEEP)
                await sub.subscribe("ql", qos=1)
                await sub.disconnect()
                pub = await RawClient.connect(b.ports[0], "p")
                for i in range(4):
                    await pub.publish("ql", bytes([i]), qos=1, packet_id=i + 1)
                sub = await RawClient.connect(b.ports[0], "ql", clean_start=False, properties=KEEP)
                got = [await sub.expect(Publish) for _ in range(2)]
                assert [g.payload for g in got] == [b"\x00", b"\x01"]
                await sub.nothing()
                assert b.counters.dropped_queue_full == 2

        run(main())


class TestWill:
    @pytest.mark.spec("MQTT-3.1.2-8")
    def test_will_on_network_loss(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                watcher = await RawClient.connect(b.ports[0], "w")
                await watcher.subscribe("will/#")
                dying = await RawClient.connect(
                    b.ports[0],
                    "dying",
                    will=Will("will/dying", b"bye", 1, False, Properties(content_type="t")),
                )
                dying.abort()
                got = await watcher.expect(Publish)
                assert (got.topic, got.payload) == ("will/dying", b"bye")
                assert got.properties.content_type == "t"

        run(main())

    @pytest.mark.spec("MQTT-3.1.2-10")
    def test_normal_disconnect_discards_will(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                watcher = await RawClient.connect(b.ports[0], "w")
                await watcher.subscribe("will/#")
                c = await RawClient.connect(b.ports[0], "n", will=Will("will/n", b"bye"))
                await c.disconnect()
                await watcher.nothing(0.5)

        run(main())

    def test_disconnect_with_will_message(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                watcher = await RawClient.connect(b.ports[0], "w")
                await watcher.subscribe("will/#")
                c = await RawClient.connect(b.ports[0], "x", will=Will("will/x", b"asked"))
                await c.disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)
                assert (await watcher.expect(Publish)).payload == b"asked"

        run(main())

    @pytest.mark.spec("MQTT-3.1.3-9")
    def test_will_delay_cancelled_by_reconnect(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                watcher = await RawClient.connect(b.ports[0], "w")
                await watcher.subscribe("will/#")
                will = Will("will/d", b"late", properties=Properties(will_delay_interval=1))
                c = await RawClient.connect(b.ports[0], "d", will=will, properties=KEEP)
                c.abort()
                await asyncio.sleep(0.3)
                c = await RawClient.connect(b.ports[0], "d", clean_start=False, properties=KEEP)
                await watcher.nothing(1.2)

        run(main())

    def test_will_delay_then_published(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                watcher = await RawClient.connect(b.ports[0], "w")
                await watcher.subscribe("will/#")
                will = Will("will/d", b"late", properties=Properties(will_delay_interval=1))
                c = await RawClient.connect(b.ports[0], "d", will=will, properties=KEEP)
                loop = asyncio.get_running_loop()
                start = loop.time()
                c.abort()
                got = await watcher.expect(Publish, wait=3)
                assert got.payload == b"late"
                assert loop.time() - start >= 0.9

        run(main())

    def test_session_expiry_shorter_than_will_delay(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                watcher = await RawClient.connect(b.ports[0], "w")
                await watcher.subscribe("will/#")
                will = Will("will/s", b"early", properties=Properties(will_delay_interval=30))
                c = await RawClient.connect(
                    b.ports[0], "s", will=will, properties=Properties(session_expiry_interval=1)
                )
                c.abort()
                got = await watcher.expect(Publish, wait=3)
                assert got.payload == b"early"

        run(main())

    def test_will_on_keep_alive_timeout(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                watcher = await RawClient.connect(b.ports[0], "w")
                await watcher.subscribe("will/#")
                await RawClient.connect(b.ports[0], "k", keep_alive=1, will=Will("will/k", b"ka"))
                got = await watcher.expect(Publish, wait=4)
                assert got.payload == b"ka"

        run(main())

    def test_retained_will(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "rw", will=Will("will/r", b"ret", 0, True))
                c.abort()
                await asyncio.sleep(0.2)
                late = await RawClient.connect(b.ports[0], "late")
                await late.subscribe("will/r")
                got = await late.expect(Publish)
                assert got.payload == b"ret" and got.retain

        run(main())
