"""MQTT over UDP and DTLS end to end: a real broker's ``udp``/``dtls`` listeners and our client's
``mqtt-udp://`` / ``mqtts-dtls://`` over loopback sockets. QoS 0/1/2, fragmented packets,
garbage and spoofed datagrams, a lossy path, NAT rebinding, Wills after a silent peer, PSK and
certificate identities as user names, and the command-line tools."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from mqttv5 import MqttClient
from mqttv5.bench.relay import UdpRelay
from mqttv5.broker.config import ListenerSettings
from mqttv5.client import ConnectOptions
from mqttv5.protocol.errors import ConfigError
from mqttv5.protocol.packets import Will
from mqttv5.transport.base import TlsError, TransportError
from tests.broker.conftest import run
from tests.broker.rawclient import timeout
from tests.transport.test_dtls_openssl import s_client
from tests.transport.test_tls import Certs, broker_with, make_certs

PSK_KEY = "00112233445566778899aabbccddeeff"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def psk_file(tmp_path: Path) -> Path:
    path = tmp_path / "psk.txt"
    path.write_text(f"# devices\nalice:{PSK_KEY}\nbob:{'ab' * 16}\n")
    return path


def udp_listener(**settings: Any) -> ListenerSettings:
    return ListenerSettings(type="udp", bind="127.0.0.1", port=0, **settings)


def dtls_listener(**settings: Any) -> ListenerSettings:
    return ListenerSettings(type="dtls", bind="127.0.0.1", port=0, **settings)


def tcp_listener() -> ListenerSettings:
    return ListenerSettings(type="tcp", bind="127.0.0.1", port=0)


async def client(url: str, client_id: str = "", **options: Any) -> MqttClient:
    dtls = options.pop("dtls", None)
    tls = options.pop("tls", None)
    options.setdefault("connect_timeout", timeout(5))
    c = MqttClient(client_id, options=ConnectOptions(**options))
    if dtls is not None:
        c.set_dtls_config(**dtls)
    if tls is not None:
        c.set_tls_config(**tls)
    await c.connect(url)
    return c


async def pubsub(pub: MqttClient, sub: MqttClient, qos: int, count: int, size: int = 16) -> None:
    """``count`` messages of ``size`` bytes from ``pub`` reach ``sub`` in order, once each."""
    topic = f"e2e/{qos}/{size}"
    await sub.subscribe(topic, qos=qos)
    payloads = [i.to_bytes(4, "big") + os.urandom(max(0, size - 4)) for i in range(count)]
    messages = sub.messages()
    for payload in payloads:
        await pub.publish(topic, payload, qos=qos)
    got = []
    async with asyncio.timeout(timeout(20)):
        async for message in messages:
            got.append(message.payload)
            if len(got) == count:
                break
    assert got == payloads


# --- plain UDP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_subscribe_over_udp(qos: int) -> None:
    async def main() -> None:
        async with broker_with(udp_listener()) as broker:
            url = f"mqtt-udp://127.0.0.1:{broker.ports[0]}"
            pub, sub = await client(url, "pub"), await client(url, "sub")
            assert pub.connection is not None
            await pubsub(pub, sub, qos, 200)
            await pub.disconnect()
            await sub.disconnect()

    run(main())


def test_udp_and_tcp_clients_share_topics_and_large_packets_are_fragmented() -> None:
    async def main() -> None:
        async with broker_with(udp_listener(), tcp_listener()) as broker:
            udp, tcp = broker.ports
            pub = await client(f"mqtt-udp://127.0.0.1:{udp}", "udp-pub")
            sub = await client(f"mqtt://127.0.0.1:{tcp}", "tcp-sub")
            await pubsub(pub, sub, 1, 5, size=200_000)  # ~140 fragments each
            back = await client(f"mqtt-udp://127.0.0.1:{udp}", "udp-sub")
            await pubsub(sub, back, 2, 3, size=64 * 1024)
            for c in (pub, sub, back):
                await c.disconnect()

    run(main())


def test_udp_client_identity_and_session_resume() -> None:
    async def main() -> None:
        async with broker_with(udp_listener()) as broker:
            url = f"mqtt-udp://127.0.0.1:{broker.ports[0]}"
            sub = await client(url, "keeper", clean_start=False, session_expiry_interval=60)
            await sub.subscribe("keep/#", qos=1)
            await sub.disconnect()
            pub = await client(url, "pub")
            await pub.publish("keep/1", b"while away", qos=1)
            again = MqttClient(
                "keeper",
                options=ConnectOptions(
                    clean_start=False, session_expiry_interval=60, connect_timeout=timeout(5)
                ),
            )
            messages = again.messages()
            result = await again.connect(url)
            assert result.session_present
            async with asyncio.timeout(timeout(5)):
                message = await anext(messages)
            assert message.payload == b"while away"
            handler = next(h for h in broker.handlers if h.client_id == "keeper")
            assert handler.peer[0] == "127.0.0.1"
            await again.disconnect()
            await pub.disconnect()

    run(main())


def test_garbage_and_spoofed_datagrams_are_dropped() -> None:
    async def main() -> None:
        async with broker_with(udp_listener()) as broker:
            port = broker.ports[0]
            url = f"mqtt-udp://127.0.0.1:{port}"
            pub, sub = await client(url, "pub"), await client(url, "sub")
            await sub.subscribe("g/#", qos=1)
            junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            junk.setblocking(False)
            try:
                for n in range(300):
                    junk.sendto(os.urandom(n % 1500 + 1), ("127.0.0.1", port))
                for first in range(256):  # every leading byte, with plausible bodies after it
                    junk.sendto(bytes([first]) + os.urandom(40), ("127.0.0.1", port))
                # a client's own datagrams replayed from another address
                junk.sendto(b"\x00" * 1472, ("127.0.0.1", port))
                await asyncio.sleep(0.2)
                replies = 0
                while True:
                    try:
                        reply = junk.recv(65536)
                    except BlockingIOError:
                        break
                    replies += 1
                    assert len(reply) <= 1472
            finally:
                junk.close()
            assert len(broker.handlers) == 2  # no connection was made for the junk
            await pubsub(pub, sub, 1, 50)
            await pub.disconnect()
            await sub.disconnect()

    run(main())


def test_nothing_listening_is_a_transport_error() -> None:
    async def main() -> None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        with pytest.raises(TransportError) as caught:
            await client(f"mqtt-udp://127.0.0.1:{port}", connect_timeout=timeout(3))
        assert caught.value.address == f"127.0.0.1:{port}"

    run(main())


def test_will_after_a_silent_udp_client() -> None:
    """A client that goes silent without a word (its path now drops everything): MQTT's
    1.5 x Keep Alive applies, and the Will is published."""

    async def main() -> None:
        async with broker_with(udp_listener()) as broker:
            watcher = await client(f"mqtt-udp://127.0.0.1:{broker.ports[0]}", "watcher")
            await watcher.subscribe("wills/#", qos=1)
            async with relayed(broker.ports[0]) as (relay, port):
                will = Will("wills/gone", b"gone", 1)
                url = f"mqtt-udp://127.0.0.1:{port}"
                doomed = await client(url, "doomed", keep_alive=1, will=will)
                handler = next(h for h in broker.handlers if h.client_id == "doomed")
                messages = watcher.messages()
                relay.loss = 1.0  # a black hole from now on
                async with asyncio.timeout(timeout(10)):
                    message = await anext(messages)
            assert message.topic == "wills/gone"
            async with asyncio.timeout(timeout(10)):  # the close handshake waits a little
                while handler in broker.handlers:
                    await asyncio.sleep(0.05)
            await watcher.disconnect()
            assert doomed._stream is not None
            doomed._stream.abort()  # its own keep-alive would notice later; the test ends now

    run(main())


@asynccontextmanager
async def relayed(broker_port: int, loss: float = 0.0) -> AsyncIterator[tuple[UdpRelay, int]]:
    relay = UdpRelay(("127.0.0.1", broker_port), loss=loss, seed=7)
    port = await relay.start()
    try:
        yield relay, port
    finally:
        relay.close()


def test_qos1_and_qos2_through_a_lossy_path() -> None:
    async def main() -> None:
        async with broker_with(udp_listener(rto_min=0.02)) as broker:
            async with relayed(broker.ports[0], loss=0.1) as (relay, port):
                url = f"mqtt-udp://127.0.0.1:{port}"
                # a lost handshake datagram costs the initial RTO (1 s, doubling): allow several
                slow = {"connect_timeout": timeout(20)}
                pub, sub = await client(url, "pub", **slow), await client(url, "sub", **slow)
                await pubsub(pub, sub, 1, 100)
                await pubsub(pub, sub, 2, 50, size=5000)
                await pub.disconnect()
                await sub.disconnect()
            assert relay.dropped > 20

    run(main(), 60)


def test_session_survives_nat_rebinding() -> None:
    async def main() -> None:
        async with (
            broker_with(udp_listener(rto_min=0.05)) as broker,
            relayed(broker.ports[0]) as (relay, port),
        ):
            url = f"mqtt-udp://127.0.0.1:{port}"
            pub, sub = await client(url, "pub"), await client(url, "sub")
            handler = next(h for h in broker.handlers if h.client_id == "sub")
            before = handler.transport.get_extra_info("peername")
            await pubsub(pub, sub, 1, 10)
            await relay.rebind()
            await pubsub(pub, sub, 1, 10)
            after = handler.transport.get_extra_info("peername")
            assert after != before  # the same connection, moved
            assert handler in broker.handlers
            await pub.disconnect()
            await sub.disconnect()

    run(main())


# --- DTLS -----------------------------------------------------------------------------------------


def test_dtls_psk_identity_is_the_user_name(psk_file: Path, tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite alice/#\ntopic readwrite e2e/#\n")

    async def main() -> None:
        listener = dtls_listener(psk_file=str(psk_file), acl_file=str(acl))
        async with broker_with(listener) as broker:
            url = f"mqtts-dtls://127.0.0.1:{broker.ports[0]}"
            alice = await client(url, "a", dtls={"psk_identity": "alice", "psk": PSK_KEY})
            handler = next(h for h in broker.handlers if h.client_id == "a")
            assert handler.username == "alice"
            for qos in (0, 1, 2):
                sub = await client(url, f"s{qos}", dtls={"psk_identity": "alice", "psk": PSK_KEY})
                await pubsub(alice, sub, qos, 20)
                await sub.disconnect()
            refused = await alice.subscribe("bob/#", qos=1)
            assert refused[0] == 0x87  # the ACL applies to the PSK identity
            await alice.disconnect()
            with pytest.raises(TlsError):
                await client(url, "x", dtls={"psk_identity": "alice", "psk": "ff" * 16})
            with pytest.raises(TlsError):
                await client(url, "y", dtls={"psk_identity": "mallory", "psk": PSK_KEY})

    run(main())


def test_dtls_with_certificates(certs: Certs) -> None:
    async def main() -> None:
        listener = dtls_listener(
            certfile=str(certs.server),
            keyfile=str(certs.server),
            cafile=str(certs.ca_file),
            require_certificate=True,
        )
        async with broker_with(listener) as broker:
            url = f"mqtts-dtls://127.0.0.1:{broker.ports[0]}"
            mutual = {"ca_file": str(certs.ca_file), "cert_file": str(certs.client)}
            one = await client(url, "one", dtls=mutual | {"key_file": str(certs.client)})
            handler = next(h for h in broker.handlers if h.client_id == "one")
            assert handler.username == "client-one"
            two = await client(url, "two", dtls=mutual | {"key_file": str(certs.client)})
            await pubsub(one, two, 1, 30, size=3000)
            await one.disconnect()
            await two.disconnect()
            with pytest.raises(TlsError):  # no client certificate
                await client(url, "anon", dtls={"ca_file": str(certs.ca_file)})
            with pytest.raises(TlsError):  # a server we do not trust
                await client(url, "wary", dtls={"ca_file": str(certs.other_ca_file)})

    run(main())


def test_dtls_session_survives_rebinding_with_a_new_handshake(psk_file: Path) -> None:
    async def main() -> None:
        listener = dtls_listener(psk_file=str(psk_file), rto_min=0.05)
        async with broker_with(listener) as broker, relayed(broker.ports[0]) as (relay, port):
            url = f"mqtts-dtls://127.0.0.1:{port}"
            keys = {"psk_identity": "bob", "psk": "ab" * 16}
            pub, sub = await client(url, "pub", dtls=keys), await client(url, "sub", dtls=keys)
            handler = next(h for h in broker.handlers if h.client_id == "sub")
            before = handler.transport.get_extra_info("peername")
            await pubsub(pub, sub, 1, 5)
            await relay.rebind()
            await pubsub(pub, sub, 1, 5)
            assert handler.transport.get_extra_info("peername") != before
            assert handler in broker.handlers and handler.username == "bob"
            await pub.disconnect()
            await sub.disconnect()

    run(main(), 60)


# --- command line ---------------------------------------------------------------------------------


def _cli(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mqttv5", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def test_cli_pub_sub_over_udp_and_dtls(psk_file: Path) -> None:
    async def main() -> None:
        listeners = (udp_listener(), dtls_listener(psk_file=str(psk_file)))
        async with broker_with(*listeners) as broker:
            udp, dtls = broker.ports
            for url, extra in (
                (f"mqtt-udp://127.0.0.1:{udp}/cli/t", []),
                (
                    f"mqtts-dtls://127.0.0.1:{dtls}/cli/t",
                    ["--psk-identity", "bob", "--psk", "ab" * 16],
                ),
            ):
                sub = _cli("sub", "-L", url, "-q", "1", "-C", "1", *extra)
                await asyncio.sleep(1.0)  # let it subscribe
                pub = _cli("pub", "-L", url, "-q", "1", "-m", "hello", *extra)
                out, err = await asyncio.to_thread(pub.communicate, timeout=timeout(15))
                assert pub.returncode == 0, err
                out, err = await asyncio.to_thread(sub.communicate, timeout=timeout(15))
                assert sub.returncode == 0, err
                assert out == b"hello\n"

    run(main(), 60)


def test_broker_flags_open_udp_and_dtls_listeners(psk_file: Path) -> None:
    from mqttv5.broker.config import config_from_args
    from mqttv5.cli.broker import build_parser

    args = build_parser().parse_args(
        ["--udp-port", "1999", "--dtls-port", "2999", "--psk-file", str(psk_file)]
    )
    config = config_from_args(args)
    kinds = {(lis.type, lis.port, lis.psk_file) for lis in config.listeners}
    assert ("udp", 1999, None) in kinds
    assert ("dtls", 2999, str(psk_file)) in kinds


# --- interop and configuration errors ----------------------------------------------------------


@pytest.mark.interop
def test_openssl_s_client_handshakes_with_the_dtls_listener(psk_file: Path, certs: Certs) -> None:
    async def main() -> None:
        listener = dtls_listener(
            psk_file=str(psk_file), certfile=str(certs.server), keyfile=str(certs.server)
        )
        async with broker_with(listener) as broker:
            port = broker.ports[0]
            out = await s_client(port, "-psk_identity", "alice", "-psk", PSK_KEY)
            assert "Cipher is" in out and "PSK" in out, out
            out = await s_client(port, "-CAfile", str(certs.ca_file), "-verify_return_error")
            assert "Verify return code: 0 (ok)" in out, out
            assert "Cipher is ECDHE-" in out, out
            await pubsub_still_works(broker.ports[0])

    run(main())


async def pubsub_still_works(port: int) -> None:
    keys = {"psk_identity": "alice", "psk": PSK_KEY}
    url = f"mqtts-dtls://127.0.0.1:{port}"
    pub, sub = await client(url, "p", dtls=keys), await client(url, "s", dtls=keys)
    await pubsub(pub, sub, 1, 5)
    await pub.disconnect()
    await sub.disconnect()


def test_a_bad_psk_file_stops_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "psk"
    bad.write_text("alice:00112233\nbob:not-hex\n")

    async def main() -> None:
        with pytest.raises(ConfigError) as caught:
            async with broker_with(dtls_listener(psk_file=str(bad))):
                pass
        assert caught.value.key == "psk_file"
        assert f"{bad}:2" in str(caught.value)

    run(main())


def test_udp_and_dtls_on_uvloop(psk_file: Path) -> None:
    """The broker runs on uvloop by default (`mqttv5 broker`): its timer handles differ."""
    import uvloop

    async def main() -> None:
        listeners = (udp_listener(rto_min=0.02), dtls_listener(psk_file=str(psk_file)))
        async with broker_with(*listeners) as broker:
            udp, dtls = broker.ports
            async with relayed(udp, loss=0.05) as (relay, port):
                slow = {"connect_timeout": timeout(20)}
                url = f"mqtt-udp://127.0.0.1:{port}"
                pub, sub = await client(url, "pub", **slow), await client(url, "sub", **slow)
                await pubsub(pub, sub, 1, 200)
                await pub.disconnect()
                await sub.disconnect()
            assert relay.dropped > 0
            keys = {"psk_identity": "bob", "psk": "ab" * 16}
            url = f"mqtts-dtls://127.0.0.1:{dtls}"
            pub, sub = await client(url, "p", dtls=keys), await client(url, "s", dtls=keys)
            await pubsub(pub, sub, 2, 50)
            await pub.disconnect()
            await sub.disconnect()

    async def bounded() -> None:
        async with asyncio.timeout(timeout(60)):
            await main()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(bounded())


def test_connections_per_address_are_limited_and_others_unharmed() -> None:
    async def main() -> None:
        async with broker_with(udp_listener(max_connections_per_address=2)) as broker:
            url = f"mqtt-udp://127.0.0.1:{broker.ports[0]}"
            a, b = await client(url, "a"), await client(url, "b")
            with pytest.raises(TransportError) as caught:
                await client(url, "c", connect_timeout=timeout(3))
            assert caught.value.message == "the server refused the connection (connection limit)"
            assert {h.client_id for h in broker.handlers} == {"a", "b"}
            await pubsub(a, b, 1, 20)
            await a.disconnect()
            third = await client(url, "c")  # a slot is free again
            await third.disconnect()
            await b.disconnect()

    run(main())


def test_garbage_to_the_dtls_port_leaves_sessions_alone(psk_file: Path) -> None:
    async def main() -> None:
        async with broker_with(dtls_listener(psk_file=str(psk_file))) as broker:
            port = broker.ports[0]
            keys = {"psk_identity": "alice", "psk": PSK_KEY}
            url = f"mqtts-dtls://127.0.0.1:{port}"
            pub, sub = await client(url, "p", dtls=keys), await client(url, "s", dtls=keys)
            junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            junk.setblocking(False)
            try:
                for n in range(300):
                    junk.sendto(os.urandom(n % 1400 + 1), ("127.0.0.1", port))
                for content_type in (20, 21, 22, 23):  # DTLS record types with random bodies
                    for _ in range(50):
                        record = bytes([content_type, 0xFE, 0xFD]) + os.urandom(40)
                        junk.sendto(record, ("127.0.0.1", port))
                await asyncio.sleep(0.2)
                while True:
                    try:
                        reply = junk.recv(65536)
                    except BlockingIOError:
                        break
                    assert len(reply) <= 1472
            finally:
                junk.close()
            assert {h.client_id for h in broker.handlers} == {"p", "s"}
            await pubsub(pub, sub, 1, 30)
            await pub.disconnect()
            await sub.disconnect()

    run(main())


def test_a_tick_of_output_larger_than_a_udp_message_is_split() -> None:
    """The broker writes a tick's output at once; to a UDP client that may exceed the largest
    message the reliability layer carries (1 MiB): it goes as several messages of the stream."""

    async def main() -> None:
        async with broker_with(udp_listener(), tcp_listener()) as broker:
            udp, tcp = broker.ports
            sub = await client(f"mqtt-udp://127.0.0.1:{udp}", "big-sub")
            pub = await client(f"mqtt://127.0.0.1:{tcp}", "big-pub")
            # QoS 1 (QoS 0 may be dropped for a subscriber past the outbound high-water mark),
            # published back to back: the broker writes them to the subscriber in one tick
            await pubsub(pub, sub, 1, 4, size=900_000)
            await pub.disconnect()
            await sub.disconnect()

    run(main(), 60)


def test_a_dtls_peer_silent_after_its_handshake_is_forgotten(psk_file: Path) -> None:
    """A completed DTLS handshake that no MQTT-over-UDP connection follows holds memory: the
    broker closes it after ``idle_timeout``; other sessions carry on."""
    from mqttv5.transport.dtls import DtlsClient, DtlsClientSettings

    async def handshake(port: int) -> tuple[socket.socket, DtlsClient]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        dtls = DtlsClient(DtlsClientSettings(psk_identity="alice", psk=bytes.fromhex(PSK_KEY)))
        dtls.start(loop.time())
        async with asyncio.timeout(timeout(10)):
            while not dtls.established:
                for datagram in dtls.datagrams_to_send():
                    sock.send(datagram)
                await asyncio.sleep(0.01)
                try:
                    while True:
                        dtls.datagram_received(sock.recv(65536), loop.time())
                except BlockingIOError:
                    pass
                if (due := dtls.get_timer()) is not None and due <= loop.time():
                    dtls.handle_timer(loop.time())
        return sock, dtls

    async def main() -> None:
        listener = dtls_listener(psk_file=str(psk_file), idle_timeout=1.0)
        async with broker_with(listener) as broker:
            port = broker.ports[0]
            endpoint = broker.listeners[0].udp
            assert endpoint is not None and endpoint.dtls is not None
            keys = {"psk_identity": "alice", "psk": PSK_KEY}
            url = f"mqtts-dtls://127.0.0.1:{port}"
            pub = await client(url, "p", dtls=keys)
            sock, _ = await handshake(port)
            silent = sock.getsockname()
            try:
                assert endpoint.dtls.is_established(silent)
                await asyncio.sleep(1.5)
                assert not endpoint.dtls.is_established(silent)
            finally:
                sock.close()
            sub = await client(url, "s", dtls=keys)
            await pubsub(pub, sub, 1, 10)  # the broker and its sessions are unharmed
            await pub.disconnect()
            await sub.disconnect()

    run(main())


def test_udp_over_ipv6_uses_the_smaller_datagram() -> None:
    async def main() -> None:
        listener = ListenerSettings(type="udp", bind="::1", port=0)
        async with broker_with(listener) as broker:
            url = f"mqtt-udp://[::1]:{broker.ports[0]}"
            pub, sub = await client(url, "pub6"), await client(url, "sub6")
            assert sub._stream is not None
            assert sub._stream._transport.conn.settings.mtu == 1452  # type: ignore[attr-defined]
            handler = next(h for h in broker.handlers if h.client_id == "sub6")
            assert handler.transport.conn.settings.mtu == 1452
            await pubsub(pub, sub, 1, 5, size=20_000)
            await pub.disconnect()
            await sub.disconnect()

    run(main())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--psk", "0011"], "--psk and --psk-identity go together"),
        (["--psk-identity", "a"], "--psk and --psk-identity go together"),
        (["--psk-identity", "a", "--psk", "xyz"], "--psk: not a hexadecimal key"),
        (["--psk-identity", "a", "--psk", ""], "--psk: empty key"),
        (
            ["--psk-identity", "a", "--psk", "00", "-L", "mqtt://127.0.0.1/t"],
            "--psk needs a mqtts-dtls:// URL (not mqtt://)",
        ),
    ],
)
def test_cli_psk_flags_are_checked(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mqttv5", "pub", "-t", "t", "-m", "x", *args],
        capture_output=True,
        timeout=timeout(20),
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr.decode(), result.stderr
