"""The URL registry (scheme -> opener, and the checks of transport settings) and the
``mqttv5 sub -F`` formatter."""

from __future__ import annotations

import pytest

from mqttv5 import MqttClient, MqttError, Properties
from mqttv5.cli.sub import format_message
from mqttv5.client import Message
from mqttv5.protocol.packets import Publish
from mqttv5.transport import open_url, parse_url
from mqttv5.transport.dtls import DtlsClientSettings
from mqttv5.transport.udp import UdpSettings

from .mosquitto import run


def test_parse_url_defaults() -> None:
    assert str(parse_url("localhost")) == "mqtt://localhost:1883"
    ep = parse_url("tcp://user:pa%20ss@[::1]:1999/some/topic?x=1")
    assert (ep.scheme, ep.host, ep.port, ep.username, ep.password) == (
        "tcp", "::1", 1999, "user", "pa ss",
    )  # fmt: skip
    assert ep.path == "/some/topic" and ep.query == {"x": "1"}
    assert parse_url("mqtts://h").port == 8883 and parse_url("ws://h").port == 8080


def test_udp_schemes_and_their_default_ports() -> None:
    assert parse_url("mqtt-udp://h").port == 1884
    assert parse_url("mqtts-dtls://h").port == 8884


def test_dtls_without_keys_says_what_is_missing() -> None:
    with pytest.raises(MqttError, match=r"needs a PSK .* or a CA file"):
        run(open_url("mqtts-dtls://127.0.0.1:9"))


def test_udp_settings_need_a_udp_scheme() -> None:
    with pytest.raises(MqttError, match="UDP settings given for mqtt://h:1883"):
        run(open_url("mqtt://h", udp=UdpSettings()))
    with pytest.raises(MqttError, match=r"DTLS settings given for .*: use mqtts-dtls://"):
        run(open_url("mqtt-udp://h", dtls=DtlsClientSettings(psk_identity="a", psk=b"k")))


def test_unknown_scheme() -> None:
    with pytest.raises(MqttError, match="unknown URL scheme 'gopher'"):
        parse_url("gopher://h")
    with pytest.raises(MqttError, match="unknown URL scheme 'gopher'"):
        run(MqttClient("x").connect("gopher://localhost"))


def test_format_specifiers() -> None:
    props = Properties(
        user_properties=[("a", "1"), ("b", "2")], content_type="ct", response_topic="rt",
        correlation_data=b"cd", message_expiry_interval=9, payload_format_indicator=1,
        subscription_identifiers=[3, 4],
    )  # fmt: skip
    pkt = Publish("t/1", b"hi", 1, True, packet_id=7, properties=props)
    msg = Message(pkt)
    out = format_message(
        "%t|%p|%q|%r|%m|%l|%x|%X|%P|%C|%R|%D|%E|%F|%S|%A|%i|%%|%5t|%-5q|%03l|%.1t\\n",
        msg, "me", now=1_700_000_000.5,
    )  # fmt: skip
    assert out == b"t/1|hi|1|1|7|2|6869|6869|a:1 b:2|ct|rt|cd|9|1|3,4||me|%|  t/1|1    |002|t\n"
    assert format_message("%U @N @@ \\0", msg, now=1.25) == b"1.250000000 250000000 @ \0"
    assert format_message("%I", msg, now=40_000_000.0).startswith(b"1971-")
    assert b'"topic": "t/1"' in format_message("%j", msg, now=1.0)
