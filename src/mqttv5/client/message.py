"""What the client hands to the application: received messages, connection events, errors and
statistics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from ..protocol.errors import ConnectionClosed, ConnectRefused, MqttError
from ..protocol.packets import Publish
from ..protocol.properties import Properties
from ..protocol.reason_codes import ReasonCode

if TYPE_CHECKING:
    from .core import ClientCore

__all__ = [
    "ClientStats",
    "ConnectedEvent",
    "DisconnectedByServer",
    "DisconnectedEvent",
    "Message",
    "MessageCallback",
    "NotConnected",
    "RefusedByServer",
    "SessionLost",
]

_EMPTY: Final = Properties()


class Message:
    """A message received from the server.

    Attributes:
        topic: the topic name (a Topic Alias is already resolved).
        payload: the payload bytes.
        qos: the QoS it was delivered with.
        retain: the RETAIN flag (set for retained messages sent at subscribe time, or kept by
            Retain As Published).
        dup: the DUP flag (a QoS 1 redelivery may have been seen before).
        packet_id: the packet identifier (QoS 1/2), else None.
    """

    __slots__ = ("_acked", "_client", "_epoch", "_packet", "dup", "packet_id", "payload", "qos",
                 "retain", "topic")  # fmt: skip

    def __init__(self, packet: Publish, client: ClientCore | None = None, epoch: int = 0) -> None:
        self.topic = packet.topic
        self.payload = packet.payload
        self.qos = packet.qos
        self.retain = packet.retain
        self.dup = packet.dup
        self.packet_id = packet.packet_id
        self._packet = packet
        self._client = client
        self._epoch = epoch
        self._acked = packet.qos == 0

    @property
    def properties(self) -> Properties:
        """The PUBLISH properties (User Properties as ordered ``(name, value)`` pairs)."""
        return self._packet.properties

    @property
    def subscription_identifiers(self) -> list[int]:
        """The Subscription Identifiers of every subscription this message matched."""
        return self._packet.subscription_identifiers

    @property
    def user_properties(self) -> list[tuple[str, str]]:
        """Shortcut for ``properties.user_properties``."""
        return self._packet.properties.user_properties if self._packet.props_raw else []

    @property
    def response_topic(self) -> str | None:
        """Shortcut for ``properties.response_topic``."""
        return self._packet.properties.response_topic if self._packet.props_raw else None

    @property
    def correlation_data(self) -> bytes | None:
        """Shortcut for ``properties.correlation_data``."""
        return self._packet.properties.correlation_data if self._packet.props_raw else None

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8 (invalid bytes replaced)."""
        return self.payload.decode("utf-8", "replace")

    @property
    def acked(self) -> bool:
        """True once the message is acknowledged (always True for QoS 0)."""
        return self._acked

    def ack_nowait(self) -> None:
        """Acknowledge now (PUBACK for QoS 1, PUBREC for QoS 2); see :meth:`ack`."""
        if self._acked:
            return
        if self._client is None:
            self._acked = True
            return
        self._client.ack(self)

    async def ack(self) -> None:
        """Acknowledge the message (only needed with ``manual_ack=True``; idempotent).

        The acknowledgement goes out on the current connection; if the connection was lost and
        the session resumed, it answers the server's retransmission instead.
        """
        self.ack_nowait()

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, payload={self.payload[:32]!r}, qos={self.qos}, "
            f"retain={self.retain})"
        )


MessageCallback = Callable[[Message], Awaitable[None] | None]
"""A per-subscription callback: a plain function or an ``async def``."""


@dataclass(slots=True)
class ConnectedEvent:
    """The client is connected (passed to ``on_connect``).

    Attributes:
        session_present: the server resumed an existing session.
        properties: the CONNACK properties (Assigned Client Identifier, Server Keep Alive,
            Response Information, Receive Maximum ...).
        reconnect: True when this connection was made by automatic reconnection.
    """

    session_present: bool
    properties: Properties
    reconnect: bool = False


@dataclass(slots=True)
class DisconnectedEvent:
    """The connection is gone (passed to ``on_disconnect``).

    Attributes:
        reason_code: the reason code of the server's DISCONNECT (None if the connection just
            dropped, or we closed it).
        reason_string: the server's Reason String, or a description of the failure.
        server_reference: the Server Reference of the DISCONNECT (0x9C Use another server,
            0x9D Server moved), if any.
        properties: the DISCONNECT properties, if the server sent one.
        exception: the error that ended the connection, if any.
        requested: True after :meth:`~mqttv5.client.MqttClient.disconnect`.
        will_reconnect: True when automatic reconnection is going to try.
    """

    reason_code: ReasonCode | None
    reason_string: str | None = None
    server_reference: str | None = None
    properties: Properties = field(default_factory=Properties)
    exception: BaseException | None = None
    requested: bool = False
    will_reconnect: bool = False


@dataclass(slots=True)
class ClientStats:
    """Counters kept by the client.

    Attributes:
        messages_received: PUBLISH packets delivered to the application.
        messages_sent: PUBLISH packets sent (retransmissions excluded).
        dropped_qos0: QoS 0 messages discarded because the receive queue was full.
        duplicates_suppressed: redelivered QoS 1/2 messages not handed to the application again.
        connects: successful connections (the first included).
        reconnect_attempts: connection attempts made by automatic reconnection.
    """

    messages_received: int = 0
    messages_sent: int = 0
    dropped_qos0: int = 0
    duplicates_suppressed: int = 0
    connects: int = 0
    reconnect_attempts: int = 0


class RefusedByServer(ConnectRefused):
    """CONNACK refused the connection; carries the CONNACK properties.

    Attributes:
        server_reference: the Server Reference (0x9C Use another server / 0x9D Server moved).
        properties: all CONNACK properties.
    """

    def __init__(self, reason_code: ReasonCode, properties: Properties) -> None:
        super().__init__(reason_code, properties.reason_string)
        self.properties = properties
        self.server_reference = properties.server_reference


class DisconnectedByServer(ConnectionClosed):
    """The server sent DISCONNECT; carries its reason code and properties.

    Attributes:
        reason_code: the DISCONNECT reason code.
        server_reference: the Server Reference (0x9C / 0x9D), if any.
        properties: all DISCONNECT properties.
    """

    def __init__(self, reason_code: ReasonCode, properties: Properties) -> None:
        super().__init__(None, reason_code, properties.reason_string)
        self.reason_code = reason_code
        self.properties = properties
        self.server_reference = properties.server_reference


class NotConnected(ConnectionClosed):
    """The client is not connected (and does not queue the call)."""

    def __init__(self, reason_string: str = "not connected") -> None:
        super().__init__(None, None, reason_string)


class SessionLost(MqttError):
    """The server did not resume the session (CONNACK Session Present 0), so an unacknowledged
    QoS 1/2 message of the previous connection may or may not have been delivered."""
