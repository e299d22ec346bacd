"""CONNECT / CONNACK over real sockets (section 3.1, 3.2)."""

from __future__ import annotations

import asyncio

import pytest

from mqttv5.protocol.packets import Connack, Connect, Disconnect, Pingreq, Pingresp, Publish
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient


class TestConnack:
    @pytest.mark.spec("MQTT-3.2.2-2", "MQTT-3.1.2-4")
    def test_connack_properties_and_session_present(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "c1")
                props = c.connack.properties
                assert c.connack.session_present is False
                assert props.receive_maximum == 20
                assert props.topic_alias_maximum == 10
                assert props.maximum_packet_size == b.config.max_packet_size
                assert props.assigned_client_identifier is None
                await c.disconnect()

        run(main())

    @pytest.mark.spec("MQTT-3.1.3-6", "MQTT-3.2.2-16")
    def test_empty_client_id_is_assigned(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "")
                assigned = c.connack.properties.assigned_client_identifier
                assert assigned and assigned.startswith("auto-")
                await c.disconnect()

        run(main())

    def test_empty_client_id_without_clean_start_refused(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "", clean_start=False, expect_code=0x85)
                assert await c.closed() == []
                # 3.1.1: identifier rejected (0x02)
                c = await RawClient.open(b.ports[0], version=4)
                c.send(Connect("", protocol_level=4, clean_start=False))
                assert (await c.recv()).encode(4) == b"\x20\x02\x00\x02"

        run(main())

    @pytest.mark.spec("MQTT-3.2.2-21")
    def test_server_keep_alive_caps_client(self) -> None:
        async def main() -> None:
            async with started_broker(max_keepalive=30) as b:
                c = await RawClient.connect(b.ports[0], "k", keep_alive=600)
                assert c.connack.properties.server_keep_alive == 30
                await c.disconnect()

        run(main())

    def test_session_expiry_capped(self) -> None:
        async def main() -> None:
            async with started_broker(max_session_expiry=100) as b:
                c = await RawClient.connect(
                    b.ports[0], "e", properties=Properties(session_expiry_interval=5000)
                )
                assert c.connack.properties.session_expiry_interval == 100
                await c.disconnect()

        run(main())

    @pytest.mark.spec("MQTT-3.1.2-2")
    def test_unsupported_protocol_level_gets_connack_0x84(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.open(b.ports[0], version=4)
                # protocol level 6: refused with a 3.1.1-format CONNACK, return code 1
                c.send_bytes(
                    bytes.fromhex("100d0004") + b"MQTT" + bytes.fromhex("0602003c0001") + b"x"
                )
                packets = await c.closed()
                assert len(packets) == 1
                assert isinstance(packets[0], Connack)
                assert packets[0].reason_code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION

        run(main())

    def test_v311_client_connects(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "old", version=4)
                c.send(Pingreq())
                assert isinstance(await c.recv(), Pingresp)
                await c.disconnect()

        run(main())

    def test_bridge_bit_accepted(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.open(b.ports[0], version=4)
                c.send(Connect("bridge", protocol_level=4, is_bridge=True))
                connack = await c.expect(Connack)
                assert connack.reason_code == 0

        run(main())


class TestConnectErrors:
    @pytest.mark.spec("MQTT-3.1.0-1")
    def test_first_packet_not_connect_closes(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.open(b.ports[0])
                c.send(Publish("a", b"x"))
                packets = await c.closed()
                assert not any(isinstance(p, Connack) and p.reason_code == 0 for p in packets)

        run(main())

    @pytest.mark.spec("MQTT-3.1.0-2")
    def test_second_connect_is_protocol_error(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "twice")
                c.send(Connect("twice"))
                packets = await c.closed()
                assert isinstance(packets[-1], Disconnect)
                assert packets[-1].reason_code == ReasonCode.PROTOCOL_ERROR

        run(main())

    @pytest.mark.spec("MQTT-3.1.2-3")
    def test_reserved_connect_flag_is_malformed(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.open(b.ports[0])
                data = bytearray(Connect("r").encode(5))
                data[9] |= 0x01  # connect flags byte
                c.send_bytes(bytes(data))
                packets = await c.closed()
                assert packets and isinstance(packets[0], Connack)
                assert packets[0].reason_code == ReasonCode.MALFORMED_PACKET

        run(main())

    def test_silent_socket_closed_after_connect_timeout(self) -> None:
        async def main() -> None:
            async with started_broker(connect_timeout=0.3) as b:
                c = await RawClient.open(b.ports[0])
                assert await c.closed(wait=3) == []
                assert not b.handlers

        run(main())

    def test_client_id_too_long(self) -> None:
        async def main() -> None:
            async with started_broker(max_client_id_length=8) as b:
                await RawClient.connect(b.ports[0], "x" * 9, expect_code=0x85)

        run(main())


class TestKeepAlive:
    @pytest.mark.spec("MQTT-3.1.2-22")
    def test_silent_client_disconnected_after_one_and_a_half_keep_alive(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "ka", keep_alive=1)
                loop = asyncio.get_running_loop()
                start = loop.time()
                packets = await c.closed(wait=5)
                elapsed = loop.time() - start
                assert isinstance(packets[-1], Disconnect)
                assert packets[-1].reason_code == ReasonCode.KEEP_ALIVE_TIMEOUT
                assert 1.4 <= elapsed < 3.0

        run(main())

    def test_pings_keep_connection_alive(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "kp", keep_alive=1)
                for _ in range(4):
                    await asyncio.sleep(0.5)
                    c.send(Pingreq())
                    assert isinstance(await c.recv(), Pingresp)
                await c.disconnect()

        run(main())


class TestTakeover:
    @pytest.mark.spec("MQTT-3.1.4-3")
    def test_second_connection_takes_over(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                old = await RawClient.connect(
                    port, "same", properties=Properties(session_expiry_interval=60)
                )
                await old.subscribe("t/#", qos=1)
                new = await RawClient.connect(
                    port,
                    "same",
                    clean_start=False,
                    properties=Properties(session_expiry_interval=60),
                )
                assert new.connack.session_present is True
                packets = await old.closed(wait=1)
                assert isinstance(packets[-1], Disconnect)
                assert packets[-1].reason_code == ReasonCode.SESSION_TAKEN_OVER
                pub = await RawClient.connect(port, "pub")
                await pub.publish("t/x", b"hello", qos=1)
                got = await new.expect(Publish)
                assert got.payload == b"hello"

        run(main())
