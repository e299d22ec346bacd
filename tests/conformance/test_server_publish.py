"""Broker conformance: PUBLISH handling (section 3.3), QoS 2 flows and expiry (4.3.3), message
ownership and ordering (4.5, 4.6) and the transport (4.2), with raw packets over real sockets."""

from __future__ import annotations

import asyncio
import random

import pytest

from mqttv5.protocol.packets import (
    Pingreq,
    Pingresp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
)
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode
from mqttv5.protocol.topics import matches
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient
from tests.conformance.test_server_connect import Bystanders


def _expiry(seconds: int) -> Properties:
    return Properties(session_expiry_interval=seconds)


async def receive_acking(client: RawClient, n: int, wait: float = 3.0) -> list[Publish]:
    """Receive ``n`` PUBLISH packets, completing each one's QoS flow (PUBREC, then PUBCOMP for
    the broker's PUBREL) before returning."""
    got: list[Publish] = []
    releasing: set[int] = set()
    while len(got) < n or releasing:
        packet = await client.recv(wait)
        if isinstance(packet, PubRel):
            releasing.discard(packet.packet_id)
            client.send(PubComp(packet.packet_id))
            continue
        assert isinstance(packet, Publish), packet
        got.append(packet)
        if packet.qos == 1:
            assert packet.packet_id is not None
            client.send(PubAck(packet.packet_id))
        elif packet.qos == 2:
            assert packet.packet_id is not None
            releasing.add(packet.packet_id)
            client.send(PubRec(packet.packet_id))
    return got


async def complete_publishes(client: RawClient, sent: list[Publish]) -> None:
    """Read the acknowledgements of ``sent`` (already written), answering PUBREC with PUBREL."""
    waiting = {p.packet_id for p in sent if p.qos}
    while waiting:
        packet = await client.recv()
        if isinstance(packet, PubAck | PubComp):
            waiting.discard(packet.packet_id)
        elif isinstance(packet, PubRec):
            client.send(PubRel(packet.packet_id))
        else:
            raise AssertionError(f"unexpected {packet!r}")


class TestRetain:
    @pytest.mark.spec("MQTT-3.3.1-7")
    @pytest.mark.parametrize("qos", [0, 1])
    def test_empty_retained_message_is_never_stored(self, qos: int) -> None:
        async def main() -> None:
            async with started_broker() as b:
                pub = await RawClient.connect(b.ports[0], "pub")
                await pub.publish("ret/never", b"", qos=qos, retain=True)
                await pub.publish("ret/cleared", b"value", qos=qos, retain=True)
                await pub.publish("ret/cleared", b"", qos=qos, retain=True)
                sub = await RawClient.connect(b.ports[0], "sub")
                await sub.subscribe("ret/#")
                await sub.nothing()
                assert b.router.retained.get("ret/never") is None
                assert b.router.retained.get("ret/cleared") is None

        run(main())

    @pytest.mark.spec("MQTT-3.3.1-8")
    def test_retain_0_neither_stores_nor_replaces_nor_removes(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                pub = await RawClient.connect(b.ports[0], "pub")
                await pub.publish("ret/t", b"first", qos=1, retain=True)
                await pub.publish("ret/t", b"second", qos=1)  # RETAIN 0: does not replace
                await pub.publish("ret/t", b"", qos=1)  # RETAIN 0, empty: does not remove
                await pub.publish("ret/other", b"not kept", qos=1)  # RETAIN 0: not stored
                sub = await RawClient.connect(b.ports[0], "sub")
                await sub.subscribe("ret/#", qos=1)
                got = await receive_acking(sub, 1)
                assert [(p.topic, p.payload, p.retain) for p in got] == [("ret/t", b"first", True)]
                await sub.nothing()

        run(main())


class TestDup:
    @pytest.mark.spec("MQTT-3.3.1-3")
    @pytest.mark.parametrize("qos", [1, 2])
    def test_outgoing_dup_ignores_the_incoming_dup(self, qos: int) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                sub = await RawClient.connect(port, "sub", properties=_expiry(60))
                await sub.subscribe("dup/#", qos=qos)
                pub = await RawClient.connect(port, "pub")
                sent = [Publish("dup/a", b"resent", qos, dup=True, packet_id=1)]
                pub.send(sent[0])
                await complete_publishes(pub, sent)
                got = await sub.expect(Publish)
                assert got.payload == b"resent" and got.dup is False  # a first transmission
                # the broker's own retransmission (after reconnect) is the one with DUP 1
                sub.abort()
                sub = await RawClient.connect(port, "sub", clean_start=False)
                again = await sub.expect(Publish)
                assert again.packet_id == got.packet_id and again.dup is True

        run(main())


class TestTopicNames:
    @pytest.mark.spec("MQTT-3.3.2-3")
    def test_topic_name_sent_matches_the_subscription_filter(self) -> None:
        async def main() -> None:
            async with started_broker(listener={"mount_point": "tenant/"}) as b:
                port = b.ports[0]
                filters = ["tn/+/x", "tn/#", "+/b/+"]
                subs = []
                for n, filt in enumerate(filters):
                    sub = await RawClient.connect(port, f"sub{n}")
                    await sub.subscribe(filt)
                    subs.append(sub)
                pub = await RawClient.connect(port, "pub")
                # the second PUBLISH names its topic only by the Topic Alias set by the first
                pub.send(Publish("tn/b/x", b"1", properties=Properties(topic_alias=1)))
                pub.send(Publish("", b"2", properties=Properties(topic_alias=1)))
                for sub, filt in zip(subs, filters, strict=True):
                    for payload in (b"1", b"2"):
                        got = await sub.expect(Publish)
                        # the listener's mount point is not shown to its own clients
                        assert (got.topic, got.payload) == ("tn/b/x", payload)
                        assert matches(filt, got.topic)

        run(main())

    @pytest.mark.spec("MQTT-3.3.2-11")
    @pytest.mark.parametrize("topic_alias_maximum", [1, 2])
    def test_topic_alias_never_exceeds_the_clients_maximum(self, topic_alias_maximum: int) -> None:
        topics = [f"alias/{n}" for n in range(5)]

        async def main() -> None:
            async with started_broker() as b:
                props = Properties(topic_alias_maximum=topic_alias_maximum)
                sub = await RawClient.connect(b.ports[0], "sub", properties=props)
                await sub.subscribe("alias/#")
                pub = await RawClient.connect(b.ports[0], "pub")
                for topic in topics * 3:
                    await pub.publish(topic, topic.encode())
                aliases: dict[int, str] = {}
                for topic in topics * 3:
                    got = await sub.expect(Publish)
                    alias = got.properties.topic_alias
                    name = got.topic
                    if alias is not None:
                        assert 1 <= alias <= topic_alias_maximum, alias
                        if got.topic:
                            aliases[alias] = got.topic
                        name = aliases[alias]
                    assert name == topic
                    assert got.payload == topic.encode()

        run(main())


class TestMessageExpiry:
    @pytest.mark.spec("MQTT-3.3.2-5")
    def test_expired_copy_is_not_delivered_to_an_offline_session(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                sub = await RawClient.connect(port, "sleeper", properties=_expiry(60))
                await sub.subscribe("exp/#", qos=1)
                await sub.disconnect()
                pub = await RawClient.connect(port, "pub")
                short = Properties(message_expiry_interval=1)
                long = Properties(message_expiry_interval=60)
                await pub.publish("exp/short", b"stale", qos=1, packet_id=1, properties=short)
                await pub.publish("exp/long", b"fresh", qos=1, packet_id=2, properties=long)
                await asyncio.sleep(1.5)
                sub = await RawClient.connect(port, "sleeper", clean_start=False)
                got = await receive_acking(sub, 1)
                assert [p.topic for p in got] == ["exp/long"]
                await sub.nothing()

        run(main())

    @pytest.mark.spec("MQTT-3.3.2-5")
    def test_expired_copy_waiting_for_receive_maximum_is_not_delivered(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                props = Properties(receive_maximum=1)
                sub = await RawClient.connect(b.ports[0], "slow", properties=props)
                await sub.subscribe("exp/#", qos=1)
                pub = await RawClient.connect(b.ports[0], "pub")
                short = Properties(message_expiry_interval=1)
                await pub.publish("exp/first", b"1", qos=1, packet_id=1)
                await pub.publish("exp/second", b"2", qos=1, packet_id=2, properties=short)
                await pub.publish("exp/third", b"3", qos=1, packet_id=3)
                first = await sub.expect(Publish)
                await sub.nothing(1.3)  # the window is full; the second expires while queued
                assert first.packet_id is not None
                sub.send(PubAck(first.packet_id))
                got = await receive_acking(sub, 1)
                assert [p.topic for p in got] == ["exp/third"]

        run(main())


class TestFlowControl:
    @pytest.mark.spec("MQTT-3.3.4-10")
    def test_full_receive_maximum_holds_back_only_publish(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                props = Properties(receive_maximum=1)
                sub = await RawClient.connect(b.ports[0], "full", properties=props)
                await sub.subscribe("flow/#", qos=1)
                pub = await RawClient.connect(b.ports[0], "pub")
                await pub.publish("flow/1", b"1", qos=1, packet_id=1)
                await pub.publish("flow/2", b"2", qos=1, packet_id=2)
                held = await sub.expect(Publish)
                await sub.nothing()  # flow/2 waits: the client's window is full
                # everything else is answered at once
                sub.send(Pingreq())
                assert isinstance(await sub.recv(), Pingresp)
                sub.send(Subscribe(7, [Subscription("other/#", 1)]))
                assert (await sub.expect(Suback)).packet_id == 7
                sub.send(Unsubscribe(8, ["other/#"]))
                assert (await sub.expect(Unsuback)).packet_id == 8
                sub.send(Publish("elsewhere/q1", b"x", 1, packet_id=9))
                assert (await sub.expect(PubAck)).packet_id == 9
                sub.send(Publish("elsewhere/q2", b"x", 2, packet_id=10))
                assert (await sub.expect(PubRec)).packet_id == 10
                sub.send(PubRel(10))
                assert (await sub.expect(PubComp)).packet_id == 10
                assert held.packet_id is not None
                sub.send(PubAck(held.packet_id))
                assert (await sub.expect(Publish)).topic == "flow/2"

        run(main())


class TestQos2:
    @pytest.mark.spec("MQTT-4.3.3-6")
    def test_no_publish_resent_once_pubrel_was_sent(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                sub = await RawClient.connect(port, "sub", properties=_expiry(60))
                await sub.subscribe("q2/#", qos=2)
                pub = await RawClient.connect(port, "pub")
                await pub.publish("q2/a", b"once", qos=2)
                got = await sub.expect(Publish)
                assert got.packet_id is not None
                sub.send(PubRec(got.packet_id))
                assert (await sub.expect(PubRel)).packet_id == got.packet_id
                sub.abort()  # no PUBCOMP
                sub = await RawClient.connect(port, "sub", clean_start=False)
                resent = await sub.recv()
                assert isinstance(resent, PubRel) and resent.packet_id == got.packet_id, resent
                await sub.nothing()
                sub.send(PubComp(got.packet_id))
                await sub.nothing()

        run(main())

    @pytest.mark.spec("MQTT-4.3.3-7")
    def test_sent_qos2_message_does_not_expire(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                sub = await RawClient.connect(port, "sub", properties=_expiry(60))
                await sub.subscribe("q2/#", qos=2)
                pub = await RawClient.connect(port, "pub")
                short = Properties(message_expiry_interval=1)
                await pub.publish("q2/short", b"sent", qos=2, properties=short)
                got = await sub.expect(Publish)
                assert got.packet_id is not None
                sub.abort()  # the PUBLISH went out; no PUBREC yet
                await asyncio.sleep(1.5)  # its Message Expiry Interval has passed
                sub = await RawClient.connect(port, "sub", clean_start=False)
                again = await sub.expect(Publish)
                assert (again.packet_id, again.payload, again.dup) == (got.packet_id, b"sent", True)
                sub.send(PubRec(got.packet_id))
                assert (await sub.expect(PubRel)).packet_id == got.packet_id
                sub.send(PubComp(got.packet_id))
                await sub.nothing()

        run(main())

    @pytest.mark.spec("MQTT-4.3.3-13")
    def test_receiver_completes_the_flow_of_an_expired_message(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                pub = await RawClient.connect(b.ports[0], "pub")
                short = Properties(message_expiry_interval=1)
                pub.send(Publish("q2/gone", b"x", 2, packet_id=5, properties=short))
                rec = await pub.expect(PubRec)
                assert rec.packet_id == 5
                await asyncio.sleep(1.5)
                pub.send(PubRel(5))
                comp = await pub.expect(PubComp)
                assert (comp.packet_id, comp.reason_code) == (5, ReasonCode.SUCCESS)

        run(main())


class TestOwnershipAndOrder:
    @pytest.mark.spec("MQTT-4.5.0-1")
    def test_message_goes_to_every_matching_session(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                offline = await RawClient.connect(port, "offline", properties=_expiry(60))
                await offline.subscribe("own/#", qos=1)
                await offline.disconnect()
                online = await RawClient.connect(port, "online")
                await online.subscribe("own/+", qos=1)
                other = await RawClient.connect(port, "other")
                await other.subscribe("elsewhere/#", qos=1)
                pub = await RawClient.connect(port, "pub")
                await pub.publish("own/m", b"x", qos=1)
                assert [p.topic for p in await receive_acking(online, 1)] == ["own/m"]
                offline = await RawClient.connect(port, "offline", clean_start=False)
                assert [p.topic for p in await receive_acking(offline, 1)] == ["own/m"]
                await other.nothing()

        run(main())

    @pytest.mark.spec("MQTT-4.6.0-5", "MQTT-4.6.0-6")
    def test_messages_of_one_publisher_keep_their_order(self) -> None:
        rng = random.Random(7)
        plan = [rng.choice((0, 1, 2)) for _ in range(90)]

        async def main() -> None:
            # room for the whole burst in flight: the publisher sends it in one write
            async with started_broker(receive_maximum=len(plan)) as b:
                port = b.ports[0]
                live = await RawClient.connect(port, "live")
                await live.subscribe("ord/t", qos=2)
                narrow = await RawClient.connect(
                    port, "narrow", properties=Properties(receive_maximum=2)
                )
                await narrow.subscribe("ord/#", qos=2)
                offline = await RawClient.connect(port, "offline", properties=_expiry(60))
                await offline.subscribe("ord/+", qos=2)
                await offline.disconnect()
                pub = await RawClient.connect(port, "pub")
                sent = [
                    Publish("ord/t", b"%d" % n, qos, packet_id=n + 1 if qos else None)
                    for n, qos in enumerate(plan)
                ]
                pub.send_bytes(b"".join(p.encode() for p in sent))
                await complete_publishes(pub, sent)
                offline = await RawClient.connect(port, "offline", clean_start=False)
                for sub in (live, narrow, offline):
                    # QoS 0 is not queued for an offline session (this broker's choice)
                    n = len(plan) if sub is not offline else sum(1 for q in plan if q)
                    got = await receive_acking(sub, n)
                    for qos in (0, 1, 2):
                        order = [int(p.payload) for p in got if p.qos == qos]
                        assert order == sorted(order), (sub, qos, order)
                    expected = [n for n, q in enumerate(plan) if q or sub is not offline]
                    assert sorted(int(p.payload) for p in got) == expected

        run(main())


class TestTransport:
    @pytest.mark.spec("MQTT-4.2-1")
    def test_tcp_carries_packets_in_order_and_intact(self) -> None:
        rng = random.Random(42)
        sizes = (0, 1, 127, 128, 16_383, 16_384, 70_000)
        payloads = [rng.randbytes(rng.choice(sizes)) for _ in range(20)]

        async def main() -> None:
            async with started_broker() as b:
                bystanders = await Bystanders.start(b.ports[0])
                sub = await RawClient.connect(b.ports[0], "sub")
                await sub.subscribe("tcp/#", qos=1)
                pub = await RawClient.connect(b.ports[0], "pub")
                sent = [Publish("tcp/x", p, 1, packet_id=n + 1) for n, p in enumerate(payloads)]
                assert len(sent) <= b.config.receive_maximum
                # one write, split by TCP wherever it likes
                pub.send_bytes(b"".join(p.encode() for p in sent))
                got = await receive_acking(sub, len(payloads), wait=5.0)
                await complete_publishes(pub, sent)
                assert [p.payload for p in got] == payloads
                await bystanders.check()

        run(main())
