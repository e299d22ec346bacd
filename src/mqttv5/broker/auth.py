"""Authentication: the interface the handler calls on CONNECT (and AUTH), and the built-in
allow-anonymous policy.

An :class:`Authenticator` returns an :class:`AuthResult` directly, or an awaitable of one when it
must wait (a slow hash run off the event loop); the handler holds the connection's later packets
until it has the answer.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from mqttv5.protocol.packets import Auth, Connect
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode

__all__ = ["AnonymousPolicy", "AuthRequest", "AuthResult", "Authenticator"]


@dataclass(slots=True)
class AuthRequest:
    """What an authenticator sees of a connecting client."""

    connect: Connect
    peer_address: str
    peer_port: int
    listener: str
    is_loopback: bool
    auth: Auth | None = None  # set for AUTH exchanges (enhanced authentication)
    # The client's verified TLS certificate (``ssl.SSLSocket.getpeercert()`` shape), if any
    peer_certificate: dict[str, object] | None = None


@dataclass(slots=True)
class AuthResult:
    """An authenticator's answer.

    ``reason_code`` SUCCESS accepts; CONTINUE_AUTHENTICATION sends AUTH with ``properties`` and
    waits for the client's next AUTH; an error code refuses (CONNACK with that code).
    """

    reason_code: ReasonCode = ReasonCode.SUCCESS
    username: str | None = None
    properties: Properties = field(default_factory=Properties)
    reason_string: str | None = None


class Authenticator(Protocol):
    """Decides whether a client may connect."""

    def authenticate(self, request: AuthRequest) -> AuthResult | Awaitable[AuthResult]:
        """Answer a CONNECT (or an AUTH packet of an ongoing exchange)."""
        ...


class AnonymousPolicy:
    """The authentication in force until a password file is configured.

    With ``allow_anonymous`` true every client is accepted (Mosquitto 2.0's default on its
    loopback-only default listener); otherwise every client is refused with 0x87 Not authorized
    (0x05 in 3.1.1), because no credentials can be checked. Enhanced authentication methods are
    refused with 0x8C Bad authentication method.
    """

    def __init__(self, allow_anonymous: bool) -> None:
        self.allow_anonymous = allow_anonymous

    def authenticate(self, request: AuthRequest) -> AuthResult:
        """Accept or refuse per ``allow_anonymous``."""
        connect = request.connect
        if request.auth is not None:
            return AuthResult(ReasonCode.BAD_AUTHENTICATION_METHOD)
        if connect.properties.authentication_method is not None:
            return AuthResult(
                ReasonCode.BAD_AUTHENTICATION_METHOD,
                reason_string=f"authentication method "
                f"{connect.properties.authentication_method!r} not supported",
            )
        if not self.allow_anonymous:
            return AuthResult(ReasonCode.NOT_AUTHORIZED, reason_string="not authorized")
        return AuthResult(ReasonCode.SUCCESS, username=connect.username)
