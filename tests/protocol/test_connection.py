"""Tests for mqttv5.protocol.connection: one connection's state machine, client and server side.

Two Connections are joined in memory with ``tests.helpers.pair()``; rule violations the real
client would refuse to send are fed to the server as raw bytes (``receive_data``).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttv5.protocol.connection import (
    CLOSED,
    CONNECTED,
    CONNECTING,
    Closed,
    Connection,
    Inflight,
    OutFlight,
    State,
)
from mqttv5.protocol.errors import InvalidState, LocalProtocolError, RemoteProtocolError
from mqttv5.protocol.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
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
from tests.helpers import assert_events, assert_sent, closed_event, pair, pump, sent_packets
from tests.protocol.strategies import any_packet

RC = ReasonCode


# --- helpers ---------------------------------------------------------------------------------


def connect(**props: Any) -> Connect:
    return Connect("c", 5, keep_alive=0, properties=Properties(**props), protocol_name="MQTT")


def connack(**props: Any) -> Connack:
    return Connack(properties=Properties(**props))


def assert_closed_with(conn: Connection, code: ReasonCode, version: int = 5) -> Closed:
    """``conn`` sent DISCONNECT ``code`` (MQTT 5.0) and reported a Closed event with the error."""
    sent = sent_packets(conn, version)
    if version == 5:
        assert sent, "nothing sent"
        last = sent[-1]
        assert isinstance(last, Disconnect), sent
        assert last.reason_code is code
        # [MQTT-3.14.2-2] a server's DISCONNECT never carries a Session Expiry Interval
        assert last.properties.session_expiry_interval is None
    event = closed_event(conn)
    assert event.error is not None
    assert event.error.reason_code is code
    if version == 5:
        assert event.sent is code
    assert conn.state is CLOSED
    return event


def state(conn: Connection) -> State:
    """The connection's state (a call, so type checkers do not narrow it across calls)."""
    return conn.state


def publish_events(conn: Connection) -> list[Publish]:
    events = conn.events_received()
    assert all(isinstance(e, Publish) for e in events), events
    return events  # type: ignore[return-value]


# --- CONNECT / CONNACK -----------------------------------------------------------------------


class TestConnectNegotiation:
    """3.1 CONNECT and 3.2 CONNACK: what each side learns from the other."""

    def test_handshake(self) -> None:
        client, server = pair(handshake=False)
        assert (client.state, server.state) == (CONNECTING, CONNECTING)
        packet = connect()
        client.send(packet)
        pump(client, server)
        assert_events(server, [packet])
        assert state(server) is CONNECTING  # until the CONNACK is sent
        server.send(Connack(RC.SUCCESS, session_present=False))
        assert server.state is CONNECTED
        pump(client, server)
        assert_events(client, [Connack()])
        assert client.state is CONNECTED

    @pytest.mark.spec("MQTT-3.1.2-21", "MQTT-3.2.2-21")
    def test_server_keep_alive_overrides(self) -> None:
        request = Connect("c", 5, keep_alive=60, protocol_name="MQTT")
        client, server = pair(connect=request, connack=connack(server_keep_alive=10))
        assert client.keep_alive == 10
        assert server.keep_alive == 10
        assert client.get_timer() == 10
        assert server.get_timer() == 15

    @pytest.mark.spec("MQTT-3.2.2-22")
    def test_client_keep_alive_used_without_server_keep_alive(self) -> None:
        request = Connect("c", 5, keep_alive=60, protocol_name="MQTT")
        client, server = pair(connect=request)
        assert client.keep_alive == server.keep_alive == 60

    def test_receive_maximum(self) -> None:
        client, server = pair(
            connect=connect(receive_maximum=3), connack=connack(receive_maximum=5)
        )
        assert (client.receive_maximum, server.peer_receive_maximum) == (3, 3)
        assert (server.receive_maximum, client.peer_receive_maximum) == (5, 5)
        assert client.send_quota == 5
        assert server.send_quota == 3

    def test_receive_maximum_default(self) -> None:
        client, server = pair()
        assert client.peer_receive_maximum == server.peer_receive_maximum == 65535

    def test_topic_alias_maximum(self) -> None:
        client, server = pair(
            connect=connect(topic_alias_maximum=4), connack=connack(topic_alias_maximum=7)
        )
        assert (client.topic_alias_maximum, server.peer_topic_alias_maximum) == (4, 4)
        assert (server.topic_alias_maximum, client.peer_topic_alias_maximum) == (7, 7)

    def test_maximum_packet_size(self) -> None:
        client, server = pair(
            connect=connect(maximum_packet_size=100), connack=connack(maximum_packet_size=200)
        )
        assert (client.max_packet_size, server.peer_maximum_packet_size) == (100, 100)
        assert (server.max_packet_size, client.peer_maximum_packet_size) == (200, 200)

    def test_maximum_qos_and_retain_available(self) -> None:
        client, server = pair(connack=connack(maximum_qos=1, retain_available=0))
        assert (server.maximum_qos, client.peer_maximum_qos) == (1, 1)
        assert not server.retain_available
        assert not client.peer_retain_available

    def test_session_expiry_interval(self) -> None:
        client, server = pair(
            connect=connect(session_expiry_interval=30),
            connack=connack(session_expiry_interval=10),
        )
        assert client.session_expiry_interval == 10
        assert server.session_expiry_interval == 10

    @pytest.mark.spec("MQTT-3.2.2-7", "MQTT-4.13.2-1")
    def test_refusing_connack_closes_both_sides(self) -> None:
        client, server = pair(handshake=False)
        client.send(connect())
        pump(client, server)
        server.events_received()
        server.send(Connack(RC.NOT_AUTHORIZED))
        assert closed_event(server) == Closed(sent=RC.NOT_AUTHORIZED)
        pump(client, server)
        events = client.events_received()
        assert events == [Connack(RC.NOT_AUTHORIZED), Closed(received=RC.NOT_AUTHORIZED)]
        assert client.close_expected()

    @pytest.mark.spec("MQTT-3.2.2-4")
    def test_session_present_after_clean_start(self) -> None:
        client, server = pair(handshake=False)
        client.send(connect())  # clean start
        pump(client, server)
        server.events_received()
        server.send(Connack(session_present=True))
        client.receive_data(b"".join(server.data_to_send()))
        event = closed_event(client)  # the client closes the network connection
        assert event.error is not None
        assert event.error.reason_code is RC.PROTOCOL_ERROR

    def test_session_present_without_clean_start(self) -> None:
        request = Connect("c", 5, clean_start=False, keep_alive=0, protocol_name="MQTT")
        client, _ = pair(connect=request, connack=Connack(session_present=True))
        assert client.state is CONNECTED

    def test_connack_only_once(self) -> None:
        _, server = pair()
        with pytest.raises(InvalidState):
            server.send(Connack())

    def test_direction_of_connect_and_connack(self) -> None:
        client, server = pair(handshake=False)
        with pytest.raises(LocalProtocolError):
            server.send(connect())
        with pytest.raises(LocalProtocolError):
            client.send(Connack())
        client.receive_data(connect().encode())
        assert closed_event(client).error is not None

    def test_server_refuses_connack(self) -> None:
        _, server = pair()
        server.receive_data(Connack().encode())
        assert_closed_with(server, RC.PROTOCOL_ERROR)

    @pytest.mark.spec("MQTT-3.1.0-2")
    def test_second_connect(self) -> None:
        _, server = pair()
        server.receive_data(connect().encode())
        assert_closed_with(server, RC.PROTOCOL_ERROR)

    @pytest.mark.spec("MQTT-3.1.0-2")
    def test_second_connect_before_connack(self) -> None:
        _, server = pair(handshake=False)
        server.receive_data(connect().encode() + connect().encode())
        events = server.events_received()
        assert events[0] == connect()
        assert isinstance(events[-1], Closed)
        assert events[-1].error is not None
        assert events[-1].error.reason_code is RC.PROTOCOL_ERROR

    @pytest.mark.parametrize(
        "first", [Publish("t", b"x"), Pingreq(), Subscribe(1, [Subscription("a")]), Disconnect()]
    )
    @pytest.mark.spec("MQTT-3.1.0-1")
    def test_first_packet_must_be_connect(self, first: Packet) -> None:
        _, server = pair(handshake=False)
        server.receive_data(first.encode(5))
        (event,) = server.events_received()  # nothing delivered, only the close
        assert isinstance(event, Closed)
        assert event.error is not None
        assert event.error.reason_code is RC.PROTOCOL_ERROR
        assert server.close_expected()
        assert not any(isinstance(p, Pingresp | Suback) for p in sent_packets(server))

    @pytest.mark.parametrize(
        ("data", "connack_bytes"),
        [
            (b"\x10\x0a\x00\x04MQTX\x05\x02\x00\x00", b"\x20\x03\x00\x84\x00"),
            (b"\x10\x0a\x00\x04MQTT\x06\x02\x00\x00", b"\x20\x02\x00\x01"),
        ],
    )
    @pytest.mark.spec("MQTT-3.1.2-1", "MQTT-3.1.2-2")
    def test_unsupported_protocol(self, data: bytes, connack_bytes: bytes) -> None:
        _, server = pair(handshake=False)
        server.receive_data(data)
        assert server.data_to_send() == [connack_bytes]
        event = closed_event(server)
        assert event.sent is RC.UNSUPPORTED_PROTOCOL_VERSION

    @pytest.mark.spec("MQTT-3.1.2-3", "MQTT-3.1.4-1")
    def test_malformed_connect_gets_connack(self) -> None:
        _, server = pair(handshake=False)
        server.receive_data(b"\x10\x0d\x00\x04MQTT\x05\x03\x00\x00\x00\x00\x00")
        assert sent_packets(server) == [Connack(RC.MALFORMED_PACKET)]
        assert closed_event(server).sent is RC.MALFORMED_PACKET

    def test_auth_before_connect(self) -> None:
        _, server = pair(handshake=False)
        server.receive_data(Auth().encode())
        assert closed_event(server).error is not None

    def test_auth_after_connect(self) -> None:
        client, server = pair()
        client.send(Auth(RC.RE_AUTHENTICATE, Properties(authentication_method="X")))
        pump(client, server)
        assert_events(server, [Auth(RC.RE_AUTHENTICATE, Properties(authentication_method="X"))])


# --- QoS 1 / QoS 2 ---------------------------------------------------------------------------


def sides(direction: str) -> tuple[Connection, Connection]:
    """(sender, receiver) of a connected pair: "c2s" or "s2c"."""
    client, server = pair()
    return (client, server) if direction == "c2s" else (server, client)


DIRECTIONS = pytest.mark.parametrize("direction", ["c2s", "s2c"])


class TestQoS1:
    """4.3.2 QoS 1: At least once delivery."""

    @DIRECTIONS
    @pytest.mark.spec(
        "MQTT-4.3.2-1",
        "MQTT-4.3.2-2",
        "MQTT-4.3.2-3",
        "MQTT-4.3.2-4",
        "MQTT-2.2.1-5",
        "MQTT-3.3.4-1",
    )
    def test_flow(self, direction: str) -> None:
        sender, receiver = sides(direction)
        packet = Publish("a/b", b"x", qos=1)
        sender.send(packet)
        assert packet.packet_id == 1
        assert set(sender.inflight.out) == {1}
        assert_sent(sender, [Publish("a/b", b"x", 1, dup=False, packet_id=1)])
        receiver.receive_data(packet.encode())
        assert publish_events(receiver) == [packet]
        assert receiver.unacknowledged == 1
        assert receiver.data_to_send() == []  # the owner acknowledges, not the connection
        receiver.ack(1)
        assert receiver.unacknowledged == 0
        pump(sender, receiver)
        assert_events(sender, [PubAck(1)])
        assert not sender.inflight.out
        assert sender.send_quota == sender.peer_receive_maximum

    @pytest.mark.spec("MQTT-4.3.2-5")
    def test_same_identifier_after_puback_is_a_new_message(self) -> None:
        client, server = pair()
        for _ in range(2):
            client.send(Publish("t", b"x", qos=1, packet_id=9))
            pump(client, server)
            assert len(publish_events(server)) == 1
            server.ack(9)
            pump(client, server)

    def test_resend_before_ack_is_not_delivered_twice(self) -> None:
        _, server = pair()
        data = Publish("t", b"x", qos=1, packet_id=3).encode()
        server.receive_data(data)
        server.receive_data(Publish("t", b"x", qos=1, dup=True, packet_id=3).encode())
        assert len(publish_events(server)) == 1
        assert server.unacknowledged == 1

    def test_ack_unknown_identifier(self) -> None:
        _, server = pair()
        with pytest.raises(LocalProtocolError) as info:
            server.ack(5)
        assert info.value.reason_code is RC.PACKET_IDENTIFIER_NOT_FOUND

    def test_unknown_puback_is_ignored(self) -> None:
        client, _ = pair()
        client.receive_data(PubAck(42).encode())
        assert client.events_received() == []
        assert client.state is CONNECTED

    def test_ack_with_error_code(self) -> None:
        client, server = pair()
        client.send(Publish("t", qos=1))
        pump(client, server)
        server.events_received()
        server.ack(1, RC.NOT_AUTHORIZED, Properties(reason_string="no"))
        pump(client, server)
        assert_events(client, [PubAck(1, RC.NOT_AUTHORIZED, Properties(reason_string="no"))])
        assert not client.inflight.out  # [MQTT-4.4.0-2] acknowledged, never resent

    def test_ack_after_close_is_remembered(self) -> None:
        _, server = pair()
        server.receive_data(Publish("t", qos=2, packet_id=4).encode())
        server.receive_eof()
        server.ack(4)
        assert 4 in server.inflight.in_qos2
        assert server.data_to_send() == []


class TestQoS2:
    """4.3.3 QoS 2: Exactly once delivery."""

    @DIRECTIONS
    @pytest.mark.spec(
        "MQTT-4.3.3-1",
        "MQTT-4.3.3-2",
        "MQTT-4.3.3-3",
        "MQTT-4.3.3-4",
        "MQTT-4.3.3-5",
        "MQTT-4.3.3-8",
        "MQTT-4.3.3-11",
        "MQTT-2.2.1-5",
    )
    def test_flow(self, direction: str) -> None:
        sender, receiver = sides(direction)
        packet = Publish("a/b", b"x", qos=2)
        sender.send(packet)
        pump(sender, receiver)
        assert publish_events(receiver) == [Publish("a/b", b"x", 2, packet_id=1)]
        receiver.ack(1)
        assert_sent(receiver, [PubRec(1)])
        sender.receive_data(PubRec(1).encode())
        assert_events(sender, [PubRec(1)])
        assert sender.inflight.out[1].released
        assert_sent(sender, [PubRel(1)])
        receiver.receive_data(PubRel(1).encode())
        assert_events(receiver, [PubRel(1)])
        assert_sent(receiver, [PubComp(1)])
        assert not receiver.inflight.in_qos2
        sender.receive_data(PubComp(1).encode())
        assert_events(sender, [PubComp(1)])
        assert not sender.inflight.out

    @DIRECTIONS
    @pytest.mark.spec("MQTT-4.3.3-10", "MQTT-4.3.3-12")
    def test_duplicate_after_pubrec_is_not_delivered_again(self, direction: str) -> None:
        sender, receiver = sides(direction)
        sender.send(Publish("t", b"once", qos=2))
        original = b"".join(sender.data_to_send())
        receiver.receive_data(original)
        assert len(publish_events(receiver)) == 1
        receiver.ack(1)
        receiver.data_to_send()  # the PUBREC is lost on the way
        # the sender retransmits with DUP set; the receiver answers PUBREC again, delivers nothing
        resent = Publish("t", b"once", qos=2, dup=True, packet_id=1).encode()
        receiver.receive_data(resent)
        assert receiver.events_received() == []
        assert_sent(receiver, [PubRec(1)])
        receiver.receive_data(resent)
        assert receiver.events_received() == []
        receiver.data_to_send()
        # PUBREL completes the exchange; after PUBCOMP the identifier starts a new message
        receiver.receive_data(PubRel(1).encode())
        assert_sent(receiver, [PubComp(1)])
        receiver.events_received()
        receiver.receive_data(original)
        assert len(publish_events(receiver)) == 1

    @pytest.mark.spec("MQTT-4.3.3-9", "MQTT-4.4.0-2")
    def test_pubrec_with_error_ends_the_flow(self) -> None:
        client, server = pair()
        client.send(Publish("t", qos=2))
        pump(client, server)
        server.events_received()
        server.ack(1, RC.QUOTA_EXCEEDED)
        assert 1 not in server.inflight.in_qos2
        pump(client, server)
        assert_events(client, [PubRec(1, RC.QUOTA_EXCEEDED)])
        assert not client.inflight.out
        assert client.data_to_send() == []  # no PUBREL
        # the same identifier is a new message for the receiver
        client.send(Publish("t", b"again", qos=2, packet_id=1))
        pump(client, server)
        assert len(publish_events(server)) == 1

    def test_unknown_pubrel_and_pubrec(self) -> None:
        client, server = pair()
        server.receive_data(PubRel(7).encode())
        assert_sent(server, [PubComp(7, RC.PACKET_IDENTIFIER_NOT_FOUND)])
        client.receive_data(PubRec(8).encode())
        assert_sent(client, [PubRel(8, RC.PACKET_IDENTIFIER_NOT_FOUND)])
        assert client.state is server.state is CONNECTED

    def test_pubrec_again_after_release_resends_pubrel(self) -> None:
        client, _server = pair()
        client.send(Publish("t", qos=2))
        client.data_to_send()
        client.receive_data(PubRec(1).encode())
        client.receive_data(PubRec(1).encode())
        assert_sent(client, [PubRel(1), PubRel(1)])

    def test_puback_for_a_qos2_message_is_ignored(self) -> None:
        client, _ = pair()
        client.send(Publish("t", qos=2))
        client.receive_data(PubAck(1).encode())
        assert client.events_received() == []
        assert 1 in client.inflight.out


class TestReceiveMaximum:
    """3.3.4 / 4.9 Flow control."""

    @pytest.mark.spec("MQTT-3.3.4-7", "MQTT-4.13.1-1")
    def test_server_refuses_more_than_its_receive_maximum(self) -> None:
        _, server = pair(connack=connack(receive_maximum=2))
        for pid in (1, 2, 3):
            server.receive_data(Publish("t", b"", qos=1 + pid % 2, packet_id=pid).encode())
        assert len([e for e in server.events_received() if isinstance(e, Publish)]) == 2
        # the events were drained above; the close is reported once
        server.events_received()
        assert server.state is CLOSED
        (disconnect,) = sent_packets(server)
        assert isinstance(disconnect, Disconnect)
        assert disconnect.reason_code is RC.RECEIVE_MAXIMUM_EXCEEDED

    @pytest.mark.spec("MQTT-3.3.4-7")
    def test_close_event_carries_the_error(self) -> None:
        _, server = pair(connack=connack(receive_maximum=1))
        server.receive_data(Publish("t", qos=1, packet_id=1).encode())
        server.events_received()
        server.receive_data(Publish("t", qos=1, packet_id=2).encode())
        assert_closed_with(server, RC.RECEIVE_MAXIMUM_EXCEEDED)

    def test_acknowledged_messages_free_the_window(self) -> None:
        _, server = pair(connack=connack(receive_maximum=1))
        for pid in range(1, 5):
            server.receive_data(Publish("t", qos=1, packet_id=pid).encode())
            server.ack(pid)
        assert server.state is CONNECTED

    def test_unreleased_qos2_counts(self) -> None:
        _, server = pair(connack=connack(receive_maximum=1))
        server.receive_data(Publish("t", qos=2, packet_id=1).encode())
        server.ack(1)  # PUBREC sent, PUBREL not yet received
        server.events_received()
        server.receive_data(Publish("t", qos=1, packet_id=2).encode())
        assert_closed_with(server, RC.RECEIVE_MAXIMUM_EXCEEDED)

    @pytest.mark.spec("MQTT-3.3.4-9")
    def test_client_refuses_more_than_its_receive_maximum(self) -> None:
        client, _ = pair(connect=connect(receive_maximum=1))
        client.receive_data(Publish("t", qos=1, packet_id=1).encode())
        client.receive_data(Publish("t", qos=1, packet_id=2).encode())
        assert_closed_with(client, RC.RECEIVE_MAXIMUM_EXCEEDED)

    @pytest.mark.spec("MQTT-4.9.0-1", "MQTT-4.9.0-2", "MQTT-4.9.0-3", "MQTT-3.3.4-8")
    def test_send_quota(self) -> None:
        client, server = pair(connack=connack(receive_maximum=2))
        assert client.send_quota == 2
        client.send(Publish("t", qos=1))
        client.send(Publish("t", qos=2))
        assert client.send_quota == 0
        with pytest.raises(LocalProtocolError) as info:
            client.send(Publish("t", qos=1))
        assert info.value.reason_code is RC.RECEIVE_MAXIMUM_EXCEEDED
        # QoS 0 and every other packet still go out
        client.send(Publish("t", qos=0))
        client.send(Subscribe(5, [Subscription("a")]))
        client.send(Pingreq())
        pump(client, server)
        assert len(server.events_received()) == 5
        server.ack(1)
        pump(client, server)
        assert client.send_quota == 1


# --- Topic aliases ---------------------------------------------------------------------------


def aliased(topic: str, alias: int, qos: int = 0) -> Publish:
    props = Properties(topic_alias=alias)
    return Publish(topic, b"x", qos, packet_id=1 if qos else None, properties=props)


class TestTopicAlias:
    """3.3.2.3.4 Topic Alias (inbound; the server advertised Topic Alias Maximum 5)."""

    @pytest.mark.spec("MQTT-3.3.2-12")
    def test_set_and_reuse(self) -> None:
        client, server = pair(connack=connack(topic_alias_maximum=5))
        for packet in (aliased("a/b", 1), aliased("", 1), aliased("c", 5), aliased("", 5)):
            client.send(packet)
        pump(client, server)
        assert [p.topic for p in publish_events(server)] == ["a/b", "a/b", "c", "c"]
        client.send(aliased("d", 1))  # remap alias 1
        client.send(aliased("", 1))
        pump(client, server)
        assert [p.topic for p in publish_events(server)] == ["d", "d"]

    @pytest.mark.parametrize("alias", [0, 6, 65535])
    @pytest.mark.spec("MQTT-3.3.2-8", "MQTT-3.3.2-9")
    def test_invalid_alias(self, alias: int) -> None:
        _, server = pair(connack=connack(topic_alias_maximum=5))
        server.receive_data(aliased("t", alias).encode())
        assert_closed_with(server, RC.TOPIC_ALIAS_INVALID)

    @pytest.mark.spec("MQTT-3.2.2-18")
    def test_no_alias_allowed_by_default(self) -> None:
        _, server = pair()
        server.receive_data(aliased("t", 1).encode())
        assert_closed_with(server, RC.TOPIC_ALIAS_INVALID)

    def test_unknown_alias(self) -> None:
        _, server = pair(connack=connack(topic_alias_maximum=5))
        server.receive_data(aliased("", 2).encode())
        assert_closed_with(server, RC.PROTOCOL_ERROR)

    @pytest.mark.spec("MQTT-3.3.2-7")
    def test_aliases_last_one_connection(self) -> None:
        _client, server = pair(connack=connack(topic_alias_maximum=5))
        server.receive_data(aliased("t", 1).encode())
        assert len(publish_events(server)) == 1
        _, server2 = pair(connack=connack(topic_alias_maximum=5))
        server2.receive_data(aliased("", 1).encode())
        assert_closed_with(server2, RC.PROTOCOL_ERROR)

    @pytest.mark.parametrize("alias", [0, 6])
    @pytest.mark.spec("MQTT-3.2.2-17")
    def test_client_refuses_to_send_an_invalid_alias(self, alias: int) -> None:
        client, _ = pair(connack=connack(topic_alias_maximum=5))
        with pytest.raises(LocalProtocolError) as info:
            client.send(aliased("t", alias))
        assert info.value.reason_code is RC.TOPIC_ALIAS_INVALID

    @pytest.mark.spec("MQTT-3.1.2-26", "MQTT-3.1.2-27")
    def test_outbound_alias_choice(self) -> None:
        _, server = pair(connect=connect(topic_alias_maximum=2))
        assert server.outbound_alias("a") == (1, False)
        assert server.outbound_alias("a") == (1, False)  # not remembered until recorded
        server.record_alias("a", 1)
        assert server.outbound_alias("a") == (1, True)
        assert server.outbound_alias("b") == (2, False)
        server.record_alias("b", 2)
        assert server.outbound_alias("c") == (None, False)  # never above the client's maximum
        _, server0 = pair()
        assert server0.outbound_alias("a") == (None, False)


# --- other PUBLISH rules ---------------------------------------------------------------------


class TestPublishRules:
    """What the server advertised in CONNACK, and what a client may not put in PUBLISH."""

    @pytest.mark.spec("MQTT-3.2.2-11")
    def test_qos_above_maximum(self) -> None:
        client, server = pair(connack=connack(maximum_qos=1))
        with pytest.raises(LocalProtocolError) as info:
            client.send(Publish("t", qos=2))
        assert info.value.reason_code is RC.QOS_NOT_SUPPORTED
        server.receive_data(Publish("t", qos=2, packet_id=1).encode())
        assert_closed_with(server, RC.QOS_NOT_SUPPORTED)

    @pytest.mark.spec("MQTT-3.2.2-11")
    def test_qos_0_maximum(self) -> None:
        _, server = pair(connack=connack(maximum_qos=0))
        server.receive_data(Publish("t", qos=0).encode())
        assert len(publish_events(server)) == 1
        server.receive_data(Publish("t", qos=1, packet_id=1).encode())
        assert_closed_with(server, RC.QOS_NOT_SUPPORTED)

    @pytest.mark.spec("MQTT-3.2.2-14")
    def test_retain_not_available(self) -> None:
        client, server = pair(connack=connack(retain_available=0))
        with pytest.raises(LocalProtocolError) as info:
            client.send(Publish("t", retain=True))
        assert info.value.reason_code is RC.RETAIN_NOT_SUPPORTED
        server.receive_data(Publish("t", retain=True).encode())
        assert_closed_with(server, RC.RETAIN_NOT_SUPPORTED)

    @pytest.mark.spec("MQTT-3.3.4-6")
    def test_subscription_identifier_from_client(self) -> None:
        _, server = pair()
        packet = Publish("t", properties=Properties(subscription_identifiers=[3]))
        server.receive_data(packet.encode())
        assert_closed_with(server, RC.PROTOCOL_ERROR)

    def test_subscription_identifiers_to_client(self) -> None:
        client, server = pair()
        server.send(Publish("t", properties=Properties(subscription_identifiers=[3, 9])))
        pump(client, server)
        (packet,) = publish_events(client)
        assert packet.subscription_identifiers == [3, 9]

    def test_properties_survive(self) -> None:
        client, server = pair()
        props = Properties(
            payload_format_indicator=1,
            message_expiry_interval=5,
            content_type="text/plain",
            response_topic="r",
            correlation_data=b"\x00\x01",
            user_properties=[("b", "2"), ("a", "1"), ("b", "3")],
        )
        client.send(Publish("t", b"x", 1, properties=props))
        pump(client, server)
        (packet,) = publish_events(server)
        assert packet.properties == props


# --- SUBSCRIBE / UNSUBSCRIBE -----------------------------------------------------------------


class TestSubscribe:
    """3.8 SUBSCRIBE / 3.10 UNSUBSCRIBE as the connection sees them."""

    def test_flow(self) -> None:
        client, server = pair()
        sub = Subscribe(client.next_packet_id(), [Subscription("a/+", 1)])
        client.send(sub)
        assert list(client.pending_requests()) == [1]
        pump(client, server)
        assert_events(server, [sub])
        server.send(Suback(1, [RC.GRANTED_QOS_1]))
        pump(client, server)
        assert_events(client, [Suback(1, [RC.GRANTED_QOS_1])])
        assert list(client.pending_requests()) == []
        client.send(Unsubscribe(2, ["a/+"]))
        pump(client, server)
        server.send(Unsuback(2, [RC.SUCCESS]))
        pump(client, server)
        assert server.events_received() == [Unsubscribe(2, ["a/+"])]
        assert client.events_received() == [Unsuback(2, [RC.SUCCESS])]

    def test_pending_request_identifiers_are_not_reused(self) -> None:
        client, _ = pair()
        client.send(Subscribe(client.next_packet_id(), [Subscription("a")]))
        client.send(Publish("t", qos=1))
        assert 2 in client.inflight.out

    @pytest.mark.spec("MQTT-3.8.3-4")
    def test_no_local_on_shared_subscription(self) -> None:
        client, server = pair()
        client.send(Subscribe(1, [Subscription("x"), Subscription("$share/g/x", no_local=True)]))
        pump(client, server)
        assert isinstance(server.events_received()[-1], Closed)
        assert client.state is CLOSED  # the client received the DISCONNECT
        assert client.closed_event is not None
        assert client.closed_event.received is RC.PROTOCOL_ERROR

    def test_no_local_on_shared_subscription_raw(self) -> None:
        _, server = pair()
        server.receive_data(Subscribe(1, [Subscription("$share/g/x", 1, True)]).encode())
        assert_closed_with(server, RC.PROTOCOL_ERROR)

    def test_direction(self) -> None:
        client, server = pair()
        with pytest.raises(LocalProtocolError):
            server.send(Subscribe(1, [Subscription("a")]))
        client.receive_data(Subscribe(1, [Subscription("a")]).encode())
        assert_closed_with(client, RC.PROTOCOL_ERROR)
        server.receive_data(Suback(1, [RC.SUCCESS]).encode())
        assert_closed_with(server, RC.PROTOCOL_ERROR)


# --- DISCONNECT ------------------------------------------------------------------------------


class TestDisconnect:
    """3.14 DISCONNECT."""

    @pytest.mark.spec("MQTT-3.14.4-1")
    def test_normal_disconnect(self) -> None:
        client, server = pair()
        client.send(Disconnect())
        assert closed_event(client) == Closed(sent=RC.NORMAL_DISCONNECTION)
        with pytest.raises(InvalidState):
            client.send(Pingreq())  # nothing more after DISCONNECT
        pump(client, server)
        assert server.events_received() == [Disconnect(), Closed(received=RC.SUCCESS)]
        assert server.close_expected()

    def test_disconnect_with_reason_string(self) -> None:
        client, server = pair()
        server.send(Disconnect(RC.SERVER_SHUTTING_DOWN, Properties(reason_string="bye")))
        pump(client, server)
        events = client.events_received()
        assert events[-1] == Closed(received=RC.SERVER_SHUTTING_DOWN, reason_string="bye")

    def test_raising_session_expiry_from_zero(self) -> None:
        # 3.14.2.2.2: Session Expiry 0 in CONNECT cannot become non-zero in DISCONNECT.
        client, server = pair()
        client.send(Disconnect(properties=Properties(session_expiry_interval=10)))
        server.receive_data(b"".join(client.data_to_send()))
        assert_closed_with(server, RC.PROTOCOL_ERROR)

    def test_changing_a_non_zero_session_expiry(self) -> None:
        client, server = pair(connect=connect(session_expiry_interval=10))
        client.send(Disconnect(properties=Properties(session_expiry_interval=100)))
        pump(client, server)
        assert server.events_received()[-1] == Closed(received=RC.SUCCESS)
        assert server.session_expiry_interval == 100

    def test_zero_to_zero_is_fine(self) -> None:
        client, server = pair()
        client.send(Disconnect(properties=Properties(session_expiry_interval=0)))
        pump(client, server)
        assert server.events_received()[-1] == Closed(received=RC.SUCCESS)

    def test_eof(self) -> None:
        _client, server = pair()
        server.receive_eof()
        server.receive_eof()
        assert closed_event(server) == Closed()
        server.receive_data(Pingreq().encode())  # ignored once closed
        assert server.events_received() == []
        assert server.data_to_send() == []

    def test_fail(self) -> None:
        client, server = pair()
        server.fail(RC.ADMINISTRATIVE_ACTION, "kicked")
        pump(client, server)
        assert client.events_received()[-1] == Closed(
            received=RC.ADMINISTRATIVE_ACTION, reason_string="kicked"
        )
        server.fail(RC.UNSPECIFIED_ERROR)  # already closed: nothing more
        assert server.data_to_send() == []


# --- Keep alive ------------------------------------------------------------------------------


def keep_alive_pair(keep_alive: int) -> tuple[Connection, Connection]:
    request = Connect("c", 5, keep_alive=keep_alive, protocol_name="MQTT")
    return pair(connect=request)


class TestKeepAlive:
    """3.1.2.10 Keep Alive."""

    @pytest.mark.spec("MQTT-3.1.2-22")
    def test_server_closes_after_one_and_a_half_times(self) -> None:
        _, server = keep_alive_pair(10)
        assert server.get_timer() == 15
        server.handle_timer(14.99)
        assert server.data_to_send() == []
        assert server.state is CONNECTED
        server.handle_timer(15.0)
        assert_closed_with(server, RC.KEEP_ALIVE_TIMEOUT)
        assert server.get_timer() is None

    @pytest.mark.spec("MQTT-3.1.2-22")
    def test_any_packet_resets_the_deadline(self) -> None:
        _, server = keep_alive_pair(10)
        server.receive_data(Publish("t").encode(), now=12.0)
        assert server.get_timer() == 27.0
        server.handle_timer(26.0)
        assert server.state is CONNECTED
        server.receive_data(Pingreq().encode(), now=26.0)
        assert_sent(server, [Pingresp()])  # [MQTT-3.12.4-1]
        server.handle_timer(40.9)
        assert server.state is CONNECTED
        server.handle_timer(41.0)
        assert server.close_expected()

    def test_keep_alive_zero_means_no_timer(self) -> None:
        client, server = keep_alive_pair(0)
        assert client.get_timer() is None
        assert server.get_timer() is None
        server.handle_timer(1e9)
        client.handle_timer(1e9)
        assert client.state is server.state is CONNECTED

    @pytest.mark.spec("MQTT-3.1.2-20", "MQTT-3.12.4-1")
    def test_client_pings_when_idle(self) -> None:
        client, server = keep_alive_pair(10)
        assert client.get_timer() == 10
        client.handle_timer(9.0)
        assert client.data_to_send() == []
        client.handle_timer(10.0)
        assert client.data_to_send() == [b"\xc0\x00"]
        assert client.get_timer() == 20.0  # PINGRESP must arrive within keep alive
        server.receive_data(b"\xc0\x00", now=10.0)
        assert_events(server, [Pingreq()])
        client.receive_data(b"".join(server.data_to_send()), now=10.5)
        assert_events(client, [Pingresp()])
        assert client.get_timer() == 20.0  # next idle ping
        client.handle_timer(20.0)
        assert client.data_to_send() == [b"\xc0\x00"]

    def test_client_closes_without_pingresp(self) -> None:
        client, _ = keep_alive_pair(10)
        client.handle_timer(10.0)
        client.data_to_send()
        client.handle_timer(19.9)
        assert client.state is CONNECTED
        client.handle_timer(20.0)
        event = closed_event(client)
        assert event.reason_string is not None
        assert "PINGRESP" in event.reason_string

    def test_sending_postpones_the_ping(self) -> None:
        client, _ = keep_alive_pair(10)
        client.mark_sent(8.0)
        client.handle_timer(10.0)
        assert client.data_to_send() == []
        assert client.get_timer() == 18.0

    def test_explicit_pingreq(self) -> None:
        client, server = keep_alive_pair(10)
        client.mark_sent(3.0)
        client.send(Pingreq())
        assert client.get_timer() == 13.0
        pump(client, server)
        assert client.get_timer() == 13.0


# --- Maximum Packet Size ---------------------------------------------------------------------


class TestMaximumPacketSize:
    """3.1.2.11.4 / 3.2.2.3.6 Maximum Packet Size, in both directions."""

    @pytest.mark.spec(
        "MQTT-3.4.2-2", "MQTT-3.4.2-3", "MQTT-3.5.2-2", "MQTT-3.5.2-3", "MQTT-3.1.2-24"
    )
    @pytest.mark.parametrize("qos", [1, 2])
    def test_ack_loses_reason_string_and_user_properties(self, qos: int) -> None:
        _, server = pair(connect=connect(maximum_packet_size=20))
        server.receive_data(Publish("t", qos=qos, packet_id=1).encode())
        server.events_received()
        big = Properties(reason_string="r" * 30, user_properties=[("k", "v" * 30)])
        server.ack(1, RC.NO_MATCHING_SUBSCRIBERS, big)
        data = b"".join(server.data_to_send())
        assert len(data) <= 20
        ack_type = PubAck if qos == 1 else PubRec
        assert data == ack_type(1, RC.NO_MATCHING_SUBSCRIBERS).encode()
        assert big.reason_string == "r" * 30  # the caller's object is left alone

    def test_small_enough_ack_keeps_its_properties(self) -> None:
        _, server = pair(connect=connect(maximum_packet_size=100))
        server.receive_data(Publish("t", qos=1, packet_id=1).encode())
        props = Properties(reason_string="short")
        server.ack(1, RC.SUCCESS, props)
        assert_sent(server, [PubAck(1, RC.SUCCESS, props)])

    @pytest.mark.spec("MQTT-3.2.2-19", "MQTT-3.2.2-20")
    def test_connack_loses_reason_string_and_user_properties(self) -> None:
        client, server = pair(handshake=False)
        client.send(connect(maximum_packet_size=16))
        pump(client, server)
        server.send(Connack(properties=Properties(receive_maximum=9, reason_string="x" * 40)))
        assert_sent(server, [Connack(properties=Properties(receive_maximum=9))])

    @pytest.mark.spec("MQTT-3.14.2-3", "MQTT-3.14.2-4")
    def test_disconnect_loses_reason_string_and_user_properties(self) -> None:
        _, server = pair(connect=connect(maximum_packet_size=10))
        props = Properties(reason_string="x" * 40, user_properties=[("a", "b")])
        server.send(Disconnect(RC.SERVER_SHUTTING_DOWN, props))
        assert_sent(server, [Disconnect(RC.SERVER_SHUTTING_DOWN)])

    def test_error_disconnect_fits_too(self) -> None:
        _, server = pair(connect=connect(maximum_packet_size=10))
        server.receive_data(b"\x00\x00")
        assert server.data_to_send() == [b"\xe0\x01\x81"]

    @pytest.mark.spec("MQTT-3.9.2-1", "MQTT-3.9.2-2")
    def test_still_too_large_raises(self) -> None:
        _, server = pair(connect=connect(maximum_packet_size=12))
        big = Properties(reason_string="x" * 40)
        server.send(Suback(1, [RC.GRANTED_QOS_0] * 4, big))  # shrinks to 9 bytes
        assert_sent(server, [Suback(1, [RC.GRANTED_QOS_0] * 4)])
        with pytest.raises(LocalProtocolError) as info:
            server.send(Suback(1, [RC.GRANTED_QOS_0] * 20, big))
        assert info.value.reason_code is RC.PACKET_TOO_LARGE

    @pytest.mark.spec("MQTT-3.1.2-24", "MQTT-3.1.2-25")
    def test_oversize_publish_via_send_publish_is_dropped(self) -> None:
        _, server = pair(connect=connect(maximum_packet_size=30))
        small = Publish("t", b"x" * 5, qos=1, packet_id=1).encode()
        large = Publish("t", b"x" * 50, qos=1, packet_id=2).encode()
        assert server.send_publish(small, 1, 1, "m1") is True
        assert server.send_publish(large, 2, 1, "m2") is False
        assert server.data_to_send() == [small]
        assert list(server.inflight.out) == [1]
        assert server.inflight.out[1].item == "m1"

    def test_oversize_publish_via_send_raises(self) -> None:
        client, _ = pair(connack=connack(maximum_packet_size=30))
        with pytest.raises(LocalProtocolError) as info:
            client.send(Publish("t", b"x" * 50, qos=1))
        assert info.value.reason_code is RC.PACKET_TOO_LARGE
        assert not client.inflight.out
        assert client.data_to_send() == []

    @pytest.mark.spec("MQTT-3.2.2-15")
    def test_inbound_too_large(self) -> None:
        _, server = pair(connack=connack(maximum_packet_size=50))
        server.receive_data(Publish("t", b"x" * 50).encode()[:5])  # the header is enough
        assert_closed_with(server, RC.PACKET_TOO_LARGE)


# --- Session resumption ----------------------------------------------------------------------


class TestResendInflight:
    """4.4 Message delivery retry."""

    @pytest.mark.spec("MQTT-4.4.0-1", "MQTT-3.3.1-1")
    def test_resend_after_reconnect(self) -> None:
        client, _server = pair()
        client.send(Publish("a", b"1", qos=1))
        client.send(Publish("b", b"2", qos=2))
        client.send(Publish("c", b"3", qos=2))
        client.data_to_send()
        client.receive_data(PubRec(3).encode())  # PUBREL 3 sent, then the connection drops
        client.receive_eof()
        inflight = client.inflight
        client2, server2 = pair(handshake=False)
        client2.inflight = inflight
        client2.send(Connect("c", clean_start=False, keep_alive=0, protocol_name="MQTT"))
        pump(client2, server2)
        server2.send(Connack(session_present=True))
        pump(client2, server2)
        client2.events_received()
        server2.events_received()
        client2.resend_inflight()
        assert_sent(
            client2,
            [
                Publish("a", b"1", 1, dup=True, packet_id=1),
                Publish("b", b"2", 2, dup=True, packet_id=2),
                PubRel(3),  # [MQTT-4.3.3-6] a released message is never resent as PUBLISH
            ],
        )

    def test_custom_encoder(self) -> None:
        client, _ = pair()
        client.send_publish(b"raw", 1, 1, item="broker message")
        client.data_to_send()
        seen: list[OutFlight] = []

        def encode(entry: OutFlight) -> bytes:
            seen.append(entry)
            return b"again"

        client.resend_inflight(encode)
        assert client.data_to_send() == [b"again"]
        assert [e.item for e in seen] == ["broker message"]

    def test_send_raw(self) -> None:
        client, _ = pair()
        client.send_raw(b"\xc0\x00")
        assert client.data_to_send() == [b"\xc0\x00"]


class TestPacketIdentifiers:
    """2.2.1 Packet Identifier: non-zero and not in use."""

    @pytest.mark.spec("MQTT-2.2.1-3", "MQTT-2.2.1-4")
    def test_next_packet_id(self) -> None:
        inflight = Inflight()
        assert [inflight.next_packet_id() for _ in range(3)] == [1, 2, 3]
        inflight.out[4] = OutFlight(4, 1, None)
        assert inflight.next_packet_id() == 5
        assert inflight.next_packet_id(busy={6, 7}) == 8
        assert len(inflight) == 1

    @pytest.mark.spec("MQTT-2.2.1-3")
    def test_wraps_around_skipping_zero(self) -> None:
        inflight = Inflight()
        inflight._next_id = 65534
        assert [inflight.next_packet_id() for _ in range(3)] == [65535, 1, 2]

    def test_exhausted(self) -> None:
        inflight = Inflight()
        inflight.out = {i: OutFlight(i, 1, None) for i in range(1, 65536)}
        with pytest.raises(InvalidState):
            inflight.next_packet_id()


# --- Malformed input -------------------------------------------------------------------------


class TestMalformedInput:
    """4.13 Handling errors: bad bytes never raise out of receive_data."""

    @pytest.mark.parametrize(
        "data",
        [
            b"\x00\x00",  # reserved packet type
            b"\x30\x04\x00\x01t\x05",  # property length overruns the packet
            b"\x36\x05\x00\x01t\x00\x01",  # QoS 3
            b"\x3a\x04\x00\x01t\x00",  # DUP on QoS 0
            b"\xc1\x00",  # reserved flags
            b"\x30\x80\x80\x80\x80\x01",  # five-byte remaining length
            b"\x30\x05\x00\x02t\x00\x00",  # U+0000 in the topic name
        ],
    )
    @pytest.mark.spec("MQTT-4.13.1-1", "MQTT-2.1.3-1", "MQTT-3.3.1-4", "MQTT-3.3.1-2")
    def test_malformed_packet_disconnects(self, data: bytes) -> None:
        _, server = pair()
        server.receive_data(data)
        event = assert_closed_with(server, RC.MALFORMED_PACKET)
        assert isinstance(event.error, RemoteProtocolError)

    @pytest.mark.spec("MQTT-3.8.3-2")
    def test_subscribe_without_filters(self) -> None:
        _, server = pair()
        server.receive_data(b"\x82\x03\x00\x01\x00")
        assert_closed_with(server, RC.PROTOCOL_ERROR)

    def test_packets_before_the_bad_one_are_handled(self) -> None:
        _, server = pair()
        server.receive_data(Pingreq().encode())
        server.receive_data(b"\xc1\x00")
        assert server.events_received()[0] == Pingreq()

    def test_client_side(self) -> None:
        client, _ = pair()
        client.receive_data(b"\x20\x00")  # CONNACK of zero bytes
        assert_closed_with(client, RC.MALFORMED_PACKET)

    @settings(max_examples=300)
    @given(st.sampled_from([5, 4]), st.booleans(), st.booleans(), st.binary(max_size=40))
    def test_random_bytes_never_raise(
        self, version: int, server_side: bool, connected: bool, data: bytes
    ) -> None:
        client, server = pair(version, handshake=connected)
        conn = server if server_side else client
        conn.receive_data(data)
        events = conn.events_received()
        closes = [e for e in events if isinstance(e, Closed)]
        assert len(closes) <= 1
        if closes:
            assert events[-1] is closes[0]
            assert conn.close_expected()
        for chunk in conn.data_to_send():
            assert isinstance(chunk, bytes)

    @settings(max_examples=200)
    @given(st.data())
    def test_valid_packets_in_any_state_never_raise(self, data: st.DataObject) -> None:
        version = data.draw(st.sampled_from([5, 4]))
        client, server = pair(version, handshake=data.draw(st.booleans()))
        packets = data.draw(st.lists(any_packet(version, connect_too=True), max_size=4))
        stream = b"".join(p.encode(version) for p in packets)
        for conn in (client, server):
            conn.receive_data(stream)
            events = conn.events_received()
            assert sum(isinstance(e, Closed) for e in events) <= 1


# --- MQTT 3.1.1 ------------------------------------------------------------------------------


class TestMQTT311:
    """The same connection speaking MQTT 3.1.1 (and 3.1)."""

    @pytest.mark.parametrize("version", [4, 3])
    def test_session(self, version: int) -> None:
        client, server = pair(version)
        assert server.version == version
        client.send(Subscribe(1, [Subscription("a/#", 2)]))
        pump(client, server)
        assert_events(server, [Subscribe(1, [Subscription("a/#", 2)])])
        server.send(Suback(1, [RC.GRANTED_QOS_2]))
        server.send(Publish("a/b", b"x", qos=1))
        server.send(Publish("a/c", b"y", qos=2))
        pump(client, server)
        events = client.events_received()
        assert events[0] == Suback(1, [RC.GRANTED_QOS_2])
        client.ack(1)
        client.ack(2)
        pump(client, server)
        assert client.events_received() == [PubRel(2)]
        assert server.events_received() == [PubAck(1), PubRec(2), PubComp(2)]
        assert not server.inflight.out
        client.send(Disconnect())
        pump(client, server)
        assert server.events_received() == [Disconnect(), Closed(received=RC.SUCCESS)]

    def test_connack_bytes(self) -> None:
        client, server = pair(4, handshake=False)
        client.send(Connect("c", 4, keep_alive=0, protocol_name="MQTT"))
        pump(client, server)
        server.send(Connack(session_present=False))
        assert server.data_to_send() == [b"\x20\x02\x00\x00"]

    def test_malformed_closes_without_disconnect(self) -> None:
        _, server = pair(4)
        server.receive_data(b"\x00\x00")
        assert server.data_to_send() == []  # 3.1.1 servers never send DISCONNECT
        event = closed_event(server)
        assert event.error is not None
        assert event.error.reason_code is RC.MALFORMED_PACKET

    def test_malformed_before_connack_refuses(self) -> None:
        client, server = pair(4, handshake=False)
        client.send(Connect("c", 4, keep_alive=0, protocol_name="MQTT"))
        pump(client, server)
        server.receive_data(b"\xc1\x00")
        assert server.data_to_send() == [b"\x20\x02\x00\x03"]  # "server unavailable"
        assert closed_event(server).error is not None
