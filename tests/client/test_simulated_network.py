"""The simulated network (mqttv5.transport.memory): seeded delay, partitions and killed links;
the client over it against a real Mosquitto (through a proxy), and the mechanics that Mosquitto
cannot exercise (enhanced authentication, a server's DISCONNECT with Server Reference) against a
minimal server driven by the protocol ``Connection(SERVER)``."""

from __future__ import annotations

import asyncio
import collections

import pytest

from mqttv5 import ConnectionClosed, Properties, ReasonCode
from mqttv5.client import (
    ConnectOptions,
    DisconnectedEvent,
    MqttClient,
    ReconnectPolicy,
    SessionLost,
)
from mqttv5.protocol.connection import SERVER, Connection
from mqttv5.protocol.packets import Auth, Connack, Connect, Disconnect
from mqttv5.transport import MemoryStream, SimNetwork, TransportError, open_url

from .mosquitto import Mosquitto, run, scaled
from .simproxy import proxy_to
from .test_client import uid

FAST = ReconnectPolicy(enabled=True, initial_delay=0.02, max_delay=0.2, jitter=0.3)


async def echo(stream: MemoryStream) -> None:
    while data := await stream.read():
        stream.write(data)


class TestStreams:
    def test_ordered_delayed_delivery_is_deterministic(self) -> None:
        async def trace(seed: int) -> list[tuple[bytes, float]]:
            net = SimNetwork(seed, delay=(0.001, 0.02))
            net.listen("srv", 1, echo)
            stream = await net.connect("srv", 1)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(20):
                stream.write(b"%02d" % i)
            out: list[tuple[bytes, float]] = []
            buf = b""
            while len(buf) < 40:
                chunk = await stream.read()
                buf += chunk
                out.append((chunk, round(loop.time() - start, 2)))
            assert buf == b"".join(b"%02d" % i for i in range(20))  # order kept
            await stream.close()
            return out

        first = run(trace(7))
        assert [c for c, _ in first] == [c for c, _ in run(trace(7))]
        assert first != run(trace(8)) or len(first) == 1

    def test_partition_stalls_and_heal_delivers(self) -> None:
        async def main() -> None:
            net = SimNetwork(1)
            net.listen("srv", 1, echo)
            stream = await net.connect("srv", 1, local="a")
            net.partition("a", "srv")
            stream.write(b"held")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await stream.read()
            with pytest.raises(TransportError, match="partitioned"):
                await net.connect("srv", 1, local="a")
            net.heal("a", "srv")
            assert await stream.read() == b"held"
            await stream.close()

        run(main())

    def test_kill_and_abort(self) -> None:
        async def main() -> None:
            net = SimNetwork(2)
            net.listen("srv", 1, echo)
            one = await net.connect("srv", 1)
            two = await net.connect("srv", 1)
            assert net.kill() == 2
            for stream in (one, two):
                with pytest.raises(ConnectionClosed):
                    await stream.read()
                with pytest.raises(ConnectionClosed):
                    stream.write(b"x")
            with pytest.raises(TransportError, match="refused"):
                await net.connect("nobody", 1)

        run(main())

    def test_kill_rate_is_seeded(self) -> None:
        async def writes_until_killed(seed: int) -> int:
            net = SimNetwork(seed, kill_rate=0.05)
            net.listen("srv", 1, echo)
            stream = await net.connect("srv", 1)
            for i in range(10_000):
                try:
                    stream.write(b"x")
                except ConnectionClosed:
                    return i
            return -1

        assert run(writes_until_killed(3)) == run(writes_until_killed(3)) > 0

    def test_url_registration(self) -> None:
        async def main() -> None:
            net = SimNetwork(4)
            net.register("simtest")
            net.listen("srv", 1883, echo)
            stream = await open_url("simtest://srv?local=me")
            assert stream.peer.address == "srv" and stream.peer.transport == "memory"
            assert net.links[0].hosts == ("me", "srv")
            stream.abort()

        run(main())


class TestClientOverSimulatedNetwork:
    @pytest.mark.spec("MQTT-3.1.2-20")
    def test_keep_alive_detects_partition_and_reconnects(self, broker: Mosquitto) -> None:
        async def main() -> None:
            net = SimNetwork(5, delay=(0.0005, 0.002))
            proxy = proxy_to(net, "broker", 1883, broker.port)
            events: list[DisconnectedEvent] = []

            async def opener() -> MemoryStream:
                return await net.connect("broker", 1883, local="client")

            opts = ConnectOptions(keep_alive=1)
            client = MqttClient(uid(), options=opts, reconnect=FAST, on_disconnect=events.append)
            await client.connect(opener)
            await asyncio.sleep(scaled(1.3))  # idle: PINGREQ keeps it alive
            assert client.is_connected
            net.partition("client", "broker")
            async with asyncio.timeout(scaled(4)):
                while not events:
                    await asyncio.sleep(0.02)
            assert "PINGRESP" in (events[0].reason_string or "")
            assert events[0].will_reconnect
            net.heal()
            async with asyncio.timeout(scaled(5)):
                while not client.is_connected:
                    await asyncio.sleep(0.02)
            await client.disconnect()
            await proxy.close()

        run(main())

    def test_random_link_kills_exactly_once(self, broker: Mosquitto) -> None:
        async def main() -> None:
            net = SimNetwork(11, delay=(0.0, 0.001))
            proxy = proxy_to(net, "broker", 1883, broker.port)
            topic, count = uid("chaos"), 200
            opts = ConnectOptions(clean_start=False, session_expiry_interval=60)

            def client(name: str) -> MqttClient:
                async def opener() -> MemoryStream:
                    return await net.connect("broker", 1883, local=name)

                return MqttClient(uid(name), url=opener, options=opts, reconnect=FAST, seed=1)

            sub, pub = client("sub"), client("pub")
            await sub.connect()
            await sub.subscribe(topic, 2)
            await pub.connect()
            seen: collections.Counter[bytes] = collections.Counter()

            async def consume() -> None:
                async for m in sub.messages():
                    seen[m.payload] += 1
                    if len(seen) == count:
                        return

            consumer = asyncio.create_task(consume())
            for i in range(count):
                if i % 25 == 10:
                    net.kill_random()
                await pub.publish(topic, str(i), 2)
            async with asyncio.timeout(scaled(15)):
                await consumer
            assert set(seen) == {str(i).encode() for i in range(count)}
            assert max(seen.values()) == 1
            assert pub.stats.connects + sub.stats.connects > 2
            await pub.disconnect()
            await sub.disconnect()
            await proxy.close()

        run(main(), timeout=40)

    @pytest.mark.spec("MQTT-3.2.2-5")
    def test_session_lost_fails_inflight_publish(self, mosquitto_factory) -> None:  # type: ignore[no-untyped-def]
        mosq: Mosquitto = mosquitto_factory()  # no persistence: a restart loses sessions

        async def main() -> None:
            net = SimNetwork(12)
            proxy = proxy_to(net, "broker", 1883, mosq.port)
            opts = ConnectOptions(clean_start=False, session_expiry_interval=60)

            async def opener() -> MemoryStream:
                return await net.connect("broker", 1883, local="c")

            client = MqttClient(uid(), url=opener, options=opts, reconnect=FAST)
            await client.connect()
            net.partition("c", "broker")
            pending = asyncio.create_task(client.publish("lost", b"x", 1))
            await asyncio.sleep(0.05)
            assert len(client.inflight) == 1
            net.kill("c")
            await asyncio.to_thread(mosq.restart)
            net.heal()
            with pytest.raises(SessionLost):
                async with asyncio.timeout(scaled(10)):
                    await pending
            assert client.is_connected and not client.session_present
            assert len(client.inflight) == 0
            await client.disconnect()
            await proxy.close()

        run(main(), timeout=30)


class _Challenge:
    """A toy challenge/response authenticator: the server sends a nonce, we answer it reversed."""

    def __init__(self) -> None:
        self.verified: list[bytes | None] = []

    async def start(self) -> tuple[str, bytes | None]:
        return "X-REVERSE", b"hello"

    async def step(self, reason_code: ReasonCode, data: bytes | None) -> bytes | None:
        if reason_code == ReasonCode.SUCCESS:
            self.verified.append(data)
            return None
        assert data is not None
        return data[::-1]


async def auth_server(stream: MemoryStream) -> None:
    """Minimal server for the AUTH and redirect mechanics: Connection(SERVER) does the protocol;
    this function only answers CONNECT/AUTH and finally sends DISCONNECT 0x9C."""
    conn = Connection(SERVER)
    method = "X-REVERSE"

    def flush() -> None:
        for data in conn.data_to_send():
            stream.write(data)

    def challenge(code: ReasonCode) -> None:
        conn.send(Auth(code, Properties(authentication_method=method, authentication_data=b"N1")))

    while data := await stream.read():
        conn.receive_data(data)
        for event in conn.events_received():
            if isinstance(event, Connect):
                assert event.properties.authentication_method == method
                assert event.properties.authentication_data == b"hello"
                challenge(ReasonCode.CONTINUE_AUTHENTICATION)
            elif isinstance(event, Auth) and event.reason_code == ReasonCode.RE_AUTHENTICATE:
                challenge(ReasonCode.CONTINUE_AUTHENTICATION)
            elif isinstance(event, Auth):
                assert event.properties.authentication_data == b"1N"
                ok = Properties(authentication_method=method, authentication_data=b"welcome")
                if conn.state.name == "CONNECTING":
                    conn.send(Connack(ReasonCode.SUCCESS, False, ok))
                else:
                    conn.send(Auth(ReasonCode.SUCCESS, ok))
                    flush()
                    await asyncio.sleep(0.05)
                    props = Properties(server_reference="other:1883", reason_string="moved")
                    conn.send(Disconnect(ReasonCode.USE_ANOTHER_SERVER, props))
        flush()


class TestMechanics:
    @pytest.mark.spec("MQTT-3.1.2-30")
    def test_enhanced_auth_reauth_and_server_reference(self) -> None:
        async def main() -> None:
            net = SimNetwork(21)
            net.listen("auth", 1883, auth_server)
            events: list[DisconnectedEvent] = []
            authenticator = _Challenge()

            async def opener() -> MemoryStream:
                return await net.connect("auth", 1883)

            opts = ConnectOptions(authenticator=authenticator)
            client = MqttClient(uid(), url=opener, options=opts, on_disconnect=events.append)
            event = await client.connect()
            assert event.properties.authentication_data == b"welcome"
            assert authenticator.verified == [b"welcome"]
            await client.reauthenticate()
            assert authenticator.verified == [b"welcome", b"welcome"]
            async with asyncio.timeout(scaled(2)):
                while not events:
                    await asyncio.sleep(0.01)
            assert events[0].reason_code == ReasonCode.USE_ANOTHER_SERVER
            assert events[0].server_reference == "other:1883"
            assert events[0].reason_string == "moved"
            await client.disconnect()

        run(main())
