"""Options of :class:`~mqttv5.client.MqttClient`: what goes into CONNECT, and how the client
behaves (reconnection, queues, acknowledgement)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, runtime_checkable

from ..protocol.packets import Will
from ..protocol.properties import Properties
from ..protocol.reason_codes import ReasonCode
from ..transport.dtls import DtlsClientSettings
from ..transport.tls import TlsConfig
from ..transport.udp.reliability import UdpSettings

__all__ = [
    "Authenticator",
    "ConnectOptions",
    "Overflow",
    "ReconnectPolicy",
]


@runtime_checkable
class Authenticator(Protocol):
    """Enhanced authentication (AUTH packet exchange, section 4.12).

    :meth:`start` gives the Authentication Method and the first Authentication Data (sent in
    CONNECT, or in AUTH 0x19 to re-authenticate). Each AUTH 0x18 *Continue authentication*
    from the server calls :meth:`step` with the server's data; its return value goes back in the
    client's AUTH 0x18. When the exchange succeeds, :meth:`step` is called once more with
    ``ReasonCode.SUCCESS`` and the server's final data (from CONNACK or AUTH 0x00) so the
    authenticator can verify the server; its return value is then ignored. Raising in
    :meth:`step` aborts the exchange.
    """

    async def start(self) -> tuple[str, bytes | None]:
        """Return ``(authentication method, initial authentication data or None)``."""
        ...

    async def step(self, reason_code: ReasonCode, data: bytes | None) -> bytes | None:
        """Answer one server challenge; return the client's response data."""
        ...


class Overflow(Enum):
    """What happens to a QoS 0 message when the receive queue is full.

    QoS 1/2 messages are never dropped: their acknowledgement is withheld instead, and the
    server stops sending once our Receive Maximum is reached.
    """

    DROP_OLDEST = "drop_oldest"
    """Discard the oldest queued QoS 0 message to make room (the default)."""
    DROP_NEWEST = "drop_newest"
    """Discard the message that just arrived."""


@dataclass(slots=True)
class ReconnectPolicy:
    """Automatic reconnection with exponential backoff and jitter.

    The n-th attempt waits ``min(max_delay, initial_delay * multiplier ** (n - 1))``, scaled by a
    random factor in ``[1 - jitter, 1]``. Reconnection never follows an explicit
    :meth:`~mqttv5.client.MqttClient.disconnect`, and stops on a refusal that retrying cannot
    fix (bad credentials, not authorized, banned, bad authentication method, unsupported
    protocol version, client identifier not valid).

    Attributes:
        enabled: reconnect when the connection is lost (library default: off).
        initial_delay: seconds before the first attempt.
        max_delay: upper bound of the delay.
        multiplier: growth factor per failed attempt.
        jitter: fraction of the delay that is randomized (0 = none).
        max_attempts: give up after this many failed attempts in a row (None = never).
    """

    enabled: bool = False
    initial_delay: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int | None = None

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** max(0, attempt - 1))
        return base * (1.0 - self.jitter * rng.random())


PERMANENT_REFUSALS = frozenset(
    {
        ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
        ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
        ReasonCode.BAD_USER_NAME_OR_PASSWORD,
        ReasonCode.NOT_AUTHORIZED,
        ReasonCode.BANNED,
        ReasonCode.BAD_AUTHENTICATION_METHOD,
    }
)


@dataclass(slots=True)
class ConnectOptions:
    """Everything the client puts into CONNECT (section 3.1).

    Attributes:
        clean_start: start a new session (first connection only: reconnections set Clean Start
            to 0 when the session can outlive the connection, i.e. ``session_expiry_interval`` >
            0, so the session is resumed).
        keep_alive: seconds; 0 turns keep-alive off. The server's Server Keep Alive overrides it.
        session_expiry_interval: seconds the session outlives the connection (0xFFFFFFFF =
            never expires).
        receive_maximum: how many QoS 1/2 messages the server may have unacknowledged at us.
        maximum_packet_size: the largest packet we accept (None = the protocol limit).
        topic_alias_maximum: how many topic aliases the server may use towards us.
        request_response_information: ask for Response Information in CONNACK.
        request_problem_information: 0 asks the server to leave out Reason Strings and User
            Properties (None = the protocol default, 1).
        user_properties: User Properties of CONNECT, in order.
        username: user name, if any.
        password: password (bytes or str), if any.
        will: the Will Message, if any.
        authenticator: enhanced authentication, if any.
        version: protocol level: 5 (MQTT 5.0) or 4 (3.1.1).
        connect_timeout: seconds to wait for the transport and CONNACK.
        tls: TLS settings for ``mqtts://`` and ``wss://`` URLs (CA, client certificate ...);
            None: the system's CAs, no client certificate. See
            :meth:`~mqttv5.client.MqttClient.set_tls_config`.
        dtls: DTLS settings for ``mqtts-dtls://`` URLs (PSK identity and key, or CA and client
            certificate); None: the CA and certificate of ``tls``. See
            :meth:`~mqttv5.client.MqttClient.set_dtls_config`.
        udp: reliability settings for ``mqtt-udp://`` and ``mqtts-dtls://`` (``mtu``,
            ``rto_min``, ``rto_max``, ``max_retransmits``, ``idle_timeout``); None: defaults.
        bridge: announce a bridge (Mosquitto's ``try_private``: bit 0x80 set on the protocol
            level of CONNECT). A broker that honours it (Mosquitto) does not send the bridge
            its own publications back and keeps their RETAIN flag, even over 3.1.1; one that
            does not may refuse the connection.
    """

    clean_start: bool = True
    keep_alive: int = 60
    session_expiry_interval: int = 0
    receive_maximum: int | None = None
    maximum_packet_size: int | None = None
    topic_alias_maximum: int = 16
    request_response_information: bool = False
    request_problem_information: bool | None = None
    user_properties: list[tuple[str, str]] = field(default_factory=list)
    username: str | None = None
    password: bytes | str | None = None
    will: Will | None = None
    authenticator: Authenticator | None = None
    version: int = 5
    connect_timeout: float = 10.0
    tls: TlsConfig | None = None
    dtls: DtlsClientSettings | None = None
    udp: UdpSettings | None = None
    bridge: bool = False

    def connect_properties(self) -> Properties:
        """The CONNECT properties these options produce (without authentication)."""
        props = Properties(user_properties=self.user_properties)
        if self.session_expiry_interval:
            props.session_expiry_interval = self.session_expiry_interval
        if self.receive_maximum is not None and self.receive_maximum != 65535:
            props.receive_maximum = self.receive_maximum
        if self.maximum_packet_size is not None:
            props.maximum_packet_size = self.maximum_packet_size
        if self.topic_alias_maximum:
            props.topic_alias_maximum = self.topic_alias_maximum
        if self.request_response_information:
            props.request_response_information = 1
        if self.request_problem_information is not None:
            props.request_problem_information = int(self.request_problem_information)
        return props
