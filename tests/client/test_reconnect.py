"""Sessions, reconnection and connection events against a real Mosquitto: restarts with
persistence, aborted sockets, session takeover, offline queueing, explicit disconnect."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

import pytest

from mqttv5 import ConnectionClosed, ReasonCode
from mqttv5.client import (
    ConnectedEvent,
    ConnectOptions,
    DisconnectedEvent,
    MqttClient,
    NotConnected,
    ReconnectPolicy,
)

from .mosquitto import Mosquitto, run, scaled
from .test_client import take, uid

FAST = ReconnectPolicy(enabled=True, initial_delay=0.05, max_delay=0.3, jitter=0.2)
PERSISTENT = ConnectOptions(clean_start=False, session_expiry_interval=300)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(scaled(timeout)):
        while not predicate():
            await asyncio.sleep(0.01)


class TestSession:
    @pytest.mark.spec("MQTT-3.1.2-23", "MQTT-3.1.2-4")
    def test_session_resumed_with_queued_messages(self, broker: Mosquitto) -> None:
        async def main() -> None:
            topic, cid = uid("sess"), uid("sess-client")
            first = MqttClient(cid, url=broker.url, options=PERSISTENT)
            event = await first.connect()
            assert not event.session_present
            await first.subscribe(topic, 2)
            await first.disconnect()
            async with MqttClient(uid(), url=broker.url) as pub:
                for qos in (1, 2):
                    await pub.publish(topic, f"offline {qos}", qos)
            again = MqttClient(cid, url=broker.url, options=PERSISTENT)
            event = await again.connect()
            assert event.session_present
            got = await take(again, 2)
            assert sorted(m.payload for m in got) == [b"offline 1", b"offline 2"]
            await again.disconnect()
            fresh = MqttClient(cid, url=broker.url)  # clean start: the session is gone
            assert not (await fresh.connect()).session_present
            await fresh.disconnect()

        run(main())

    def test_session_taken_over_is_reported(self, broker: Mosquitto) -> None:
        # Mosquitto 2.0.11 closes the old connection without DISCONNECT 0x8E Session taken
        # over, so the event has no reason code (a server's DISCONNECT is tested in
        # test_simulated_network.py).
        async def main() -> None:
            cid = uid("takeover")
            events: list[DisconnectedEvent] = []
            first = MqttClient(cid, url=broker.url, on_disconnect=events.append)
            await first.connect()
            async with MqttClient(cid, url=broker.url):
                await wait_for(lambda: bool(events))
                assert events[0].reason_code in (None, ReasonCode.SESSION_TAKEN_OVER)
                assert not events[0].will_reconnect and not events[0].requested
                assert isinstance(events[0].exception, ConnectionClosed)
                with pytest.raises(ConnectionClosed):
                    await anext(first.messages())
                with pytest.raises(NotConnected):
                    await first.publish("x", b"")

        run(main())


async def publish_all(
    pub: MqttClient, topic: str, count: int, qos: int, during: Callable[[], object]
) -> None:
    """Publish ``count`` messages with 8 concurrent publishers; call ``during`` midway."""
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:
            if i == count // 3:
                result = during()
                if asyncio.iscoroutine(result):
                    await result
            assert await pub.publish(topic, str(i), qos) in (0, 0x10)

    await asyncio.gather(*(worker() for _ in range(8)))


async def collect(sub: MqttClient, count: int, seen: collections.Counter[int]) -> None:
    async for m in sub.messages():
        seen[int(m.payload)] += 1
        if len(seen) >= count:
            return


class TestKeepAlive:
    @pytest.mark.spec("MQTT-3.1.2-21")
    def test_server_keep_alive_adopted(self, mosquitto_factory) -> None:  # type: ignore[no-untyped-def]
        mosq: Mosquitto = mosquitto_factory(extra="max_keepalive 10")

        async def main() -> None:
            async with MqttClient(uid(), url=mosq.url, options=ConnectOptions(keep_alive=60)) as c:
                assert c.server_properties.server_keep_alive == 10
                assert c.connection is not None and c.connection.keep_alive == 10

        run(main())


class TestReconnect:
    @pytest.mark.spec("MQTT-4.4.0-1", "MQTT-3.3.1-1", "MQTT-4.3.3-10", "MQTT-3.2.2-5")
    @pytest.mark.parametrize("qos", [1, 2])
    def test_mosquitto_restart_midstream(self, mosquitto_factory, qos: int) -> None:  # type: ignore[no-untyped-def]
        mosq: Mosquitto = mosquitto_factory(persistence=True)

        async def main() -> None:
            topic, count = uid("restart"), 300
            connects: list[ConnectedEvent] = []
            sub = MqttClient(uid("sub"), url=mosq.url, options=PERSISTENT, reconnect=FAST)
            pub = MqttClient(
                uid("pub"), url=mosq.url, options=PERSISTENT, reconnect=FAST,
                on_connect=connects.append,
            )  # fmt: skip
            await sub.connect()
            await sub.subscribe(topic, qos)
            await pub.connect()
            seen: collections.Counter[int] = collections.Counter()
            consumer = asyncio.create_task(collect(sub, count, seen))
            await publish_all(pub, topic, count, qos, lambda: asyncio.to_thread(mosq.restart))
            # every publish() returned: acknowledged by the broker, so none may be lost
            async with asyncio.timeout(scaled(15)):
                await consumer
            assert set(seen) == set(range(count))
            if qos == 2:
                assert max(seen.values()) == 1  # exactly once to the application
            assert pub.stats.connects >= 2 and sub.stats.connects >= 2
            assert any(e.reconnect and e.session_present for e in connects)
            await pub.disconnect()
            await sub.disconnect()

        run(main(), timeout=40)

    @pytest.mark.parametrize("qos", [1, 2])
    def test_aborted_sockets_midstream(self, broker: Mosquitto, qos: int) -> None:
        async def main() -> None:
            topic, count = uid("abort"), 400
            sub = MqttClient(uid("sub"), url=broker.url, options=PERSISTENT, reconnect=FAST)
            pub = MqttClient(uid("pub"), url=broker.url, options=PERSISTENT, reconnect=FAST)
            await sub.connect()
            await sub.subscribe(topic, qos)
            await pub.connect()
            seen: collections.Counter[int] = collections.Counter()
            consumer = asyncio.create_task(collect(sub, count, seen))

            def kill_both() -> None:
                for client in (sub, pub):
                    assert client._stream is not None
                    client._stream.abort()

            await publish_all(pub, topic, count, qos, kill_both)
            async with asyncio.timeout(scaled(15)):
                await consumer
            assert set(seen) == set(range(count))
            if qos == 2:
                assert max(seen.values()) == 1
            assert pub.stats.connects == 2 and sub.stats.connects == 2
            await pub.disconnect()
            await sub.disconnect()

        run(main(), timeout=30)

    def test_disconnect_stops_reconnection(self, mosquitto_factory) -> None:  # type: ignore[no-untyped-def]
        mosq: Mosquitto = mosquitto_factory()

        async def main() -> None:
            events: list[DisconnectedEvent] = []
            client = MqttClient(uid(), url=mosq.url, reconnect=FAST, on_disconnect=events.append)
            await client.connect()
            await asyncio.to_thread(mosq.stop)
            await wait_for(lambda: bool(events))
            assert events[0].will_reconnect
            await wait_for(lambda: client.stats.reconnect_attempts >= 2)
            await client.disconnect()
            attempts = client.stats.reconnect_attempts
            await asyncio.to_thread(mosq.start)
            await asyncio.sleep(scaled(0.8))
            assert not client.is_connected
            assert client.stats.reconnect_attempts == attempts

            # and after a connection that was up:
            await client.connect()
            await client.disconnect()
            await asyncio.to_thread(mosq.restart)
            await asyncio.sleep(scaled(0.5))
            assert not client.is_connected and client.stats.connects == 2  # no reconnection

        run(main(), timeout=30)

    def test_offline_queue_and_fail_fast(self, mosquitto_factory) -> None:  # type: ignore[no-untyped-def]
        mosq: Mosquitto = mosquitto_factory()

        async def main() -> None:
            topic = uid("offline")
            queued = MqttClient(uid(), url=mosq.url, reconnect=FAST)
            fast = MqttClient(uid(), url=mosq.url, reconnect=FAST, offline_queue=0)
            await queued.connect()
            await fast.connect()
            await asyncio.to_thread(mosq.stop)
            await wait_for(lambda: not queued.is_connected and not fast.is_connected)
            with pytest.raises(NotConnected):
                await fast.publish(topic, b"x", 1)
            pending = asyncio.create_task(queued.publish(topic, b"later", 1))
            assert await queued.publish(topic, b"q0") == ReasonCode.SUCCESS  # queued
            await asyncio.sleep(scaled(0.3))
            assert not pending.done()
            await asyncio.to_thread(mosq.start)
            async with asyncio.timeout(scaled(10)):
                assert await pending in (0, 0x10)
            await queued.disconnect()
            await fast.disconnect()

        run(main(), timeout=30)
