"""Client conformance of ``MqttClient``: against a scripted raw-packet server (to see exactly
what the client sends) and against our broker over TCP (sections 3.1.2.11.7, 3.3.2.3.4, 3.14.4,
4.2, 4.3.1, 4.5, 4.6, 4.12)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from mqttv5.client import ConnectOptions, Message, MqttClient, ReconnectPolicy
from mqttv5.protocol.errors import InvalidState
from mqttv5.protocol.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Suback,
    Subscribe,
)
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient, timeout


class ScriptedServer:
    """A listening socket whose connections the test drives packet by packet (a
    :class:`RawClient` seen from the server's side)."""

    def __init__(self) -> None:
        self.peers: asyncio.Queue[RawClient] = asyncio.Queue()
        self.url = ""

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.peers.put(RawClient(reader, writer, 5))

    async def connected(
        self, client: MqttClient, options: ConnectOptions | None = None, **connack: int
    ) -> tuple[RawClient, Connect]:
        """Connect ``client``, answer its CONNECT with a CONNACK carrying ``connack``
        properties; return the server side of the connection and the CONNECT."""
        connecting = asyncio.create_task(client.connect(self.url, options))
        async with asyncio.timeout(timeout(5)):
            peer = await self.peers.get()
        connect = await peer.expect(Connect)
        peer.send(Connack(properties=Properties(**connack)))
        await connecting
        return peer, connect


@contextlib.asynccontextmanager
async def scripted_server() -> AsyncIterator[ScriptedServer]:
    script = ScriptedServer()
    server = await asyncio.start_server(script._accept, "127.0.0.1", 0)
    script.url = f"mqtt://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield script
    finally:
        server.close()
        await server.wait_closed()


async def take(client: MqttClient, n: int) -> list[Message]:
    stream = client.messages()
    async with asyncio.timeout(timeout(5)):
        return [await anext(stream) for _ in range(n)]


class TestAcknowledgements:
    @pytest.mark.spec("MQTT-4.6.0-2", "MQTT-4.6.0-3")
    @pytest.mark.parametrize("qos", [1, 2])
    def test_acknowledged_in_the_order_received(self, qos: int) -> None:
        ids = [5, 3, 9, 1, 700]

        async def main() -> None:
            async with scripted_server() as server:
                client = MqttClient("acker")
                peer, _ = await server.connected(client)
                for pid in ids:
                    peer.send(Publish(f"t/{pid}", b"%d" % pid, qos, packet_id=pid))
                assert [m.topic for m in await take(client, len(ids))] == [f"t/{p}" for p in ids]
                ack = PubAck if qos == 1 else PubRec
                acks = [await peer.expect(ack) for _ in ids]
                assert [a.packet_id for a in acks] == ids
                if qos == 2:
                    released = [9, 5, 700, 3, 1]
                    for pid in released:
                        peer.send(PubRel(pid))
                    comps = [await peer.expect(PubComp) for _ in released]
                    assert [c.packet_id for c in comps] == released
                await client.disconnect()

        run(main())

    @pytest.mark.spec("MQTT-4.5.0-2")
    def test_every_publish_is_acknowledged_even_when_its_callback_fails(self) -> None:
        async def main() -> None:
            seen: list[str] = []

            def callback(message: Message) -> None:
                seen.append(message.topic)
                if message.payload == b"boom":
                    raise RuntimeError("the application does not process this one")

            async with scripted_server() as server:
                client = MqttClient("careless")
                peer, _ = await server.connected(client)
                subscribing = asyncio.create_task(client.subscribe("cb/#", 2, callback=callback))
                subscribe = await peer.expect(Subscribe)
                peer.send(Suback(subscribe.packet_id, [ReasonCode.GRANTED_QOS_2]))
                await subscribing
                sids = subscribe.properties.subscription_identifiers
                props = Properties(subscription_identifiers=sids)
                plan = [(1, 1, b"boom"), (2, 2, b"boom"), (3, 1, b"ok"), (4, 2, b"ok")]
                for pid, qos, payload in plan:
                    peer.send(Publish(f"cb/{pid}", payload, qos, packet_id=pid, properties=props))
                for pid, qos, _payload in plan:
                    ack = await peer.recv()
                    assert isinstance(ack, PubAck if qos == 1 else PubRec), ack
                    assert (ack.packet_id, ack.reason_code) == (pid, ReasonCode.SUCCESS)
                assert seen == [f"cb/{pid}" for pid, _q, _p in plan]
                await client.disconnect()

        run(main())


class TestTopicAliases:
    @pytest.mark.spec("MQTT-3.3.2-10")
    def test_every_alias_up_to_our_maximum_is_accepted(self) -> None:
        async def main() -> None:
            async with scripted_server() as server:
                client = MqttClient("aliased")
                peer, connect = await server.connected(
                    client, ConnectOptions(topic_alias_maximum=4)
                )
                assert connect.properties.topic_alias_maximum == 4
                for alias in (1, 2, 3, 4):
                    props = Properties(topic_alias=alias)
                    peer.send(Publish(f"al/{alias}", b"set", properties=props))
                for alias in (4, 3, 2, 1):
                    peer.send(Publish("", b"use", properties=Properties(topic_alias=alias)))
                got = await take(client, 8)
                assert [m.topic for m in got] == [f"al/{a}" for a in (1, 2, 3, 4, 4, 3, 2, 1)]
                assert client.is_connected
                await client.disconnect()

        run(main())

    @pytest.mark.spec("MQTT-3.3.2-11")
    def test_alias_above_our_maximum_gets_disconnect_0x94(self) -> None:
        async def main() -> None:
            async with scripted_server() as server:
                client = MqttClient("strict")
                peer, _ = await server.connected(client, ConnectOptions(topic_alias_maximum=4))
                peer.send(Publish("al/5", b"x", properties=Properties(topic_alias=5)))
                packets = await peer.closed()
                assert [type(p) for p in packets] == [Disconnect], packets
                assert packets[0].reason_code == ReasonCode.TOPIC_ALIAS_INVALID

        run(main())


class TestClosing:
    @pytest.mark.spec("MQTT-3.14.4-2")
    def test_client_closes_the_connection_after_its_disconnect(self) -> None:
        async def main() -> None:
            async with scripted_server() as server:
                client = MqttClient("leaving")
                peer, _ = await server.connected(client)
                await client.disconnect()
                packets = await peer.closed()
                assert [type(p) for p in packets] == [Disconnect], packets
                assert peer.eof

        run(main())


class TestTransport:
    @pytest.mark.spec("MQTT-4.2-1")
    def test_tcp_to_our_broker_is_ordered_and_lossless(self) -> None:
        payloads = [bytes([n % 256]) * (n * 997 % 40_000) for n in range(120)]

        async def main() -> None:
            async with started_broker() as b:
                url = f"mqtt://127.0.0.1:{b.ports[0]}"
                async with (
                    MqttClient("tcp-sub", url=url) as sub,
                    MqttClient("tcp-pub", url=url) as pub,
                ):
                    await sub.subscribe("tcp/#", qos=1)
                    for payload in payloads:
                        await pub.publish("tcp/x", payload, qos=1)
                    got = await take(sub, len(payloads))
                    assert [m.payload for m in got] == payloads

        run(main())


class Reverse:
    """A client authenticator for a toy method: answers each challenge reversed, and rejects
    the server's data once ``suspicious`` is set."""

    def __init__(self) -> None:
        self.suspicious = False

    async def start(self) -> tuple[str, bytes | None]:
        return "REVERSE", b"hello"

    async def step(self, reason_code: ReasonCode, data: bytes | None) -> bytes | None:
        if self.suspicious and reason_code != ReasonCode.SUCCESS:
            raise ValueError("the server's answer does not check out")
        return data[::-1] if data else None


def _auth(code: ReasonCode, data: bytes | None = None) -> Auth:
    return Auth(code, Properties(authentication_method="REVERSE", authentication_data=data))


async def _authenticated(server: ScriptedServer, client: MqttClient) -> RawClient:
    """Connect ``client`` through one challenge of the REVERSE method."""
    connecting = asyncio.create_task(client.connect(server.url))
    async with asyncio.timeout(timeout(5)):
        peer = await server.peers.get()
    connect = await peer.expect(Connect)
    assert connect.properties.authentication_method == "REVERSE"
    peer.send(_auth(ReasonCode.CONTINUE_AUTHENTICATION, b"abc"))
    answer = await peer.expect(Auth)
    assert answer.reason_code == ReasonCode.CONTINUE_AUTHENTICATION  # [MQTT-4.12.0-3]
    assert answer.properties.authentication_method == "REVERSE"  # [MQTT-4.12.0-5]
    assert answer.properties.authentication_data == b"cba"
    peer.send(Connack(properties=Properties(authentication_method="REVERSE")))
    await connecting
    return peer


class TestEnhancedAuthentication:
    @pytest.mark.spec("MQTT-4.12.0-3", "MQTT-4.12.0-5", "MQTT-4.12.1-1")
    def test_challenges_are_answered_with_auth_0x18_naming_the_method(self) -> None:
        async def main() -> None:
            async with scripted_server() as server:
                client = MqttClient("auth", options=ConnectOptions(authenticator=Reverse()))
                peer = await _authenticated(server, client)
                reauthenticating = asyncio.create_task(client.reauthenticate())
                start = await peer.expect(Auth)
                assert start.reason_code == ReasonCode.RE_AUTHENTICATE
                assert start.properties.authentication_method == "REVERSE"  # [MQTT-4.12.1-1]
                peer.send(_auth(ReasonCode.CONTINUE_AUTHENTICATION, b"xyz"))
                answer = await peer.expect(Auth)
                assert answer.reason_code == ReasonCode.CONTINUE_AUTHENTICATION
                assert answer.properties.authentication_method == "REVERSE"
                assert answer.properties.authentication_data == b"zyx"
                peer.send(_auth(ReasonCode.SUCCESS))
                await reauthenticating
                await client.disconnect()

        run(main())

    @pytest.mark.spec("MQTT-4.12.0-7")
    def test_no_auth_without_an_authentication_method(self) -> None:
        async def main() -> None:
            async with scripted_server() as server:
                client = MqttClient("plain")
                peer, connect = await server.connected(client)
                assert connect.properties.authentication_method is None
                with pytest.raises(InvalidState):
                    await client.reauthenticate()
                await peer.nothing()
                await client.disconnect()
                assert [type(p) for p in await peer.closed()] == [Disconnect]

        run(main())

    @pytest.mark.spec("MQTT-4.12.1-2")
    def test_failed_reauthentication_closes_the_connection(self) -> None:
        async def main() -> None:
            async with scripted_server() as server:
                authenticator = Reverse()
                client = MqttClient("auth", options=ConnectOptions(authenticator=authenticator))
                peer = await _authenticated(server, client)
                authenticator.suspicious = True
                reauthenticating = asyncio.create_task(client.reauthenticate())
                assert (await peer.expect(Auth)).reason_code == ReasonCode.RE_AUTHENTICATE
                peer.send(_auth(ReasonCode.CONTINUE_AUTHENTICATION, b"xyz"))
                with contextlib.suppress(Exception):
                    await reauthenticating
                packets = await peer.closed(wait=1.0)
                assert peer.eof
                assert all(isinstance(p, Disconnect) and p.reason_code.is_error for p in packets)

        run(main())


class TestProblemInformation:
    @pytest.mark.spec("MQTT-3.1.2-29")
    def test_reason_string_despite_request_problem_information_0(self) -> None:
        async def main() -> None:
            async with scripted_server() as server:
                client = MqttClient("quiet")
                options = ConnectOptions(request_problem_information=False)
                peer, connect = await server.connected(client, options)
                assert connect.properties.request_problem_information == 0
                subscribing = asyncio.create_task(client.subscribe("x/#"))
                subscribe = await peer.expect(Subscribe)
                props = Properties(reason_string="not asked for")
                peer.send(Suback(subscribe.packet_id, [ReasonCode.GRANTED_QOS_0], props))
                with contextlib.suppress(Exception):
                    await subscribing
                packets = await peer.closed(wait=1.0)
                assert [type(p) for p in packets] == [Disconnect], packets
                assert packets[0].reason_code == ReasonCode.PROTOCOL_ERROR

        run(main())


class TestQos0:
    @pytest.mark.spec("MQTT-4.3.1-1")
    def test_qos0_publish_goes_out_with_qos_0_and_dup_0(self) -> None:
        async def main() -> None:
            async with scripted_server() as server:
                client = MqttClient("q0")
                peer, _ = await server.connected(client)
                await client.publish("q0/t", b"fire and forget")
                got = await peer.expect(Publish)
                assert (got.qos, got.dup, got.packet_id) == (0, False, None)
                await client.disconnect()

        run(main())


class TestSessionState:
    @pytest.mark.spec("MQTT-4.1.0-1")
    def test_unacknowledged_publish_is_kept_while_the_connection_is_open(self) -> None:
        async def main() -> None:
            async with scripted_server() as server:
                client = MqttClient("patient")
                peer, _ = await server.connected(client)
                publishing = asyncio.create_task(client.publish("wait/1", b"x", qos=1))
                sent = await peer.expect(Publish)
                assert sent.packet_id is not None
                # other traffic and time pass; the message stays in the session state
                await client.publish("wait/2", b"y")
                await peer.expect(Publish)
                await asyncio.sleep(0.3)
                assert list(client.inflight.out) == [sent.packet_id]
                assert not publishing.done()
                peer.send(PubAck(sent.packet_id))
                assert await publishing == ReasonCode.SUCCESS
                assert not client.inflight.out
                await client.disconnect()

        run(main())

    @pytest.mark.spec("MQTT-3.1.3-2")
    def test_session_state_is_resumed_under_the_client_id_it_belongs_to(self) -> None:
        async def main() -> None:
            async with scripted_server() as server:
                options = ConnectOptions(session_expiry_interval=60)
                policy = ReconnectPolicy(enabled=True, initial_delay=0.01, jitter=0)
                client = MqttClient("", options=options, reconnect=policy)
                peer, connect = await server.connected(
                    client, assigned_client_identifier="given-by-server"
                )
                assert connect.client_id == ""
                publishing = asyncio.create_task(client.publish("s/1", b"x", qos=1))
                first = await peer.expect(Publish)
                peer.abort()  # the connection drops before the PUBACK
                async with asyncio.timeout(timeout(5)):
                    peer = await server.peers.get()
                again = await peer.expect(Connect)
                # the state belongs to the ClientID the server assigned: resumed under it
                assert (again.client_id, again.clean_start) == ("given-by-server", False)
                peer.send(Connack(session_present=True))
                resent = await peer.expect(Publish)
                assert (resent.packet_id, resent.dup) == (first.packet_id, True)
                assert resent.packet_id is not None
                peer.send(PubAck(resent.packet_id))
                assert await publishing == ReasonCode.SUCCESS
                await client.disconnect()

        run(main())
