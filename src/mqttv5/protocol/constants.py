"""Protocol constants: packet types, QoS levels, protocol versions."""

from __future__ import annotations

from enum import IntEnum
from typing import Final

__all__ = [
    "MQTT_3_1",
    "MQTT_3_1_1",
    "MQTT_5",
    "PacketType",
    "ProtocolVersion",
    "QoS",
    "RetainHandling",
]


class PacketType(IntEnum):
    """Control packet types (fixed header bits 7-4), section 2.1.2."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class QoS(IntEnum):
    """Quality of Service levels."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2


class RetainHandling(IntEnum):
    """Subscription option Retain Handling (section 3.8.3.1)."""

    SEND_ON_SUBSCRIBE = 0
    SEND_IF_NEW_SUBSCRIPTION = 1
    DO_NOT_SEND = 2


class ProtocolVersion(IntEnum):
    """The Protocol Level byte of CONNECT."""

    V31 = 3
    V311 = 4
    V5 = 5


MQTT_3_1: Final = ProtocolVersion.V31
MQTT_3_1_1: Final = ProtocolVersion.V311
MQTT_5: Final = ProtocolVersion.V5
