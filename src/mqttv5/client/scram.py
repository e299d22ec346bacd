"""SCRAM-SHA-256 for :class:`~mqttv5.client.MqttClient` (enhanced authentication, RFC 7677).

::

    from mqttv5 import MqttClient
    from mqttv5.client.options import ConnectOptions
    from mqttv5.client.scram import ScramClientAuthenticator

    options = ConnectOptions(authenticator=ScramClientAuthenticator("alice", "secret"))
    async with MqttClient("c1", url="mqtt://broker:1883", options=options) as client:
        ...
        await client.reauthenticate()      # AUTH 0x19: a fresh SCRAM exchange

The client sends the client-first message in CONNECT, answers the server-first challenge with
its proof, and checks the server's signature in CONNACK (or AUTH 0x00 after a
re-authentication): a server that does not know the user's verifier cannot complete the
exchange, so connecting also authenticates the server. The PBKDF2 with the server's iteration
count runs in a worker thread, never on the event loop, and a server asking for more than
``max_iterations`` is refused (it would make every login cost the client seconds of CPU).

Needs the ``scramp`` package (``pip install 'mqttv5[auth]'``).
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any, Final

from ..protocol.errors import MqttError
from ..protocol.reason_codes import ReasonCode

__all__ = ["METHOD", "ScramClientAuthenticator", "ScramError"]

METHOD: Final = "SCRAM-SHA-256"
DEFAULT_MAX_ITERATIONS: Final = 1_000_000


class ScramError(MqttError):
    """The SCRAM exchange failed on our side: a malformed or unexpected server message, a
    server signature that does not match (the server does not know our verifier), or too many
    iterations asked for. Raised from ``connect()`` / ``reauthenticate()``."""


def _scramp() -> Any:
    try:
        return importlib.import_module("scramp")
    except ImportError:
        raise ScramError(
            "SCRAM-SHA-256 needs the scramp package, which is not installed: "
            "pip install 'mqttv5[auth]'"
        ) from None


class ScramClientAuthenticator:
    """The client side of SCRAM-SHA-256 (the :class:`~mqttv5.client.options.Authenticator`
    protocol): :meth:`start` begins a new exchange each time (connect, reconnect,
    re-authentication).

    Args:
        username: the SCRAM user name (sent in the client-first message).
        password: the password; never sent.
        max_iterations: the largest PBKDF2 iteration count accepted from the server.
    """

    def __init__(
        self,
        username: str,
        password: str | bytes,
        *,
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
    ) -> None:
        self.username = username
        self.password = password.decode("utf-8") if isinstance(password, bytes) else password
        self.max_iterations = max_iterations
        self._scramp = _scramp()
        self._client: Any = None

    async def start(self) -> tuple[str, bytes | None]:
        """A new exchange: ``("SCRAM-SHA-256", client-first message)``."""
        scramp = self._scramp
        try:
            self._client = scramp.ScramClient([METHOD], self.username, self.password)
            first: str = self._client.get_client_first()
        except scramp.ScramException as exc:
            raise ScramError(f"SCRAM: {exc}") from None
        return METHOD, first.encode("utf-8")

    async def step(self, reason_code: ReasonCode, data: bytes | None) -> bytes | None:
        """Answer server-first with client-final (PBKDF2 in a thread); on SUCCESS, check the
        server's signature.

        Raises:
            ScramError: the server's message is missing, malformed or wrong.
        """
        client = self._client
        if client is None:
            raise ScramError("SCRAM: no exchange in progress")
        if data is None:
            raise ScramError("SCRAM: the server sent no authentication data")
        scramp = self._scramp
        try:
            text = data.decode("utf-8")
            if reason_code == ReasonCode.SUCCESS:
                self._client = None
                client.set_server_final(text)  # raises unless the server knew our verifier
                return None
            client.set_server_first(text)
            if int(client.iterations) > self.max_iterations:
                raise ScramError(
                    f"SCRAM: the server asks for {client.iterations} iterations "
                    f"(more than max_iterations={self.max_iterations})"
                )
            final: str = await asyncio.to_thread(client.get_client_final)
        except (UnicodeDecodeError, scramp.ScramException) as exc:
            raise ScramError(f"SCRAM: {exc}") from None
        return final.encode("utf-8")
