"""PROXY protocol v2 on a tcp listener: believed only from `trusted_proxies`."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from mqttv5.broker.config import BrokerConfig, ListenerSettings
from mqttv5.broker.handler import parse_proxy_v2_untrusted
from mqttv5.protocol.errors import ConfigError
from mqttv5.protocol.packets import Connack, Connect
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(src: str, src_port: int, command: int = 0x21) -> bytes:
    ip = ipaddress.ip_address(src)
    if ip.version == 4:
        body = ip.packed + bytes(4) + struct.pack("!HH", src_port, 1883)
        family = 0x11
    else:
        body = ip.packed + bytes(16) + struct.pack("!HH", src_port, 1883)
        family = 0x21
    return SIGNATURE + bytes((command, family)) + struct.pack("!H", len(body)) + body


def peer_of(broker, client_id: str) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    return next(h.peer for h in broker.handlers if h.client_id == client_id)


def test_header_from_a_trusted_proxy_gives_the_client_address() -> None:
    async def main() -> None:
        async with started_broker(listener={"trusted_proxies": ["127.0.0.0/8"]}) as b:
            for src, port in (("203.0.113.7", 4242), ("2001:db8::5", 5555)):
                c = await RawClient.open(b.ports[0])
                header = v2_header(src, port)
                c.send_bytes(header[:7])  # split anywhere: it is reassembled
                c.send_bytes(header[7:] + Connect(f"via-{port}").encode())
                assert (await c.expect(Connack)).reason_code == 0
                assert peer_of(b, f"via-{port}") == (src, port)
            # no header at all from a trusted proxy: the connection is taken as it is
            plain = await RawClient.connect(b.ports[0], "direct")
            assert plain.connack.reason_code == 0
            assert peer_of(b, "direct")[0] == "127.0.0.1"
            # LOCAL (the proxy's own health check) keeps the proxy's address
            c = await RawClient.open(b.ports[0])
            c.send_bytes(v2_header("198.51.100.1", 1, command=0x20) + Connect("local").encode())
            await c.expect(Connack)
            assert peer_of(b, "local")[0] == "127.0.0.1"

    run(main())


def test_header_from_an_untrusted_peer_is_not_believed() -> None:
    async def main() -> None:
        async with started_broker(listener={"trusted_proxies": ["10.0.0.0/8"]}) as b:
            c = await RawClient.open(b.ports[0])
            c.send_bytes(v2_header("203.0.113.7", 4242) + Connect("spoof").encode())
            packets = await c.closed()  # the header is garbage MQTT: closed, nothing accepted
            assert not any(isinstance(p, Connack) and p.reason_code == 0 for p in packets)
            assert all(h.client_id != "spoof" for h in b.handlers)

    run(main())


def test_parser_ignores_what_it_cannot_map() -> None:
    assert parse_proxy_v2_untrusted(0x21, 0x31, b"/tmp/socket") is None  # UNIX sockets
    assert parse_proxy_v2_untrusted(0x21, 0x11, b"\x01\x02") is None  # truncated
    assert parse_proxy_v2_untrusted(0x22, 0x11, bytes(12)) is None  # unknown command


def test_trusted_proxies_not_on_tls_listeners(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mqttv5.broker.config import validate_config

    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")  # only their existence is checked here
    listener = ListenerSettings(
        type="tls",
        port=0,
        certfile=str(tmp_path / "cert.pem"),
        keyfile=str(tmp_path / "key.pem"),
        trusted_proxies=["10.0.0.0/8"],
    )
    with pytest.raises(ConfigError) as info:
        validate_config(BrokerConfig(listeners=[listener]))
    assert info.value.key == "listener[0].trusted_proxies"
    assert "tcp, ws and wss" in info.value.message
