"""WebSocket listeners (``ws``, ``wss``) and the ``ws://`` / ``wss://`` client: the upgrade
(path, subprotocol, Origin), framing (packets per frame, packets across frames), limits,
forwarded addresses, several listeners of every kind in one broker."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from mqttv5.broker.auth import AuthRequest, AuthResult
from mqttv5.broker.broker import MqttBroker
from mqttv5.broker.config import BrokerConfig, ListenerSettings, validate_config
from mqttv5.broker.websocket import forwarded_for
from mqttv5.protocol.errors import ConfigError
from mqttv5.protocol.packets import (
    Connack,
    Connect,
    Packet,
    PacketDecoder,
    Publish,
    Suback,
    Subscribe,
    Subscription,
)
from mqttv5.protocol.reason_codes import ReasonCode
from mqttv5.transport.base import TlsError, WebSocketError
from mqttv5.transport.websocket import open_websocket
from tests.broker.conftest import run
from tests.broker.rawclient import timeout
from tests.transport.test_tls import (
    Certs,
    broker_with,
    connect,
    logged,
    make_certs,
    tls_listener,
    until_closed,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="mqttv5.broker")
    return caplog


def ws_listener(**settings: Any) -> ListenerSettings:
    settings.setdefault("port", 0)
    settings.setdefault("allow_anonymous", True)
    return ListenerSettings(type="ws", **settings)


class RawWs:
    """A WebSocket client that frames MQTT bytes as a test says (websockets' sans-I/O client
    over asyncio streams)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ws: ClientProtocol
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = ws
        self.decoder = PacketDecoder()
        self.inbox: list[Packet] = []
        self.frames: list[Frame] = []
        self.response: Response | None = None

    @classmethod
    async def open(
        cls,
        port: int,
        path: str = "/mqtt",
        *,
        subprotocols: Sequence[str] | None = ("mqtt",),
        headers: Sequence[tuple[str, str]] = (),
        compression: bool = False,
    ) -> RawWs:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ws = ClientProtocol(
            parse_uri(f"ws://127.0.0.1:{port}{path}"),
            subprotocols=[Subprotocol(s) for s in subprotocols] if subprotocols else None,
            extensions=[ClientPerMessageDeflateFactory()] if compression else None,
            max_size=None,
        )
        client = cls(reader, writer, ws)
        request = ws.connect()
        for name, value in headers:
            request.headers[name] = value
        ws.send_request(request)
        client.flush()
        while client.response is None:
            await client.receive()
        return client

    def flush(self) -> None:
        for data in self.ws.data_to_send():
            if data:
                self.writer.write(data)

    async def receive(self, wait: float = 3.0) -> bool:
        """Read once from the network; False at EOF."""
        async with asyncio.timeout(timeout(wait)):
            data = await self.reader.read(65536)
        if not data:
            self.ws.receive_eof()
            return False
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                self.response = event
            elif isinstance(event, Frame):
                self.frames.append(event)
                if event.opcode in (Opcode.BINARY, Opcode.CONT):
                    self.inbox.extend(self.decoder.feed(bytes(event.data)))
        self.flush()
        return True

    def send_frame(self, opcode: Opcode, data: bytes, fin: bool = True) -> None:
        if opcode is Opcode.BINARY:
            self.ws.send_binary(data, fin)
        elif opcode is Opcode.CONT:
            self.ws.send_continuation(data, fin)
        else:
            self.ws.send_text(data, fin)
        self.flush()

    def send(self, *packets: Packet) -> None:
        """All the packets in one binary frame."""
        self.send_frame(Opcode.BINARY, b"".join(p.encode(5) for p in packets))

    async def expect(self, kind: type[Any]) -> Any:
        while not self.inbox:
            assert await self.receive(), "closed"
        packet = self.inbox.pop(0)
        assert isinstance(packet, kind), packet
        return packet

    async def closed(self) -> int | None:
        """Wait for the end; the close code the broker sent (None without a close frame)."""
        with contextlib.suppress(ConnectionError):
            while await self.receive():
                pass
        self.writer.close()
        closes = [f for f in self.frames if f.opcode is Opcode.CLOSE]
        return int.from_bytes(closes[0].data[:2], "big") if closes else None

    def close(self) -> None:
        self.writer.close()


async def connack(client: RawWs, client_id: str) -> None:
    client.send(Connect(client_id))
    assert (await client.expect(Connack)).reason_code == ReasonCode.SUCCESS


# --- framing --------------------------------------------------------------------------------------


@pytest.mark.spec("MQTT-6.0.0-2", "MQTT-6.0.0-4")
def test_packets_per_frame_and_packets_across_frames() -> None:
    async def main() -> None:
        async with broker_with(ws_listener()) as broker:
            port = broker.ports[0]
            sub = await RawWs.open(port)
            assert sub.response is not None
            assert sub.response.headers["Sec-WebSocket-Protocol"] == "mqtt"  # [MQTT-6.0.0-4]
            # CONNECT and SUBSCRIBE in one frame
            sub.send(Connect("sub"), Subscribe(1, [Subscription("ws/#", 1)]))
            await sub.expect(Connack)
            await sub.expect(Suback)
            pub = await RawWs.open(port, "/any/path")  # any path, as Mosquitto
            await connack(pub, "pub")
            data = Publish("ws/split", b"x" * 3000, 1, packet_id=7).encode(5)
            # one packet in three frames of three messages, then one in a fragmented message
            for part in (data[:1], data[1:1000], data[1000:]):
                pub.send_frame(Opcode.BINARY, part)
            data = Publish("ws/frag", b"y" * 100, 0).encode(5)
            pub.send_frame(Opcode.BINARY, data[:10], fin=False)
            pub.send_frame(Opcode.CONT, data[10:50], fin=False)
            pub.send_frame(Opcode.CONT, data[50:], fin=True)
            first = await sub.expect(Publish)
            second = await sub.expect(Publish)
            assert (first.topic, len(first.payload)) == ("ws/split", 3000)
            assert (second.topic, second.payload) == ("ws/frag", b"y" * 100)
            sub.close()
            pub.close()

    run(main())


def test_client_round_trip_ws_and_wss(certs: Certs) -> None:
    async def main() -> None:
        server = str(certs.server)
        wss = ListenerSettings(
            type="wss", port=0, certfile=server, keyfile=server, allow_anonymous=True
        )
        async with broker_with(ws_listener(ws_path="/mqtt"), wss) as broker:
            ws_port, wss_port = broker.ports
            sub = await connect(f"ws://127.0.0.1:{ws_port}/mqtt", "sub")
            await sub.subscribe("round/#", qos=1)
            pub = await connect(
                f"wss://localhost:{wss_port}/mqtt", "pub", ca_file=str(certs.ca_file)
            )
            await pub.publish("round/trip", b"z" * 70_000, qos=1)  # larger than one TLS record
            message = await anext(sub.messages())
            assert message.payload == b"z" * 70_000
            await pub.disconnect()
            await sub.disconnect()

    run(main())


@pytest.mark.spec("MQTT-6.0.0-3")
def test_stream_details() -> None:
    async def main() -> None:
        async with broker_with(ws_listener()) as broker:
            stream = await open_websocket("127.0.0.1", broker.ports[0])
            try:
                assert stream.subprotocol == "mqtt"
                assert stream.peer.transport == "ws"
                stream.write(Connect("s").encode(5))
                data = await stream.read()
                assert isinstance(PacketDecoder().feed(data)[0], Connack)
            finally:
                await stream.close()

    run(main())


@pytest.mark.spec("MQTT-6.0.0-1", "MQTT-6.0.0-2")
def test_client_side_framing() -> None:
    """Our client joins frames into one stream and refuses a text frame."""
    sent = Connack(ReasonCode.SUCCESS).encode(5) + Suback(1, [ReasonCode(0)]).encode(5)

    class FakeServer(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.ws = ServerProtocol(subprotocols=[Subprotocol("mqtt")])

        def data_received(self, data: bytes) -> None:
            ws = self.ws
            ws.receive_data(data)
            for event in ws.events_received():
                if isinstance(event, Request):
                    ws.send_response(ws.accept(event))
                    ws.send_binary(sent[:2])  # CONNACK across two frames, SUBACK in the second
                    ws.send_binary(sent[2:])
                    ws.send_text(b"not MQTT")
            self.transport.writelines([d for d in ws.data_to_send() if d])

        def eof_received(self) -> None:
            self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(FakeServer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        stream = await open_websocket("127.0.0.1", port)
        data = b""
        with contextlib.suppress(Exception):
            while len(data) < len(sent):
                data += await stream.read()
        assert data == sent
        assert await stream.read() == b""
        assert isinstance(stream.failure, WebSocketError)
        assert "text frame" in stream.failure.message
        stream.abort()
        server.close()
        await server.wait_closed()

    run(main())


# --- the upgrade ----------------------------------------------------------------------------------


def test_wrong_path_is_404(broker_log: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with broker_with(ws_listener(ws_path="/mqtt")) as broker:
            with pytest.raises(WebSocketError) as info:
                await connect(f"ws://127.0.0.1:{broker.ports[0]}/other")
            assert info.value.status == 404
            await logged(broker_log, "WebSocket upgrade from 127.0.0.1:", "refused (404")

    run(main())


def test_subprotocols(broker_log: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with broker_with(ws_listener()) as broker:
            port = broker.ports[0]
            with pytest.raises(WebSocketError) as info:
                await open_websocket("127.0.0.1", port, subprotocols=["chat"])
            assert info.value.status == 400
            assert "mqtt or mqttv3.1 expected" in info.value.message
            line = await logged(broker_log, "WebSocket upgrade from 127.0.0.1:", "refused (400")
            assert "subprotocol chat offered" in line
            old = await open_websocket("127.0.0.1", port, subprotocols=["mqttv3.1"])
            assert old.subprotocol == "mqttv3.1"
            await old.close()
            none = await RawWs.open(port, subprotocols=None)  # accepted, as Mosquitto
            assert none.response is not None and none.response.status_code == 101
            none.close()

    run(main())


def test_allowed_origins(broker_log: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        origins = ["https://app.example.com", "https://*.example.org"]
        async with broker_with(ws_listener(allowed_origins=origins)) as broker:
            port = broker.ports[0]
            for origin, status in [
                ("https://app.example.com", 101),
                ("https://a.example.org", 101),
                ("https://evil.example", 403),
                ("https://a.b.example.org", 403),
            ]:
                client = await RawWs.open(port, headers=[("Origin", origin)])
                assert client.response is not None
                assert client.response.status_code == status, origin
                client.close()
            await logged(broker_log, "refused (403", "Origin 'https://evil.example' not allowed")
            no_origin = await RawWs.open(port)  # not a browser
            assert no_origin.response is not None and no_origin.response.status_code == 101
            no_origin.close()
            with pytest.raises(WebSocketError, match="403"):
                await open_websocket("127.0.0.1", port, origin="https://evil.example")

    run(main())


def test_not_http_and_upgrade_timeout(broker_log: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with broker_with(ws_listener(), connect_timeout=0.3) as broker:
            port = broker.ports[0]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(Connect("plain").encode(5))  # MQTT on the WebSocket port
            assert await until_closed(reader) == b""
            writer.close()
            await logged(broker_log, "not an HTTP request (plain MQTT on a WebSocket port?)")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /mqtt HTTP/1.1\r\n")  # and nothing more
            assert await until_closed(reader) == b""
            writer.close()
            await logged(broker_log, "upgrade timed out")

    run(main())


def test_compression_only_when_configured() -> None:
    async def main() -> None:
        async with broker_with(ws_listener(), ws_listener(ws_compression=True)) as broker:
            plain, deflate = broker.ports
            client = await RawWs.open(plain, compression=True)
            assert client.response is not None
            assert "Sec-WebSocket-Extensions" not in client.response.headers
            client.close()
            client = await RawWs.open(deflate, compression=True)
            assert client.response is not None
            assert "permessage-deflate" in client.response.headers["Sec-WebSocket-Extensions"]
            client.send(Connect("z"), Subscribe(1, [Subscription("deflate/#", 0)]))
            await client.expect(Connack)
            await client.expect(Suback)
            client.send(Publish("deflate/x", b"a" * 10_000, 0))
            assert (await client.expect(Publish)).payload == b"a" * 10_000
            client.close()

    run(main())


# --- limits and bad frames ------------------------------------------------------------------------


def test_oversize_frame_is_refused(broker_log: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with broker_with(ws_listener(max_packet_size=1000)) as broker:
            port = broker.ports[0]
            other = await RawWs.open(port)
            await connack(other, "other")
            big = await RawWs.open(port)
            await connack(big, "big")
            big.send_frame(Opcode.BINARY, Publish("x", b"y" * 2000, 0).encode(5))
            assert await big.closed() == 1009  # message too big
            await logged(broker_log, "WebSocket connection from 127.0.0.1:", "failed", "1000")
            other.send(Subscribe(1, [Subscription("x", 0)]))
            await other.expect(Suback)  # unaffected
            other.close()

    run(main())


@pytest.mark.spec("MQTT-6.0.0-1")
def test_text_frame_closes(broker_log: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with broker_with(ws_listener()) as broker:
            client = await RawWs.open(broker.ports[0])
            await connack(client, "text")
            client.send_frame(Opcode.TEXT, b"hello")
            assert await client.closed() == 1003  # [MQTT-6.0.0-1]
            await logged(broker_log, "a text frame (MQTT needs binary frames)")

    run(main())


def test_max_connections_per_listener() -> None:
    async def main() -> None:
        async with broker_with(ws_listener(max_connections=1)) as broker:
            port = broker.ports[0]
            first = await connect(f"ws://127.0.0.1:{port}", "first")
            second = await RawWs.open(port)
            assert await second.closed() is None  # upgraded, then dropped: listener full
            await first.disconnect()

    run(main())


# --- addresses ------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.requests: list[AuthRequest] = []

    def authenticate(self, request: AuthRequest) -> AuthResult:
        self.requests.append(request)
        return AuthResult(ReasonCode.SUCCESS)


@pytest.mark.parametrize(
    ("proxies", "header", "expected"),
    [
        (["127.0.0.1"], "198.51.100.1, 203.0.113.7", "203.0.113.7"),
        (["127.0.0.0/8", "203.0.113.0/24"], "198.51.100.1, 203.0.113.7", "198.51.100.1"),
        ([], "203.0.113.7", "127.0.0.1"),  # no trusted proxy: the header is ignored
        (["10.0.0.1"], "203.0.113.7", "127.0.0.1"),  # not from a trusted proxy
        (["127.0.0.1"], "garbage", "127.0.0.1"),
    ],
)
def test_x_forwarded_for(proxies: list[str], header: str, expected: str) -> None:
    async def main() -> None:
        recorder = Recorder()
        listener = ws_listener(trusted_proxies=proxies)
        async with broker_with(listener, authenticator=recorder) as broker:
            client = await RawWs.open(broker.ports[0], headers=[("X-Forwarded-For", header)])
            await connack(client, "fwd")
            client.close()
        (request,) = recorder.requests
        assert request.peer_address == expected
        assert request.is_loopback is False  # a WebSocket connection never counts as loopback

    run(main())


def test_forwarded_for_chain() -> None:
    nets = [ipaddress.ip_network("10.0.0.0/8")]
    assert forwarded_for(["192.0.2.1, 10.0.0.2, 10.0.0.3"], nets) == "192.0.2.1"
    assert forwarded_for(["10.0.0.9", "10.0.0.2"], nets) == "10.0.0.9"  # all trusted: leftmost
    assert forwarded_for(["[2001:db8::1]:443", "192.0.2.9:1234"], []) == "192.0.2.9"
    assert forwarded_for(["192.0.2.1, unknown"], nets) is None
    assert forwarded_for([], nets) is None


def test_websocket_listener_needs_an_authentication_choice() -> None:
    config = BrokerConfig(listeners=[ListenerSettings(type="ws", port=8080)])
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert info.value.key == "allow_anonymous"
    assert "never counts as loopback" in info.value.message
    assert not config.effective_allow_anonymous(config.listeners[0])
    tcp = ListenerSettings(type="tcp")
    assert config.effective_allow_anonymous(tcp)  # loopback TCP keeps Mosquitto's default


# --- TLS under WebSocket, several listeners ------------------------------------------------------


def test_wss_with_client_certificates(certs: Certs, tmp_path: Path) -> None:
    async def main() -> None:
        server = str(certs.server)
        wss = ListenerSettings(
            type="wss",
            port=0,
            certfile=server,
            keyfile=server,
            cafile=str(certs.ca_file),
            require_certificate=True,
            use_identity_as_username=True,
        )
        recorder = Recorder()
        async with broker_with(wss, authenticator=recorder) as broker:
            url = f"wss://localhost:{broker.ports[0]}/mqtt"
            client = await connect(url, ca_file=str(certs.ca_file), cert_file=str(certs.client))
            await client.disconnect()
            assert recorder.requests == []  # the certificate decided
            with pytest.raises(TlsError, match="requires a client certificate"):
                await connect(url, ca_file=str(certs.ca_file))

    run(main())


def test_several_listeners_of_every_kind(certs: Certs) -> None:
    async def main() -> None:
        server = str(certs.server)
        listeners = [
            ListenerSettings(port=0),
            tls_listener(certs, mount_point="secure/"),
            ws_listener(max_connections=2),
            ListenerSettings(
                type="wss", port=0, certfile=server, keyfile=server, allow_anonymous=True
            ),
        ]
        async with broker_with(*listeners) as broker:
            tcp, tls, ws, wss = broker.ports
            ca = str(certs.ca_file)
            watcher = await connect(f"mqtt://127.0.0.1:{tcp}", "watcher")
            await watcher.subscribe("#", qos=1)
            clients = [
                await connect(f"mqtts://localhost:{tls}", "c-tls", ca_file=ca),
                await connect(f"ws://127.0.0.1:{ws}/mqtt", "c-ws"),
                await connect(f"wss://localhost:{wss}/mqtt", "c-wss", ca_file=ca),
            ]
            for client in clients:
                await client.publish("from", client.client_id.encode(), qos=1)
            got = {}
            messages = watcher.messages()
            for _ in clients:
                message = await anext(messages)
                got[message.payload] = message.topic
            # the tls listener's mount point applies to its clients only
            assert got == {b"c-tls": "secure/from", b"c-ws": "from", b"c-wss": "from"}
            for client in [*clients, watcher]:
                await client.disconnect()

    run(main())


def test_shutdown_with_websocket_clients() -> None:
    async def main() -> None:
        broker = MqttBroker(BrokerConfig(listeners=[ws_listener()], sys_interval=0))
        await broker.start()
        port = broker.ports[0]
        upgraded = await RawWs.open(port)
        await connack(upgraded, "up")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # never upgrades
        await asyncio.sleep(0.05)
        await broker.stop()
        assert await until_closed(reader) == b""
        writer.close()
        assert await upgraded.closed() == 1000  # server shutting down: DISCONNECT, close frame

    run(main())


def test_client_errors_are_specific(certs: Certs) -> None:
    async def main() -> None:
        async with broker_with(ListenerSettings(port=0), tls_listener(certs)) as broker:
            tcp, tls = broker.ports
            with pytest.raises(WebSocketError, match="not a WebSocket port"):
                await open_websocket("127.0.0.1", tcp)
            with pytest.raises(TlsError, match="not trusted"):
                await open_websocket("localhost", tls, secure=True)

    run(main())
