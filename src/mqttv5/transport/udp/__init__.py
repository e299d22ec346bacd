"""MQTT over UDP: a reliable, ordered message connection on datagrams (docs/udp.md).

Outermost first: UDP -> DTLS (when used) -> this package's reliability / fragment header ->
MQTT bytes. Everything here except ``endpoint`` is sans-I/O: datagrams and ``now`` in,
datagrams, events and a deadline out. ``endpoint`` is the asyncio glue.
"""

from __future__ import annotations

from .reliability import (
    AddressMigrated,
    Connected,
    ConnectionState,
    ConnectionStats,
    ConnectionTerminated,
    DataReceived,
    Event,
    PathSuspect,
    ReliableConnection,
    UdpSettings,
)
from .server import ConnectionMigrated, NewConnection, ServerEvent, ServerStats, UdpServer

__all__ = [
    "AddressMigrated",
    "Connected",
    "ConnectionMigrated",
    "ConnectionState",
    "ConnectionStats",
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "NewConnection",
    "PathSuspect",
    "ReliableConnection",
    "ServerEvent",
    "ServerStats",
    "UdpServer",
    "UdpSettings",
]
