"""The exception tree of mqttv5.

Everything mqttv5 raises derives from :class:`MqttError`. The protocol core raises only
:class:`ProtocolError` (and its two subclasses), always carrying the :class:`ReasonCode` the
specification asks the receiving side to send, so a fuzz harness needs to expect one family only.
"""

from __future__ import annotations

from .reason_codes import ReasonCode

__all__ = [
    "ConfigError",
    "ConnectRefused",
    "ConnectionClosed",
    "InvalidState",
    "LocalProtocolError",
    "MqttError",
    "ProtocolError",
    "RemoteProtocolError",
]


class MqttError(Exception):
    """Base class of every exception mqttv5 raises."""


class ProtocolError(MqttError):
    """A rule of the MQTT protocol was broken.

    Attributes:
        reason_code: the reason code the receiving side sends (in CONNACK or DISCONNECT).
        message: a human-readable explanation naming the offending field.
    """

    def __init__(self, reason_code: ReasonCode, message: str) -> None:
        super().__init__(f"{message} ({reason_code.name}, 0x{int(reason_code):02X})")
        self.reason_code = reason_code
        self.message = message


class RemoteProtocolError(ProtocolError):
    """The peer broke a rule: raised while decoding or receiving."""


class LocalProtocolError(ProtocolError):
    """The caller broke a rule: raised while building or sending."""


class ConnectionClosed(MqttError):
    """The network connection is closed.

    Attributes:
        sent: reason code of the DISCONNECT we sent, if any.
        received: reason code of the DISCONNECT (or refusing CONNACK) we received, if any.
        reason_string: the Reason String that came with it, if any.
    """

    def __init__(
        self,
        sent: ReasonCode | None = None,
        received: ReasonCode | None = None,
        reason_string: str | None = None,
    ) -> None:
        parts = []
        if sent is not None:
            parts.append(f"sent {sent.name} (0x{int(sent):02X})")
        if received is not None:
            parts.append(f"received {received.name} (0x{int(received):02X})")
        if reason_string:
            parts.append(repr(reason_string))
        super().__init__("connection closed" + (": " + ", ".join(parts) if parts else ""))
        self.sent = sent
        self.received = received
        self.reason_string = reason_string


class ConnectRefused(MqttError):
    """The server answered CONNECT with a CONNACK whose reason code is an error."""

    def __init__(self, reason_code: ReasonCode, reason_string: str | None = None) -> None:
        text = reason_code.name.replace("_", " ").lower()
        msg = f"Connection refused: {text} (0x{int(reason_code):02X})"
        if reason_string:
            msg += f": {reason_string}"
        super().__init__(msg)
        self.reason_code = reason_code
        self.reason_string = reason_string


class InvalidState(MqttError, AssertionError):
    """A call is not allowed in the connection's current state."""


class ConfigError(MqttError):
    """An unknown key or a bad value in a configuration file or flag.

    Attributes:
        key: the offending key (dotted path, e.g. ``listener[0].port``).
        source: the file or flag the value came from, if known.
    """

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {message}")
        self.key = key
        self.source = source
        self.message = message
