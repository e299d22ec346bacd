"""MqttClient against a real Mosquitto: connecting, QoS 0/1/2 both ways, properties, subscription
options and identifiers, callbacks and iterator, request/response, server limits."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from mqttv5 import Properties, ReasonCode
from mqttv5.client import (
    ConnectOptions,
    Message,
    MqttClient,
    NotConnected,
    Overflow,
    RefusedByServer,
    Subscription,
    Will,
)
from mqttv5.protocol.errors import InvalidState, LocalProtocolError
from mqttv5.transport.base import TransportError

from .mosquitto import Mosquitto, run, scaled

_ids = itertools.count()


def uid(prefix: str = "t") -> str:
    return f"{prefix}-{next(_ids)}-{id(_ids) % 9973}"


async def take(client: MqttClient, n: int = 1, timeout: float = 5.0) -> list[Message]:
    out: list[Message] = []
    stream = client.messages()
    async with asyncio.timeout(scaled(timeout)):
        while len(out) < n:
            out.append(await anext(stream))
    return out


async def nothing_more(client: MqttClient, wait: float = 0.3) -> None:
    await asyncio.sleep(scaled(wait))
    assert client.pending_messages == 0


class TestConnect:
    def test_connect_publish_disconnect(self, broker: Mosquitto) -> None:
        async def main() -> None:
            client = MqttClient(uid("c"))
            event = await client.connect(broker.url)
            assert client.is_connected and not event.session_present
            assert event.properties.receive_maximum == 20  # Mosquitto's default
            assert await client.publish(uid("topic"), b"x") == ReasonCode.SUCCESS
            await client.disconnect()
            assert not client.is_connected
            with pytest.raises(NotConnected):
                await client.publish("a", b"x")

        run(main())

    def test_async_with_and_assigned_client_id(self, broker: Mosquitto) -> None:
        async def main() -> None:
            async with MqttClient("", url=broker.url) as client:
                assert client.client_id.startswith("auto-")  # Mosquitto's assigned identifier

        run(main())

    def test_connect_twice_is_invalid(self, broker: Mosquitto) -> None:
        async def main() -> None:
            async with MqttClient(uid(), url=broker.url) as client:
                with pytest.raises(InvalidState):
                    await client.connect()

        run(main())

    def test_refused_not_authorized(self, mosquitto_factory) -> None:  # type: ignore[no-untyped-def]
        mosq = mosquitto_factory(extra="allow_anonymous false")

        async def main() -> None:
            client = MqttClient(uid())
            with pytest.raises(RefusedByServer) as info:
                await client.connect(mosq.url)
            assert info.value.reason_code == ReasonCode.NOT_AUTHORIZED
            assert str(info.value).startswith("Connection refused: not authorized (0x87)")
            assert not client.is_connected

        run(main())

    def test_nobody_listening(self) -> None:
        from .mosquitto import free_port

        async def main() -> None:
            with pytest.raises(TransportError, match="cannot connect"):
                await MqttClient(uid()).connect(f"mqtt://127.0.0.1:{free_port()}")

        run(main())

    def test_unknown_auth_method_refused(self, broker: Mosquitto) -> None:
        class Dummy:
            async def start(self) -> tuple[str, bytes | None]:
                return "X-UNKNOWN", b"hello"

            async def step(self, code: ReasonCode, data: bytes | None) -> bytes | None:
                return None

        async def main() -> None:
            client = MqttClient(uid())
            with pytest.raises(RefusedByServer) as info:
                await client.connect(broker.url, ConnectOptions(authenticator=Dummy()))
            assert info.value.reason_code == ReasonCode.BAD_AUTHENTICATION_METHOD

        run(main())

    def test_mqtt311(self, broker: Mosquitto) -> None:
        async def main() -> None:
            opts = ConnectOptions(version=4)
            async with MqttClient(uid(), url=broker.url, options=opts) as client:
                topic = uid("v311")
                assert await client.subscribe(topic, 2) == [ReasonCode.GRANTED_QOS_2]
                for qos in (0, 1, 2):
                    await client.publish(topic, f"m{qos}", qos)
                got = await take(client, 3)
                assert [m.payload for m in got] == [b"m0", b"m1", b"m2"]
                assert await client.unsubscribe(topic) == [ReasonCode.SUCCESS]

        run(main())


class TestPublishSubscribe:
    @pytest.mark.spec("MQTT-4.3.2-1", "MQTT-4.3.3-1", "MQTT-3.3.4-1")
    def test_qos_levels_both_ways_with_properties(self, broker: Mosquitto) -> None:
        async def main() -> None:
            topic = uid("q")
            async with (
                MqttClient(uid(), url=broker.url) as sub,
                MqttClient(uid(), url=broker.url) as pub,
            ):
                assert await sub.subscribe(topic, 2) == [ReasonCode.GRANTED_QOS_2]
                props = Properties(
                    user_properties=[("b", "2"), ("a", "1"), ("b", "3")],
                    content_type="text/plain",
                    response_topic="reply/here",
                    correlation_data=b"\x00\x01",
                    payload_format_indicator=1,
                    message_expiry_interval=3600,
                )
                for qos in (0, 1, 2):
                    rc = await pub.publish(topic, f"hello {qos}", qos, properties=props)
                    assert rc in (ReasonCode.SUCCESS, ReasonCode.NO_MATCHING_SUBSCRIBERS)
                got = await take(sub, 3)
                assert [m.qos for m in got] == [0, 1, 2]
                for m in got:
                    assert m.topic == topic and not m.retain
                    assert m.properties.user_properties == [("b", "2"), ("a", "1"), ("b", "3")]
                    assert m.properties.content_type == "text/plain"
                    assert m.response_topic == "reply/here"
                    assert m.correlation_data == b"\x00\x01"
                    assert m.properties.payload_format_indicator == 1
                    assert 3590 <= (m.properties.message_expiry_interval or 0) <= 3600
                    assert m.acked  # taken from the iterator: acknowledged
                async with asyncio.timeout(scaled(2)):
                    while pub.inflight.out or sub.inflight.in_qos2:  # PUBREL / PUBCOMP
                        await asyncio.sleep(0.01)
                assert pub.stats.messages_sent == 3 and sub.stats.messages_received == 3

        run(main())

    def test_many_pipelined_qos1_and_qos2(self, broker: Mosquitto) -> None:
        async def main() -> None:
            topic = uid("pipe")
            async with (
                MqttClient(uid(), url=broker.url) as sub,
                MqttClient(uid(), url=broker.url) as pub,
            ):
                await sub.subscribe(topic, 2)
                codes = await asyncio.gather(
                    *(pub.publish(topic, str(i), 1 + i % 2) for i in range(300))
                )
                assert all(c == ReasonCode.SUCCESS for c in codes)
                got = await take(sub, 300)
                assert sorted(int(m.payload) for m in got) == list(range(300))
                await nothing_more(sub)

        run(main())

    def test_payload_types_and_empty_payload(self, broker: Mosquitto) -> None:
        async def main() -> None:
            topic = uid("pl")
            async with MqttClient(uid(), url=broker.url) as c:
                await c.subscribe(topic)
                await c.publish(topic, "text é")
                await c.publish(topic, bytearray(b"\x00\xff"))
                await c.publish(topic, memoryview(b"mv"))
                await c.publish(topic)
                got = await take(c, 4)
                assert [m.payload for m in got] == ["text é".encode(), b"\x00\xff", b"mv", b""]

        run(main())

    def test_invalid_topics_raise(self, broker: Mosquitto) -> None:
        async def main() -> None:
            async with MqttClient(uid(), url=broker.url) as c:
                for bad in ("", "a/+", "a/#"):
                    with pytest.raises(LocalProtocolError):
                        await c.publish(bad, b"x")
                with pytest.raises(LocalProtocolError):
                    await c.subscribe("a/#/b")
                with pytest.raises(ValueError, match="QoS"):
                    await c.publish("a", b"", qos=3)

        run(main())

    def test_callbacks_sync_and_async_with_subscription_identifiers(
        self, broker: Mosquitto
    ) -> None:
        async def main() -> None:
            base = uid("cb")
            seen_sync: list[Message] = []
            seen_async: list[Message] = []
            done = asyncio.Event()

            def on_sync(m: Message) -> None:
                seen_sync.append(m)

            async def on_async(m: Message) -> None:
                await asyncio.sleep(0)
                seen_async.append(m)
                if len(seen_async) == 2:
                    done.set()

            async with MqttClient(uid(), url=broker.url) as c:
                await c.subscribe(f"{base}/a/+", 1, callback=on_sync)
                await c.subscribe(f"{base}/b/#", 2, callback=on_async)
                await c.subscribe(f"{base}/c", 0, subscription_identifier=77)
                await c.publish(f"{base}/a/1", b"1", 1)
                await c.publish(f"{base}/b/x/y", b"2", 2)
                await c.publish(f"{base}/b", b"3", 1)
                await c.publish(f"{base}/c", b"4")
                async with asyncio.timeout(scaled(5)):
                    await done.wait()
                (plain,) = await take(c, 1)
                assert [m.payload for m in seen_sync] == [b"1"]
                assert [m.payload for m in seen_async] == [b"2", b"3"]
                assert plain.payload == b"4" and plain.subscription_identifiers == [77]
                assert seen_sync[0].subscription_identifiers  # assigned by the client
                assert all(m.acked for m in seen_sync + seen_async)

        run(main())

    def test_no_local_retain_as_published_retain_handling(self, broker: Mosquitto) -> None:
        async def main() -> None:
            base = uid("opts")
            async with (
                MqttClient(uid(), url=broker.url) as c,
                MqttClient(uid(), url=broker.url) as other,
            ):
                await c.subscribe(f"{base}/nl", 1, no_local=True)
                await c.publish(f"{base}/nl", b"mine", 1)
                await other.publish(f"{base}/nl", b"theirs", 1)
                (m,) = await take(c, 1)
                assert m.payload == b"theirs"

                await other.publish(f"{base}/r", b"kept", 1, retain=True)
                await c.subscribe(f"{base}/r", 1, retain_handling=2)
                await c.subscribe(f"{base}/r2/#", 1, retain_as_published=True)
                await other.publish(f"{base}/r2/x", b"live", 1, retain=True)
                (m,) = await take(c, 1)
                assert m.topic == f"{base}/r2/x" and m.retain  # retain as published
                await c.subscribe(f"{base}/r", 1, retain_handling=1)  # existing: not sent
                await nothing_more(c)
                await c.unsubscribe(f"{base}/r")
                await c.subscribe(f"{base}/r", 1, retain_handling=0)
                (m,) = await take(c, 1)
                assert m.payload == b"kept" and m.retain
                await other.publish(f"{base}/r", b"", 1, retain=True)  # clear the retained

        run(main())

    def test_subscribe_list_and_unsubscribe(self, broker: Mosquitto) -> None:
        async def main() -> None:
            base = uid("list")
            async with MqttClient(uid(), url=broker.url) as c:
                codes = await c.subscribe(
                    [f"{base}/a", (f"{base}/b", 1), Subscription(f"{base}/c", 2)]
                )
                assert codes == [0, 1, 2]
                codes = await c.unsubscribe([f"{base}/a", f"{base}/zzz"])
                assert codes == [ReasonCode.SUCCESS, ReasonCode.NO_SUBSCRIPTION_EXISTED]
                await c.publish(f"{base}/a", b"gone")
                await c.publish(f"{base}/b", b"here")
                (m,) = await take(c, 1)
                assert m.payload == b"here"

        run(main())

    def test_request_response(self, broker: Mosquitto) -> None:
        async def main() -> None:
            service = uid("svc")
            async with (
                MqttClient(uid("server"), url=broker.url) as server,
                MqttClient(uid("caller"), url=broker.url) as caller,
            ):

                async def handle(m: Message) -> None:
                    await server.respond(m, b"echo:" + m.payload)

                await server.subscribe(service, 1, callback=handle)
                answers = await asyncio.gather(
                    *(caller.request(service, str(i), timeout=scaled(5)) for i in range(5))
                )
                assert [a.payload for a in answers] == [f"echo:{i}".encode() for i in range(5)]
                with pytest.raises(TimeoutError):
                    await caller.request(uid("nobody"), b"?", timeout=0.2)

        run(main())


class TestServerLimits:
    @pytest.mark.spec("MQTT-3.2.2-11")
    def test_maximum_qos_raises(self, mosquitto_factory) -> None:  # type: ignore[no-untyped-def]
        mosq = mosquitto_factory(extra="max_qos 1")

        async def main() -> None:
            async with MqttClient(uid(), url=mosq.url) as c:
                assert c.server_properties.maximum_qos == 1
                with pytest.raises(LocalProtocolError) as info:
                    await c.publish("a", b"x", 2)
                assert info.value.reason_code == ReasonCode.QOS_NOT_SUPPORTED
                assert await c.publish("a", b"x", 1) in (0, 0x10)

        run(main())

    @pytest.mark.spec("MQTT-3.2.2-14")
    def test_retain_not_available(self, mosquitto_factory) -> None:  # type: ignore[no-untyped-def]
        mosq = mosquitto_factory(extra="retain_available false")

        async def main() -> None:
            async with MqttClient(uid(), url=mosq.url) as c:
                with pytest.raises(LocalProtocolError) as info:
                    await c.publish("a", b"x", retain=True)
                assert info.value.reason_code == ReasonCode.RETAIN_NOT_SUPPORTED
                assert c.is_connected

        run(main())

    @pytest.mark.spec("MQTT-3.2.2-15")
    def test_maximum_packet_size(self, mosquitto_factory) -> None:  # type: ignore[no-untyped-def]
        mosq = mosquitto_factory(extra="max_packet_size 500")

        async def main() -> None:
            async with MqttClient(uid(), url=mosq.url) as c:
                assert c.server_properties.maximum_packet_size == 500
                with pytest.raises(LocalProtocolError, match="maximum packet size") as info:
                    await c.publish("a", b"x" * 600, 1)
                assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE
                assert await c.publish("a", b"x" * 100, 1) in (0, 0x10)
                assert c.is_connected

        run(main())

    @pytest.mark.spec("MQTT-3.3.4-7")
    def test_receive_maximum_waits(self, mosquitto_factory) -> None:  # type: ignore[no-untyped-def]
        mosq = mosquitto_factory(extra="max_inflight_messages 3")

        async def main() -> None:
            async with MqttClient(uid(), url=mosq.url) as c:
                assert c.connection is not None and c.connection.peer_receive_maximum == 3
                peak = 0

                async def watch() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, len(c.inflight))
                        await asyncio.sleep(0)

                watcher = asyncio.create_task(watch())
                codes = await asyncio.gather(*(c.publish("rm", b"x", 1 + i % 2) for i in range(60)))
                watcher.cancel()
                assert all(code in (0, 0x10) for code in codes)
                assert 1 <= peak <= 3

        run(main())

    @pytest.mark.spec("MQTT-3.2.2-17", "MQTT-3.3.2-9", "MQTT-3.3.2-7")
    def test_outbound_topic_aliases(self, broker: Mosquitto) -> None:
        async def main() -> None:
            base = uid("alias")
            async with (
                MqttClient(uid(), url=broker.url) as sub,
                MqttClient(uid(), url=broker.url, topic_alias=True) as pub,
            ):
                await sub.subscribe(f"{base}/#", 1)
                maximum = pub.server_properties.topic_alias_maximum or 0
                assert maximum >= 1
                topics = [f"{base}/{i}" for i in range(maximum + 3)]
                for topic in topics * 2:
                    await pub.publish(topic, topic, 1)
                got = await take(sub, len(topics) * 2)
                assert [m.topic for m in got] == topics * 2
                assert all(m.payload == m.topic.encode() for m in got)
                assert pub.connection is not None
                assert pub.connection.outbound_alias(topics[0]) == (1, True)
                assert pub.connection.outbound_alias(topics[-1]) == (None, False)

        run(main())


class TestReceiving:
    def test_qos0_overflow_drops_oldest(self, broker: Mosquitto) -> None:
        async def main() -> None:
            topic = uid("ovf")
            async with MqttClient(uid(), url=broker.url, queue_size=5) as c:
                await c.subscribe(topic)
                for i in range(20):
                    await c.publish(topic, str(i))
                await c.publish(topic, b"end", 1)  # QoS 1 is never dropped
                async with asyncio.timeout(scaled(5)):
                    while c.stats.messages_received < 20:
                        await asyncio.sleep(0.01)
                await c.publish(topic + "/sync", b"")
                got = await take(c, 5)
                assert c.stats.dropped_qos0 >= 15
                assert got[-1].payload in (b"end", b"19")

        run(main())

    def test_overflow_drop_newest(self, broker: Mosquitto) -> None:
        async def main() -> None:
            topic = uid("ovf")
            client = MqttClient(uid(), url=broker.url, queue_size=3, overflow=Overflow.DROP_NEWEST)
            async with client as c:
                await c.subscribe(topic)
                for i in range(10):
                    await c.publish(topic, str(i))
                async with asyncio.timeout(scaled(5)):
                    while c.stats.messages_received < 10:
                        await asyncio.sleep(0.01)
                got = await take(c, 3)
                assert [m.payload for m in got] == [b"0", b"1", b"2"]
                assert c.stats.dropped_qos0 == 7

        run(main())

    def test_manual_ack_backpressure(self, broker: Mosquitto) -> None:
        async def main() -> None:
            topic = uid("man")
            opts = ConnectOptions(receive_maximum=2)
            async with (
                MqttClient(uid(), url=broker.url, options=opts, manual_ack=True) as sub,
                MqttClient(uid(), url=broker.url) as pub,
            ):
                await sub.subscribe(topic, 1)
                # 4 messages only: Mosquitto 2.0.11 sends one message more than our Receive
                # Maximum once queued messages are released (our Connection then closes with
                # 0x93, as [MQTT-3.3.4-9] asks), so never let it have more than 2 queued.
                for i in range(4):
                    await pub.publish(topic, str(i), 1)
                first = await take(sub, 2)
                await asyncio.sleep(scaled(0.3))
                # The server respects our Receive Maximum: nothing more until we acknowledge.
                assert sub.pending_messages == 0 and not any(m.acked for m in first)
                await first[0].ack()
                sub.ack(first[1])
                rest = await take(sub, 2)
                for m in rest:
                    await m.ack()
                    await m.ack()  # idempotent
                assert [m.payload for m in first + rest] == [str(i).encode() for i in range(4)]
                assert sub.is_connected

        run(main())

    def test_iteration_ends_after_disconnect(self, broker: Mosquitto) -> None:
        async def main() -> None:
            topic = uid("end")
            c = MqttClient(uid(), url=broker.url)
            await c.connect()
            await c.subscribe(topic)
            await c.publish(topic, b"last", 1)
            await asyncio.sleep(scaled(0.2))

            async def consume() -> list[bytes]:
                return [m.payload async for m in c.messages()]

            task = asyncio.create_task(consume())
            await asyncio.sleep(scaled(0.1))
            await c.disconnect()
            assert await task == [b"last"]

        run(main())


class TestWill:
    def test_will_on_abort_and_not_on_normal_disconnect(self, broker: Mosquitto) -> None:
        async def main() -> None:
            topic = uid("will")
            will = Will(topic, b"gone", 1, properties=Properties(user_properties=[("w", "1")]))
            async with MqttClient(uid(), url=broker.url) as watcher:
                await watcher.subscribe(topic, 1)
                polite = MqttClient(uid(), url=broker.url, options=ConnectOptions(will=will))
                await polite.connect()
                await polite.disconnect()
                rude = MqttClient(uid(), url=broker.url, options=ConnectOptions(will=will))
                await rude.connect()
                assert rude._stream is not None
                rude._stream.abort()  # the network connection dies
                (m,) = await take(watcher, 1)
                assert m.payload == b"gone" and m.properties.user_properties == [("w", "1")]
                explicit = MqttClient(uid(), url=broker.url, options=ConnectOptions(will=will))
                await explicit.connect()
                await explicit.disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)
                (m,) = await take(watcher, 1)
                assert m.payload == b"gone"
                await rude.disconnect()

        run(main())
