"""mqttv5: an MQTT 5.0 platform in Python — broker, asyncio client and command-line tool."""

from __future__ import annotations

from .client import ConnectOptions, Message, MqttClient, Will
from .protocol.constants import QoS, RetainHandling
from .protocol.errors import (
    ConfigError,
    ConnectionClosed,
    ConnectRefused,
    InvalidState,
    LocalProtocolError,
    MqttError,
    ProtocolError,
    RemoteProtocolError,
)
from .protocol.properties import Properties
from .protocol.reason_codes import ReasonCode

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConnectOptions",
    "ConnectRefused",
    "ConnectionClosed",
    "InvalidState",
    "LocalProtocolError",
    "Message",
    "MqttClient",
    "MqttError",
    "Properties",
    "ProtocolError",
    "QoS",
    "ReasonCode",
    "RemoteProtocolError",
    "RetainHandling",
    "Will",
    "__version__",
]
