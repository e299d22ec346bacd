"""Broker conformance: SUBSCRIBE / SUBACK, UNSUBSCRIBE / UNSUBACK (sections 2.2.1, 3.8-3.11),
Subscription Identifiers on separate copies (3.3.4) and shared subscriptions (4.8.2), with raw
packets over real sockets."""

from __future__ import annotations

import asyncio

import pytest

from mqttv5.protocol.packets import (
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
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient
from tests.conformance.test_server_publish import receive_acking

_RC = ReasonCode


def _expiry(seconds: int) -> Properties:
    return Properties(session_expiry_interval=seconds)


async def _suback(
    client: RawClient, packet_id: int, *subs: Subscription, sid: int | None = None
) -> Suback:
    props = Properties(subscription_identifiers=[sid] if sid is not None else [])
    client.send(Subscribe(packet_id, list(subs), props))
    suback = await client.expect(Suback)
    assert suback.packet_id == packet_id, suback
    return suback


async def _unsuback(client: RawClient, packet_id: int, *filters: str) -> Unsuback:
    client.send(Unsubscribe(packet_id, list(filters)))
    unsuback = await client.expect(Unsuback)
    assert unsuback.packet_id == packet_id, unsuback
    return unsuback


class TestSuback:
    @pytest.mark.spec("MQTT-2.2.1-6", "MQTT-3.8.4-1", "MQTT-3.8.4-2", "MQTT-3.10.4-4")
    def test_every_subscribe_and_unsubscribe_is_answered_with_its_packet_id(self) -> None:
        async def main() -> None:
            async with started_broker(wildcard_subscriptions=False) as b:
                c = await RawClient.connect(b.ports[0], "ids")
                for pid in (1, 2, 0x1234, 65535):
                    await _suback(c, pid, Subscription(f"ids/{pid}", 1))
                # refused subscriptions are answered too
                suback = await _suback(c, 300, Subscription("ids/#"), Subscription("a/#/b"))
                assert suback.reason_codes == [
                    _RC.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
                    _RC.TOPIC_FILTER_INVALID,
                ]
                for pid in (1, 0x1234, 65535):
                    unsuback = await _unsuback(c, pid, f"ids/{pid}")
                    assert unsuback.reason_codes == [_RC.SUCCESS]
                # so is an UNSUBSCRIBE that removes nothing
                unsuback = await _unsuback(c, 77, "never/subscribed")
                assert unsuback.reason_codes == [_RC.NO_SUBSCRIPTION_EXISTED]

        run(main())

    @pytest.mark.spec("MQTT-3.8.4-6", "MQTT-3.8.4-7")
    def test_one_reason_code_per_filter_granted_qos_or_failure(self) -> None:
        subs = [
            Subscription("g/0", 0),
            Subscription("g/1", 1),
            Subscription("g/2", 2),
            Subscription("g/#/bad", 1),
            Subscription("$share/grp/g/s", 2),
            Subscription("g/+", 2),
        ]

        async def main() -> None:
            async with started_broker(maximum_qos=1, shared_subscriptions=False) as b:
                c = await RawClient.connect(b.ports[0], "codes")
                suback = await _suback(c, 1, *subs)
                assert len(suback.reason_codes) == len(subs)
                assert suback.reason_codes == [
                    _RC.GRANTED_QOS_0,
                    _RC.GRANTED_QOS_1,
                    _RC.GRANTED_QOS_1,  # the maximum granted, below the 2 requested
                    _RC.TOPIC_FILTER_INVALID,
                    _RC.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                    _RC.GRANTED_QOS_1,
                ]
                for sub, code in zip(subs, suback.reason_codes, strict=True):
                    assert code >= 0x80 or code <= sub.qos

        run(main())

    @pytest.mark.spec("MQTT-3.8.4-8")
    def test_delivery_qos_is_the_lower_of_published_and_granted(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                subs = {}
                for granted in (0, 1, 2):
                    subs[granted] = await RawClient.connect(port, f"sub{granted}")
                    await subs[granted].subscribe("min/#", qos=granted)
                pub = await RawClient.connect(port, "pub")
                for published in (0, 1, 2):
                    await pub.publish(f"min/{published}", b"x", qos=published, packet_id=9)
                for granted, sub in subs.items():
                    got = await receive_acking(sub, 3)
                    assert [(p.topic, p.qos) for p in got] == [
                        (f"min/{published}", min(published, granted)) for published in (0, 1, 2)
                    ]

        run(main())


class TestReplacingSubscriptions:
    @pytest.mark.spec("MQTT-3.8.4-3")
    def test_identical_filter_replaces_the_subscription(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "rep")
                await _suback(c, 1, Subscription("rep/#", 0), sid=1)
                await _suback(c, 2, Subscription("rep/#", 2), sid=2)
                pub = await RawClient.connect(b.ports[0], "pub")
                await pub.publish("rep/a", b"x", qos=2)
                got = await receive_acking(c, 1)
                # one subscription, with the new options: QoS 2 and the new identifier
                assert [(p.qos, p.subscription_identifiers) for p in got] == [(2, [2])]
                await c.nothing()

        run(main())

    @pytest.mark.spec("MQTT-3.8.4-4")
    def test_replacement_resends_retained_and_loses_nothing(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                pub = await RawClient.connect(port, "pub")
                await pub.publish("rep/kept", b"retained", qos=1, retain=True)
                c = await RawClient.connect(port, "rep", properties=Properties(receive_maximum=1))
                await c.subscribe("rep/#", qos=1)
                assert [p.payload for p in await receive_acking(c, 1)] == [b"retained"]
                # messages in flight and queued (Receive Maximum 1) while the filter is replaced
                for n in (1, 2, 3):
                    await pub.publish("rep/live", b"%d" % n, qos=1, packet_id=n)
                first = await c.expect(Publish)
                assert first.payload == b"1"
                await _suback(c, 9, Subscription("rep/#", 1, retain_handling=0))
                assert first.packet_id is not None
                c.send(PubAck(first.packet_id))
                got = await receive_acking(c, 3)
                assert sorted(p.payload for p in got) == [b"2", b"3", b"retained"]
                retained = [p for p in got if p.payload == b"retained"]
                assert retained[0].retain is True
                await c.nothing()

        run(main())

    @pytest.mark.spec("MQTT-3.8.4-5", "MQTT-3.8.4-6")
    def test_multi_filter_subscribe_is_handled_as_a_sequence(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "multi")
                suback = await _suback(
                    c,
                    4,
                    Subscription("m/a", 0),
                    Subscription("m/bad/#/x", 1),
                    Subscription("m/b", 1),
                    Subscription("m/a", 2),  # replaces the first, as a later SUBSCRIBE would
                )
                assert suback.reason_codes == [
                    _RC.GRANTED_QOS_0,
                    _RC.TOPIC_FILTER_INVALID,
                    _RC.GRANTED_QOS_1,
                    _RC.GRANTED_QOS_2,
                ]
                pub = await RawClient.connect(b.ports[0], "pub")
                await pub.publish("m/a", b"a", qos=2)
                await pub.publish("m/b", b"b", qos=2, packet_id=2)
                got = await receive_acking(c, 2)
                assert [(p.topic, p.qos) for p in got] == [("m/a", 2), ("m/b", 1)]
                await c.nothing()

        run(main())


class TestUnsubscribe:
    @pytest.mark.spec("MQTT-3.10.4-1")
    def test_filters_are_compared_literally(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "lit")
                for n, filt in enumerate(("u/+", "u/#", "u/a"), start=1):
                    await _suback(c, n, Subscription(filt, 1), sid=n)
                unsuback = await _unsuback(c, 10, "u/a", "u/+/", "u/b", "U/+", "#")
                # "u/+" does not remove "u/a" (nor does "#" anything): only equal strings count
                assert unsuback.reason_codes == [_RC.SUCCESS] + [_RC.NO_SUBSCRIPTION_EXISTED] * 4
                pub = await RawClient.connect(b.ports[0], "pub")
                await pub.publish("u/a", b"x", qos=1)
                got = await receive_acking(c, 1)
                assert sorted(got[0].subscription_identifiers) == [1, 2]
                unsuback = await _unsuback(c, 11, "u/+")
                assert unsuback.reason_codes == [_RC.SUCCESS]
                await pub.publish("u/a", b"y", qos=1, packet_id=2)
                got = await receive_acking(c, 1)
                assert got[0].subscription_identifiers == [2]

        run(main())

    @pytest.mark.spec("MQTT-3.10.4-2")
    def test_no_new_messages_after_unsubscribe(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                c = await RawClient.connect(port, "gone", properties=_expiry(60))
                await c.subscribe("stop/#", qos=1)
                await _unsuback(c, 2, "stop/#")
                pub = await RawClient.connect(port, "pub")
                ack = await pub.publish("stop/1", b"x", qos=1)
                assert isinstance(ack, PubAck)
                assert ack.reason_code == _RC.NO_MATCHING_SUBSCRIBERS
                await c.nothing()
                # nor queued for later
                await c.disconnect()
                await pub.publish("stop/2", b"x", qos=1, packet_id=2)
                c = await RawClient.connect(port, "gone", clean_start=False)
                await c.nothing()

        run(main())

    @pytest.mark.spec("MQTT-3.10.4-3")
    def test_deliveries_already_started_are_completed(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "finishing")
                await c.subscribe("fin/#", qos=2)
                pub = await RawClient.connect(b.ports[0], "pub")
                await pub.publish("fin/1", b"q1", qos=1, packet_id=1)
                await pub.publish("fin/2", b"q2", qos=2, packet_id=2)
                q1 = await c.expect(Publish)
                q2 = await c.expect(Publish)
                assert (q1.qos, q2.qos) == (1, 2)
                assert q1.packet_id is not None and q2.packet_id is not None
                await _unsuback(c, 3, "fin/#")
                c.send(PubRec(q2.packet_id))
                rel = await c.expect(PubRel)
                assert (rel.packet_id, rel.reason_code) == (q2.packet_id, _RC.SUCCESS)
                c.send(PubComp(q2.packet_id))
                c.send(PubAck(q1.packet_id))
                await c.nothing()
                session = b.sessions.get("finishing")
                assert session is not None and not session.inflight.out

        run(main())

    @pytest.mark.spec("MQTT-3.10.4-6")
    def test_multi_filter_unsubscribe_is_handled_as_a_sequence(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "multi")
                await _suback(c, 1, Subscription("x/1", 1), Subscription("x/2", 1))
                unsuback = await _unsuback(c, 2, "x/1", "x/3", "x/2", "x/1")
                assert unsuback.reason_codes == [
                    _RC.SUCCESS,
                    _RC.NO_SUBSCRIPTION_EXISTED,
                    _RC.SUCCESS,
                    _RC.NO_SUBSCRIPTION_EXISTED,  # already removed by the first "x/1"
                ]
                pub = await RawClient.connect(b.ports[0], "pub")
                ack = await pub.publish("x/1", b"x", qos=1)
                assert isinstance(ack, PubAck)
                assert ack.reason_code == _RC.NO_MATCHING_SUBSCRIBERS

        run(main())


class TestSeparateCopies:
    @pytest.mark.spec("MQTT-3.3.4-5")
    def test_each_copy_carries_its_own_subscription_identifier(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "both")
                # a shared and a non-shared subscription of one session: two copies
                await _suback(c, 1, Subscription("$share/g/sid/#", 1), sid=5)
                await _suback(c, 2, Subscription("sid/+", 1), sid=7)
                pub = await RawClient.connect(b.ports[0], "pub")
                await pub.publish("sid/1", b"x", qos=1)
                got = await receive_acking(c, 2)
                assert sorted(p.subscription_identifiers[0] for p in got) == [5, 7]
                assert all(len(p.subscription_identifiers) == 1 for p in got), got

        run(main())


class TestSharedSubscriptions:
    @pytest.mark.spec("MQTT-4.8.2-4")
    def test_interrupted_qos2_delivery_is_completed_to_the_same_member(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                m1 = await RawClient.connect(port, "m1", properties=_expiry(60))
                await m1.subscribe("$share/g/sh/#", qos=2)
                pub = await RawClient.connect(port, "pub")
                await pub.publish("sh/1", b"mine", qos=2)
                got = await m1.expect(Publish)
                m1.abort()  # before PUBREC
                m2 = await RawClient.connect(port, "m2")
                await m2.subscribe("$share/g/sh/#", qos=2)
                await asyncio.sleep(0.2)
                m1 = await RawClient.connect(port, "m1", clean_start=False)
                again = await m1.expect(Publish)
                assert (again.packet_id, again.payload, again.dup) == (got.packet_id, b"mine", True)
                assert again.packet_id is not None
                m1.send(PubRec(again.packet_id))
                assert (await m1.expect(PubRel)).packet_id == again.packet_id
                m1.send(PubComp(again.packet_id))
                await m2.nothing()

        run(main())

    @pytest.mark.spec("MQTT-4.8.2-5")
    def test_qos2_message_of_an_ended_session_goes_to_no_other_member(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                m1 = await RawClient.connect(port, "m1", properties=_expiry(1))
                await m1.subscribe("$share/g/sh/#", qos=2)
                pub = await RawClient.connect(port, "pub")
                await pub.publish("sh/1", b"mine", qos=2)
                await m1.expect(Publish)
                m2 = await RawClient.connect(port, "m2")
                await m2.subscribe("$share/g/sh/#", qos=2)
                m1.abort()  # before PUBREC; m1's session ends one second later
                await asyncio.sleep(1.5)
                assert b.sessions.get("m1") is None
                await m2.nothing()

        run(main())

    @pytest.mark.spec("MQTT-4.8.2-6")
    @pytest.mark.parametrize("qos", [1, 2])
    def test_negative_acknowledgement_is_not_offered_to_another_member(self, qos: int) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                m1 = await RawClient.connect(port, "m1", properties=_expiry(60))
                await m1.subscribe("$share/g/sh/#", qos=qos)
                pub = await RawClient.connect(port, "pub")
                await pub.publish("sh/1", b"refused", qos=qos)
                got = await m1.expect(Publish)
                assert got.packet_id is not None
                m2 = await RawClient.connect(port, "m2")
                await m2.subscribe("$share/g/sh/#", qos=qos)
                ack = PubAck if qos == 1 else PubRec
                m1.send(ack(got.packet_id, _RC.UNSPECIFIED_ERROR))
                await m2.nothing()
                await m1.nothing()
                await m1.disconnect()
                m1 = await RawClient.connect(port, "m1", clean_start=False)
                await m1.nothing()
                await m2.nothing()

        run(main())
