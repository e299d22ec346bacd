"""The asyncio MQTT 5.0 client: :class:`MqttClient` and what it hands to the application."""

from __future__ import annotations

from ..protocol.packets import Subscription, Will
from .client import MqttClient, StreamOpener
from .message import (
    ClientStats,
    ConnectedEvent,
    DisconnectedByServer,
    DisconnectedEvent,
    Message,
    MessageCallback,
    NotConnected,
    RefusedByServer,
    SessionLost,
)
from .options import Authenticator, ConnectOptions, Overflow, ReconnectPolicy

__all__ = [
    "Authenticator",
    "ClientStats",
    "ConnectOptions",
    "ConnectedEvent",
    "DisconnectedByServer",
    "DisconnectedEvent",
    "Message",
    "MessageCallback",
    "MqttClient",
    "NotConnected",
    "Overflow",
    "ReconnectPolicy",
    "RefusedByServer",
    "SessionLost",
    "StreamOpener",
    "Subscription",
    "Will",
]
