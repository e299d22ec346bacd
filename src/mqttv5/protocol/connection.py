"""``Connection``: one network connection's MQTT state machine, shared by client and broker.

Sans-I/O: feed it bytes with :meth:`Connection.receive_data`, collect what the peer sent with
:meth:`Connection.events_received` (packets are returned as themselves, plus a :class:`Closed`
event), send packets with :meth:`Connection.send` (or the broker's fast path
:meth:`Connection.send_publish`), and write out :meth:`Connection.data_to_send`. Time is passed in
(``now``), never read.

It checks every rule that needs no broker state: packet order, packet direction, packet
identifiers, QoS 1/2 flows in both directions, Receive Maximum in both directions, inbound topic
aliases, the peer's Maximum Packet Size, Maximum QoS and Retain Available, keep-alive deadlines.
A violation never raises out of ``receive_data``: it queues the right DISCONNECT (or CONNACK) and
becomes a :class:`Closed` event carrying the :class:`ProtocolError`.

Session state that outlives a connection (the in-flight tables and the packet-identifier counter)
lives in :class:`Inflight`, which the owner keeps and hands to the next connection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from .constants import PacketType
from .errors import InvalidState, LocalProtocolError, ProtocolError, RemoteProtocolError
from .packets import (
    MAX_PACKET_SIZE,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketDecoder,
    Pingreq,
    Pingresp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    UnsupportedProtocol,
)
from .properties import Properties
from .reason_codes import ReasonCode

__all__ = [
    "CLIENT",
    "CLOSED",
    "CONNECTED",
    "CONNECTING",
    "SERVER",
    "Closed",
    "Connection",
    "Event",
    "Inflight",
    "OutFlight",
    "Role",
    "State",
]


class Role(IntEnum):
    """Which end of the connection we are."""

    CLIENT = 1
    SERVER = 2


class State(IntEnum):
    """Connection states: CONNECTING until CONNACK, CONNECTED, then CLOSED."""

    CONNECTING = 1
    CONNECTED = 2
    CLOSED = 3


CLIENT: Final = Role.CLIENT
SERVER: Final = Role.SERVER
CONNECTING: Final = State.CONNECTING
CONNECTED: Final = State.CONNECTED
CLOSED: Final = State.CLOSED

_RC = ReasonCode
_P = PacketType


@dataclass(slots=True)
class Closed:
    """The connection is over; the owner must close the transport (after writing
    :meth:`Connection.data_to_send`).

    Attributes:
        sent: the reason code we sent (DISCONNECT or refusing CONNACK), if any.
        received: the reason code of the peer's DISCONNECT (or refusing CONNACK), if any.
        reason_string: the Reason String that came with the close, if any.
        error: the protocol violation that caused the close, if any.
    """

    sent: ReasonCode | None = None
    received: ReasonCode | None = None
    reason_string: str | None = None
    error: ProtocolError | None = None


Event = Packet | Closed


class OutFlight:
    """An outgoing QoS 1/2 PUBLISH awaiting acknowledgement.

    ``item`` is the owner's own record of the message (the client's :class:`Publish`, the broker's
    message), kept for retransmission after a reconnect. ``released`` is True once PUBREC has
    been received and PUBREL sent (QoS 2, waiting for PUBCOMP).
    """

    __slots__ = ("item", "packet_id", "qos", "released")

    def __init__(self, packet_id: int, qos: int, item: object) -> None:
        self.packet_id = packet_id
        self.qos = qos
        self.item = item
        self.released = False


class Inflight:
    """QoS 1/2 session state that survives reconnection [MQTT-4.1.0-1].

    Attributes:
        out: outgoing QoS 1/2 PUBLISH packets not yet completed, in send order.
        in_qos2: packet identifiers of incoming QoS 2 PUBLISH packets answered with PUBREC and
            not yet released (a resend with one of these is not delivered again [MQTT-4.3.3-9]).
    """

    __slots__ = ("_next_id", "in_qos2", "out")

    def __init__(self) -> None:
        self.out: dict[int, OutFlight] = {}
        self.in_qos2: set[int] = set()
        self._next_id = 0

    def next_packet_id(self, busy: Container[int] | None = None) -> int:
        """A non-zero packet identifier not in use [MQTT-2.2.1-3] [MQTT-2.2.1-4].

        Raises:
            InvalidState: all 65,535 identifiers are in use.
        """
        out = self.out
        nid = self._next_id
        for _ in range(65535):
            nid = nid % 65535 + 1
            if nid not in out and (busy is None or nid not in busy):
                self._next_id = nid
                return nid
        raise InvalidState("no free packet identifier")

    def __len__(self) -> int:
        return len(self.out)


class Connection:
    """One MQTT network connection, client or server side.

    Args:
        role: ``CLIENT`` or ``SERVER``.
        inflight: session state to resume; a new empty one by default.
        max_packet_size: the largest packet we accept (server: advertise the same value in
            CONNACK; client: in CONNECT).
        version: protocol level a client speaks (the server learns it from CONNECT).
        now: the current time, in seconds on any monotonic clock.
        keep_raw: keep each received PUBLISH's bytes in ``Publish.raw`` (for verbatim
            forwarding).
    """

    def __init__(
        self,
        role: Role,
        *,
        inflight: Inflight | None = None,
        max_packet_size: int = MAX_PACKET_SIZE,
        version: int = 5,
        now: float = 0.0,
        keep_raw: bool = False,
    ) -> None:
        self.role = role
        self.state = CONNECTING
        self.version = version
        self.inflight = inflight if inflight is not None else Inflight()
        self._decoder = PacketDecoder(version, max_packet_size)
        self._decoder.keep_raw = keep_raw
        self._events: list[Event] = []
        self._out: list[bytes] = []
        self.closed_event: Closed | None = None
        self._connect_seen = False
        self._sent_clean_start = False
        self._request_problem_information = True
        self._first_type: int | None = None
        # A server holds automatic answers (PINGRESP, PUBCOMP ...) until its CONNACK is sent.
        self._held_out: list[bytes] | None = [] if role is SERVER else None
        self._eof = False
        # What we accept (advertised in our CONNECT or CONNACK).
        self.receive_maximum = 65535
        self.topic_alias_maximum = 0
        self.maximum_qos = 2
        self.retain_available = True
        # What the peer accepts (from its CONNECT or CONNACK).
        self.peer_receive_maximum = 65535
        self.peer_maximum_packet_size = MAX_PACKET_SIZE
        self.peer_topic_alias_maximum = 0
        self.peer_maximum_qos = 2
        self.peer_retain_available = True
        # Negotiated keep-alive in seconds (0 = off) and activity times.
        self.keep_alive = 0
        self.session_expiry_interval = 0
        self.last_received = now
        self.last_sent = now
        self._ping_outstanding_since: float | None = None
        # Inbound QoS 1/2 publishes received but not yet acknowledged by the owner: id -> QoS.
        self._in_pending: dict[int, int] = {}
        # Client side: packet identifiers of SUBSCRIBE / UNSUBSCRIBE awaiting their ack.
        self._pending_requests: dict[int, int] = {}
        self._in_aliases: dict[int, str] = {}
        self._out_aliases: dict[str, int] = {}

    # -----------------------------------------------------------------------------------------
    # input

    @property
    def max_packet_size(self) -> int:
        """The largest packet we accept."""
        return self._decoder.max_packet_size

    @max_packet_size.setter
    def max_packet_size(self, value: int) -> None:
        self._decoder.max_packet_size = value

    def receive_data(self, data: bytes, now: float = 0.0) -> None:
        """Feed bytes received from the network; then call :meth:`events_received` and
        :meth:`data_to_send`.

        Never raises for bad input: a violation queues a DISCONNECT (or CONNACK) and a
        :class:`Closed` event.
        """
        if self.state is CLOSED or not data:
            return
        if self._first_type is None:
            self._first_type = data[0] >> 4  # a refusing CONNACK answers only a CONNECT
        self.last_received = now
        try:
            packets = self._decoder.feed(data)
        except UnsupportedProtocol as refused:
            self._out.append(refused.connack)
            self._close(Closed(sent=refused.reason_code, error=refused))
            return
        except RemoteProtocolError as exc:
            self._fail_with(exc)
            return
        handlers = _HANDLERS
        for packet in packets:
            try:
                handlers[type(packet)](self, packet)
            except RemoteProtocolError as exc:
                self._fail_with(exc)
                return
            if self.closed_event is not None:
                return

    def receive_eof(self) -> None:
        """The peer closed the network connection (idempotent)."""
        if self._eof:
            return
        self._eof = True
        if self.state is not CLOSED:
            self._close(Closed())

    def events_received(self) -> list[Event]:
        """Packets (and at most one final :class:`Closed`) received since the last call."""
        events = self._events
        self._events = []
        return events

    def data_to_send(self) -> list[bytes]:
        """Bytes to write to the network, in order, since the last call."""
        out = self._out
        self._out = []
        return out

    def close_expected(self) -> bool:
        """True once the connection is over and the transport should be closed."""
        return self.state is CLOSED

    # -----------------------------------------------------------------------------------------
    # receive handlers

    def _on_connect(self, packet: Connect) -> None:
        if self.role is CLIENT:
            raise RemoteProtocolError(_RC.PROTOCOL_ERROR, "client received CONNECT")
        if self._connect_seen:
            # [MQTT-3.1.0-2] a second CONNECT is a Protocol Error
            raise RemoteProtocolError(_RC.PROTOCOL_ERROR, "second CONNECT")
        self._connect_seen = True
        self.version = packet.protocol_level
        self.keep_alive = packet.keep_alive
        props = packet.properties
        self._adopt_limits(props, peer=True)
        self.session_expiry_interval = props.session_expiry_interval or 0
        self._events.append(packet)

    def _on_connack(self, packet: Connack) -> None:
        if self.role is SERVER or self.state is not CONNECTING:
            raise RemoteProtocolError(_RC.PROTOCOL_ERROR, "unexpected CONNACK")
        if packet.reason_code.is_error:
            self._events.append(packet)
            self._close(Closed(received=packet.reason_code, reason_string=_rs(packet.properties)))
            return
        if packet.session_present and self._sent_clean_start:
            # [MQTT-3.2.2-4] we asked for a new session: a server claiming one is broken
            raise RemoteProtocolError(_RC.PROTOCOL_ERROR, "session present after clean start")
        props = packet.properties
        self._adopt_limits(props, peer=True)
        if props.server_keep_alive is not None:
            # [MQTT-3.2.2-21] the client uses the server's keep-alive
            self.keep_alive = props.server_keep_alive
        if props.session_expiry_interval is not None:
            self.session_expiry_interval = props.session_expiry_interval
        self.state = CONNECTED
        self._events.append(packet)

    def _adopt_limits(self, props: Properties, peer: bool) -> None:
        """Take the limits a CONNECT or CONNACK announces: the peer's when we receive it,
        our own when we send it (absent properties keep their defaults)."""
        receive_maximum = props.receive_maximum
        packet_size = props.maximum_packet_size
        alias_maximum = props.topic_alias_maximum
        maximum_qos = props.maximum_qos
        retain = props.retain_available
        if peer:
            if receive_maximum is not None:
                self.peer_receive_maximum = receive_maximum
            if packet_size is not None:
                self.peer_maximum_packet_size = packet_size
            if alias_maximum is not None:
                self.peer_topic_alias_maximum = alias_maximum
            if maximum_qos is not None:
                self.peer_maximum_qos = maximum_qos
            if retain is not None:
                self.peer_retain_available = bool(retain)
            return
        if receive_maximum is not None:
            self.receive_maximum = receive_maximum
        if packet_size is not None:
            self._decoder.max_packet_size = packet_size
        if alias_maximum is not None:
            self.topic_alias_maximum = alias_maximum
        if maximum_qos is not None:
            self.maximum_qos = maximum_qos
        if retain is not None:
            self.retain_available = bool(retain)

    def _require_connected(self, what: str) -> None:
        if self.state is not CONNECTED and not (self.role is SERVER and self._connect_seen):
            # [MQTT-3.1.0-1] the first packet from a client is CONNECT
            raise RemoteProtocolError(_RC.PROTOCOL_ERROR, f"{what} before CONNECT/CONNACK")

    def _on_publish(self, packet: Publish) -> None:
        self._require_connected("PUBLISH")
        qos = packet.qos
        if qos > self.maximum_qos:
            # [MQTT-3.2.2-11] QoS above the Maximum QoS we advertised
            raise RemoteProtocolError(_RC.QOS_NOT_SUPPORTED, f"PUBLISH QoS {qos} not supported")
        if packet.retain and not self.retain_available:
            # [MQTT-3.2.2-14] retain when Retain Available is 0
            raise RemoteProtocolError(_RC.RETAIN_NOT_SUPPORTED, "retain not supported")
        if self.role is SERVER and packet.subscription_identifiers:
            # [MQTT-3.3.4-6] a client never sends a Subscription Identifier in PUBLISH
            raise RemoteProtocolError(_RC.PROTOCOL_ERROR, "PUBLISH with subscription identifier")
        alias = packet.topic_alias
        if alias is not None:
            if alias == 0 or alias > self.topic_alias_maximum:
                # [MQTT-3.3.2-9] [MQTT-3.3.2-10]
                raise RemoteProtocolError(_RC.TOPIC_ALIAS_INVALID, f"topic alias {alias} invalid")
            if packet.topic:
                self._in_aliases[alias] = packet.topic
            else:
                topic = self._in_aliases.get(alias)
                if topic is None:
                    raise RemoteProtocolError(
                        _RC.PROTOCOL_ERROR, f"topic alias {alias} has no mapping"
                    )
                packet.topic = topic
        if qos:
            pid = packet.packet_id
            assert pid is not None
            pending = self._in_pending
            if pid in pending:
                return  # a resend before we acknowledged: the first copy will be acknowledged
            if qos == 2 and pid in self.inflight.in_qos2:
                # [MQTT-4.3.3-9] already received: answer PUBREC again, do not deliver twice
                self._write(PubRec(pid).encode(self.version))
                return
            if len(pending) + len(self.inflight.in_qos2) >= self.receive_maximum:
                # [MQTT-3.3.4-9] more unacknowledged QoS 1/2 than our Receive Maximum
                raise RemoteProtocolError(
                    _RC.RECEIVE_MAXIMUM_EXCEEDED,
                    f"more than {self.receive_maximum} unacknowledged QoS 1/2 publishes",
                )
            pending[pid] = qos
        self._events.append(packet)

    def _on_puback(self, packet: PubAck) -> None:
        self._require_connected("PUBACK")
        self._check_problem_information(packet.properties)
        entry = self.inflight.out.get(packet.packet_id)
        if entry is None or entry.qos != 1:
            return  # unknown identifier: nothing to complete (tolerated, as Mosquitto does)
        del self.inflight.out[packet.packet_id]
        self._events.append(packet)

    def _on_pubrec(self, packet: PubRec) -> None:
        self._require_connected("PUBREC")
        self._check_problem_information(packet.properties)
        pid = packet.packet_id
        entry = self.inflight.out.get(pid)
        if entry is None or entry.qos != 2:
            # [MQTT-4.3.3] answer an unknown PUBREC with PUBREL 0x92
            self._write(PubRel(pid, _RC.PACKET_IDENTIFIER_NOT_FOUND).encode(self.version))
            return
        if packet.reason_code.is_error:
            del self.inflight.out[pid]  # the flow ends here [MQTT-4.3.3-4]
        elif not entry.released:
            entry.released = True
            self._write(PubRel(pid).encode(self.version))  # [MQTT-4.3.3-3]
        else:
            self._write(PubRel(pid).encode(self.version))
        self._events.append(packet)

    def _on_pubrel(self, packet: PubRel) -> None:
        self._require_connected("PUBREL")
        self._check_problem_information(packet.properties)
        pid = packet.packet_id
        in_qos2 = self.inflight.in_qos2
        if pid in in_qos2:
            in_qos2.discard(pid)
            self._write(PubComp(pid).encode(self.version))  # [MQTT-4.3.3-11]
        else:
            self._write(PubComp(pid, _RC.PACKET_IDENTIFIER_NOT_FOUND).encode(self.version))
        self._events.append(packet)

    def _on_pubcomp(self, packet: PubComp) -> None:
        self._require_connected("PUBCOMP")
        self._check_problem_information(packet.properties)
        entry = self.inflight.out.get(packet.packet_id)
        if entry is None or entry.qos != 2:
            return
        del self.inflight.out[packet.packet_id]
        self._events.append(packet)

    def _on_subscribe(self, packet: Subscribe | Unsubscribe) -> None:
        if self.role is CLIENT:
            raise RemoteProtocolError(_RC.PROTOCOL_ERROR, "client received SUBSCRIBE/UNSUBSCRIBE")
        self._require_connected("SUBSCRIBE")
        if isinstance(packet, Subscribe):
            for sub in packet.subscriptions:
                if sub.no_local and sub.topic_filter.startswith("$share/"):
                    # [MQTT-3.8.3-4] No Local on a shared subscription is a Protocol Error
                    raise RemoteProtocolError(
                        _RC.PROTOCOL_ERROR, f"No Local on shared subscription {sub.topic_filter!r}"
                    )
        self._events.append(packet)

    def _check_problem_information(self, props: Properties | None) -> None:
        # [MQTT-3.1.2-29] with Request Problem Information 0, only PUBLISH, CONNACK and
        # DISCONNECT may carry a Reason String or User Properties: the client answers 0x82
        if (
            not self._request_problem_information
            and self.role is CLIENT
            and props is not None
            and (props.reason_string is not None or props.user_properties)
        ):
            raise RemoteProtocolError(_RC.PROTOCOL_ERROR, "Reason String or User Property sent")

    def _on_suback(self, packet: Suback | Unsuback) -> None:
        if self.role is SERVER:
            raise RemoteProtocolError(_RC.PROTOCOL_ERROR, "server received SUBACK/UNSUBACK")
        self._require_connected("SUBACK")
        self._check_problem_information(packet.properties)
        self._pending_requests.pop(packet.packet_id, None)
        self._events.append(packet)

    def _on_pingreq(self, packet: Pingreq) -> None:
        if self.role is CLIENT:
            raise RemoteProtocolError(_RC.PROTOCOL_ERROR, "client received PINGREQ")
        self._require_connected("PINGREQ")
        self._write(b"\xd0\x00")  # [MQTT-3.12.4-1]
        self._events.append(packet)

    def _on_pingresp(self, packet: Pingresp) -> None:
        if self.role is SERVER:
            raise RemoteProtocolError(_RC.PROTOCOL_ERROR, "server received PINGRESP")
        self._ping_outstanding_since = None
        self._events.append(packet)

    def _on_disconnect(self, packet: Disconnect) -> None:
        self._require_connected("DISCONNECT")
        props = packet.properties
        if self.role is SERVER and props.session_expiry_interval is not None:
            if self.session_expiry_interval == 0 and props.session_expiry_interval != 0:
                # [MQTT-3.14.2-2] expiry 0 in CONNECT cannot be raised in DISCONNECT
                raise RemoteProtocolError(
                    _RC.PROTOCOL_ERROR, "DISCONNECT sets session expiry after CONNECT had 0"
                )
            self.session_expiry_interval = props.session_expiry_interval
        self._events.append(packet)
        self._close(Closed(received=packet.reason_code, reason_string=_rs(props)))

    def _on_auth(self, packet: Auth) -> None:
        if self.role is SERVER and not self._connect_seen:
            raise RemoteProtocolError(_RC.PROTOCOL_ERROR, "AUTH before CONNECT")
        self._check_problem_information(packet.properties)
        self._events.append(packet)

    # -----------------------------------------------------------------------------------------
    # output

    def send(self, packet: Packet) -> None:
        """Send a packet: validate it, update state, queue its bytes (see :meth:`data_to_send`).

        A QoS 1/2 PUBLISH without a packet identifier gets one; one with an identifier already
        in flight is a retransmission (give it ``dup=True``). Acknowledgements, CONNACK and
        DISCONNECT that exceed the peer's Maximum Packet Size lose their Reason String and User
        Properties first [MQTT-3.1.2-25]; any other packet that is still too large raises.

        Raises:
            LocalProtocolError: the packet breaks a rule (wrong direction, QoS above the peer's
                maximum, Receive Maximum exhausted, too large, ...).
            InvalidState: the connection is closed (client side; on the server side a packet
                for a closed connection is dropped).
        """
        if self.state is CLOSED:
            if self.role is SERVER:
                return  # the owner learns of the close from the Closed event; nothing to send
            raise InvalidState("connection is closed")
        ptype = _TYPE_CODE[type(packet)]
        if ptype == _P.PUBLISH:
            assert isinstance(packet, Publish)
            self._send_publish_packet(packet)
            return
        if ptype == _P.CONNECT:
            assert isinstance(packet, Connect)
            self._prepare_connect(packet)
        elif ptype == _P.CONNACK:
            assert isinstance(packet, Connack)
            self._prepare_connack(packet)
        elif ptype in (_P.SUBSCRIBE, _P.UNSUBSCRIBE):
            assert isinstance(packet, Subscribe | Unsubscribe)
            if self.role is SERVER:
                raise LocalProtocolError(_RC.PROTOCOL_ERROR, "server cannot send SUBSCRIBE")
            self._pending_requests[packet.packet_id] = ptype
        elif ptype in (_P.PUBACK, _P.PUBREC):
            assert isinstance(packet, PubAck | PubRec)
            self._complete_inbound(packet.packet_id, packet.reason_code, ptype)
        elif ptype == _P.PINGREQ:
            self._ping_outstanding_since = self.last_sent
        data = packet.encode(self.version)
        if len(data) > self.peer_maximum_packet_size:
            data = self._shrink(packet, data)
        if ptype == _P.CONNACK or ptype == _P.AUTH:
            self._out.append(data)  # the only packets a server sends before CONNACK
        else:
            self._write(data)
        if ptype == _P.CONNACK:
            assert isinstance(packet, Connack)
            held, self._held_out = self._held_out, None
            if packet.reason_code.is_error:
                # [MQTT-3.1.4-6] nothing the client sent after a refused CONNECT is answered
                self._close(Closed(sent=packet.reason_code, reason_string=_rs(packet.properties)))
            else:
                self.state = CONNECTED
                if held:
                    self._out.extend(held)  # [MQTT-3.2.0-1] answers wait for the CONNACK
        elif ptype == _P.DISCONNECT:
            assert isinstance(packet, Disconnect)
            self._close(Closed(sent=packet.reason_code, reason_string=_rs(packet.properties)))

    def _shrink(self, packet: Packet, data: bytes) -> bytes:
        props = getattr(packet, "properties", None)
        if isinstance(props, Properties) and (props.reason_string or props.user_properties):
            slim = props.copy()
            slim.reason_string = None
            slim.user_properties = []
            setattr(packet, "properties", slim)  # noqa: B010 - any packet with properties
            data = packet.encode(self.version)
            setattr(packet, "properties", props)  # noqa: B010
        if len(data) > self.peer_maximum_packet_size:
            raise LocalProtocolError(
                _RC.PACKET_TOO_LARGE,
                f"{type(packet).__name__} of {len(data)} bytes exceeds the peer's maximum "
                f"packet size {self.peer_maximum_packet_size}",
            )
        return data

    def _prepare_connect(self, packet: Connect) -> None:
        if self.role is SERVER:
            raise LocalProtocolError(_RC.PROTOCOL_ERROR, "server cannot send CONNECT")
        self.version = self._decoder.version = packet.protocol_level
        self.keep_alive = packet.keep_alive
        self._sent_clean_start = packet.clean_start
        self._request_problem_information = packet.properties.request_problem_information != 0
        props = packet.properties
        self._adopt_limits(props, peer=False)
        self.session_expiry_interval = props.session_expiry_interval or 0

    def _prepare_connack(self, packet: Connack) -> None:
        if self.role is CLIENT:
            raise LocalProtocolError(_RC.PROTOCOL_ERROR, "client cannot send CONNACK")
        if self.state is not CONNECTING:
            raise InvalidState("CONNACK already sent")
        props = packet.properties
        self._adopt_limits(props, peer=False)
        if props.server_keep_alive is not None:
            self.keep_alive = props.server_keep_alive
        if props.session_expiry_interval is not None:
            self.session_expiry_interval = props.session_expiry_interval

    def _send_publish_packet(self, packet: Publish) -> None:
        qos = packet.qos
        if qos > self.peer_maximum_qos:
            raise LocalProtocolError(
                _RC.QOS_NOT_SUPPORTED, f"QoS {qos} above the peer's maximum {self.peer_maximum_qos}"
            )
        if packet.retain and not self.peer_retain_available:
            raise LocalProtocolError(_RC.RETAIN_NOT_SUPPORTED, "the peer does not support retain")
        alias = packet.topic_alias
        if alias is not None and (alias == 0 or alias > self.peer_topic_alias_maximum):
            raise LocalProtocolError(_RC.TOPIC_ALIAS_INVALID, f"topic alias {alias} invalid")
        pid = packet.packet_id
        out = self.inflight.out
        if qos and pid is None:
            pid = packet.packet_id = self.next_packet_id()
        data = packet.encode(self.version)
        if len(data) > self.peer_maximum_packet_size:
            raise LocalProtocolError(
                _RC.PACKET_TOO_LARGE,
                f"PUBLISH of {len(data)} bytes exceeds the peer's maximum packet size "
                f"{self.peer_maximum_packet_size}",
            )
        if qos and pid not in out:
            assert pid is not None
            if self.send_quota <= 0:
                raise LocalProtocolError(
                    _RC.RECEIVE_MAXIMUM_EXCEEDED,
                    f"the peer's Receive Maximum ({self.peer_receive_maximum}) is reached",
                )
            out[pid] = OutFlight(pid, qos, packet)
        self._write(data)

    def send_publish(self, data: bytes, packet_id: int | None, qos: int, item: object) -> bool:
        """The broker's fast path: queue a pre-encoded PUBLISH.

        The caller has checked QoS, aliases and :attr:`send_quota`. A packet larger than the
        peer's Maximum Packet Size is discarded [MQTT-3.1.2-25] and False returned.

        Args:
            data: the whole encoded PUBLISH, packet identifier included.
            packet_id: its identifier (QoS 1/2), from :meth:`next_packet_id`.
            qos: its QoS.
            item: the owner's record of the message, kept in :attr:`inflight` until acknowledged.
        """
        if len(data) > self.peer_maximum_packet_size:
            return False
        if qos:
            assert packet_id is not None
            out = self.inflight.out
            if packet_id not in out:
                out[packet_id] = OutFlight(packet_id, qos, item)
        self._out.append(data)
        return True

    def send_raw(self, data: bytes) -> None:
        """Queue bytes the caller encoded itself (a retransmitted PUBLISH, a PUBREL...)."""
        self._out.append(data)

    def _write(self, data: bytes) -> None:
        held = self._held_out
        if held is not None:
            held.append(data)  # a server answers nothing before its CONNACK [MQTT-3.2.0-1]
        else:
            self._out.append(data)

    @property
    def send_quota(self) -> int:
        """How many more QoS 1/2 PUBLISH packets the peer's Receive Maximum allows now."""
        return self.peer_receive_maximum - len(self.inflight.out)

    def next_packet_id(self) -> int:
        """A free packet identifier for an outgoing QoS 1/2 PUBLISH, SUBSCRIBE or UNSUBSCRIBE."""
        return self.inflight.next_packet_id(self._pending_requests)

    def ack(
        self,
        packet_id: int,
        reason_code: ReasonCode = ReasonCode.SUCCESS,
        properties: Properties | None = None,
    ) -> None:
        """Acknowledge an incoming QoS 1/2 PUBLISH: PUBACK for QoS 1, PUBREC for QoS 2.

        For QoS 2 with a success code the packet identifier is remembered until PUBREL, so a
        resend is not delivered again.

        Raises:
            LocalProtocolError: no unacknowledged PUBLISH has this identifier.
        """
        qos = self._in_pending.get(packet_id)
        if qos is None:
            raise LocalProtocolError(
                _RC.PACKET_IDENTIFIER_NOT_FOUND, f"no PUBLISH {packet_id} to acknowledge"
            )
        if self.state is CLOSED:
            del self._in_pending[packet_id]
            if qos == 2 and not reason_code.is_error:
                self.inflight.in_qos2.add(packet_id)
            return
        self.send(
            PubAck(packet_id, reason_code, properties)
            if qos == 1
            else PubRec(packet_id, reason_code, properties)
        )

    def _complete_inbound(self, packet_id: int, code: ReasonCode, ptype: int) -> None:
        qos = self._in_pending.pop(packet_id, None)
        if ptype == _P.PUBREC and qos == 2 and not code.is_error:
            self.inflight.in_qos2.add(packet_id)

    @property
    def unacknowledged(self) -> int:
        """Incoming QoS 1/2 publishes the owner has not acknowledged yet."""
        return len(self._in_pending)

    def resend_inflight(self, encode: Callable[[OutFlight], bytes] | None = None) -> None:
        """Retransmit the session's unacknowledged QoS 1/2 messages after a reconnect.

        PUBLISH packets are resent with DUP set [MQTT-4.4.0-1]; released QoS 2 messages are
        resent as PUBREL [MQTT-4.4.0-2]. ``encode`` turns an entry into PUBLISH bytes; by default
        the entry's item must be a :class:`Publish`.
        """
        for entry in self.inflight.out.values():
            if entry.released:
                self._write(PubRel(entry.packet_id).encode(self.version))
                continue
            if encode is not None:
                self._write(encode(entry))
                continue
            pkt = entry.item
            assert isinstance(pkt, Publish)
            pkt.dup = True
            self._write(pkt.encode(self.version))

    def outbound_alias(self, topic: str) -> tuple[int | None, bool]:
        """Pick a topic alias for an outgoing PUBLISH to ``topic``.

        Returns:
            ``(alias, known)``: ``alias`` is None when the peer allows no (more) aliases;
            ``known`` is True when the peer already has the mapping (send an empty topic name).
            A new alias is not remembered until :meth:`record_alias`.
        """
        alias = self._out_aliases.get(topic)
        if alias is not None:
            return alias, True
        if len(self._out_aliases) >= self.peer_topic_alias_maximum:
            return None, False
        return len(self._out_aliases) + 1, False

    def record_alias(self, topic: str, alias: int) -> None:
        """Remember that a PUBLISH carrying ``topic`` and a new ``alias`` was sent (call it only
        once the packet was accepted, so a discarded packet leaves no stale mapping)."""
        self._out_aliases[topic] = alias

    # -----------------------------------------------------------------------------------------
    # closing and timers

    def fail(self, reason_code: ReasonCode, reason_string: str | None = None) -> None:
        """Close because of an error: queue DISCONNECT (or a refusing CONNACK before the
        connection is accepted) with ``reason_code``, then a :class:`Closed` event."""
        self._fail_with(RemoteProtocolError(reason_code, reason_string or reason_code.text))

    def _fail_with(self, exc: ProtocolError) -> None:
        if self.state is CLOSED:
            return
        code = exc.reason_code
        sent: ReasonCode | None = None
        if self.version == 5:
            if self.state is CONNECTED:
                props = Properties(reason_string=exc.message[:200])
                packet = Disconnect(code, props)
                data = packet.encode(5)
                if len(data) > self.peer_maximum_packet_size:
                    data = Disconnect(code).encode(5)
                self._write(data)
                sent = code
            elif self.role is SERVER and (self._connect_seen or self._first_type == _P.CONNECT):
                # Before CONNACK a server refuses with CONNACK [MQTT-3.2.2-7] [MQTT-4.13.1-1]
                self._held_out = None
                self._out.append(
                    Connack(code if code.is_error else _RC.UNSPECIFIED_ERROR).encode(5)
                )
                sent = code
        elif self.role is SERVER and self.state is CONNECTING and self._connect_seen:
            self._held_out = None
            self._out.append(Connack(code).encode(self.version))
            sent = code
        self._close(Closed(sent=sent, reason_string=exc.message, error=exc))

    def _close(self, event: Closed) -> None:
        self.state = CLOSED
        self.closed_event = event
        self._events.append(event)

    def keep_alive_deadline(self) -> float:
        """When a server gives up on a silent client: 1.5 x Keep Alive after the last packet
        received [MQTT-3.1.2-22]; ``inf`` when keep-alive is off."""
        if not self.keep_alive:
            return math.inf
        return self.last_received + 1.5 * self.keep_alive

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called, or None."""
        if self.state is not CONNECTED or not self.keep_alive:
            return None
        if self.role is SERVER:
            return self.keep_alive_deadline()
        if self._ping_outstanding_since is not None:
            return self._ping_outstanding_since + self.keep_alive
        return self.last_sent + self.keep_alive

    def handle_timer(self, now: float) -> None:
        """Act on deadlines: a server closes a silent client with 0x8D Keep Alive timeout; a
        client sends PINGREQ when idle and closes when PINGRESP does not come in time."""
        if self.state is not CONNECTED or not self.keep_alive:
            return
        if self.role is SERVER:
            if now >= self.keep_alive_deadline():
                self.fail(_RC.KEEP_ALIVE_TIMEOUT, "keep alive timeout")
            return
        if self._ping_outstanding_since is not None:
            if now >= self._ping_outstanding_since + self.keep_alive:
                self._close(Closed(reason_string="no PINGRESP within keep alive"))
            return
        if now >= self.last_sent + self.keep_alive:
            self._ping_outstanding_since = now
            self.last_sent = now
            self._write(b"\xc0\x00")

    def mark_sent(self, now: float) -> None:
        """Tell the connection bytes were written at ``now`` (the client's ping timer)."""
        self.last_sent = now

    def pending_requests(self) -> Iterator[int]:
        """Packet identifiers of SUBSCRIBE/UNSUBSCRIBE still awaiting their ack."""
        return iter(self._pending_requests)


_TYPE_CODE: Final[dict[type, int]] = {
    Connect: _P.CONNECT, Connack: _P.CONNACK, Publish: _P.PUBLISH, PubAck: _P.PUBACK,
    PubRec: _P.PUBREC, PubRel: _P.PUBREL, PubComp: _P.PUBCOMP, Subscribe: _P.SUBSCRIBE,
    Suback: _P.SUBACK, Unsubscribe: _P.UNSUBSCRIBE, Unsuback: _P.UNSUBACK, Pingreq: _P.PINGREQ,
    Pingresp: _P.PINGRESP, Disconnect: _P.DISCONNECT, Auth: _P.AUTH,
}  # fmt: skip


# Dispatch by packet class, shared by every Connection (a per-instance table of bound methods
# would cost each connection about 2 KiB and a reference cycle).
_HANDLERS: Final[dict[type, Callable[[Connection, Any], None]]] = {
    Connect: Connection._on_connect,
    Connack: Connection._on_connack,
    Publish: Connection._on_publish,
    PubAck: Connection._on_puback,
    PubRec: Connection._on_pubrec,
    PubRel: Connection._on_pubrel,
    PubComp: Connection._on_pubcomp,
    Subscribe: Connection._on_subscribe,
    Suback: Connection._on_suback,
    Unsubscribe: Connection._on_subscribe,
    Unsuback: Connection._on_suback,
    Pingreq: Connection._on_pingreq,
    Pingresp: Connection._on_pingresp,
    Disconnect: Connection._on_disconnect,
    Auth: Connection._on_auth,
}


def _rs(props: Properties) -> str | None:
    return props.reason_string
