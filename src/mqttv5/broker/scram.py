"""SCRAM-SHA-256 enhanced authentication (MQTT 5.0 section 4.12, RFC 5802, RFC 7677).

The client proves it knows the password without sending it, and the broker proves it knows the
user's credentials; the broker stores no password, only what the PostgreSQL format stores.

The exchange, over CONNECT / AUTH / CONNACK (Authentication Method ``SCRAM-SHA-256``):

==============================  ======================================  =======================
Client                          Authentication Data                     Broker answers
==============================  ======================================  =======================
CONNECT                         client-first ``n,,n=user,r=nonce``      AUTH 0x18 server-first
AUTH 0x18                       client-final ``c=biws,r=...,p=proof``   CONNACK 0x00 ``v=...``
AUTH 0x19 (re-authenticate)     a new client-first                      AUTH 0x18 server-first
AUTH 0x18                       client-final                            AUTH 0x00 ``v=...``
==============================  ======================================  =======================

A CONNECT without Authentication Data gets an empty AUTH 0x18 first and its client-first in the
next AUTH (SASL's "no initial response"). Refusals:

- **0x86 Bad User Name or Password**: a wrong proof, an unknown user, a malformed SCRAM message,
  or a CONNECT whose User Name is not the SCRAM user. As :class:`~.authn.PasswordAuthenticator`
  answers a wrong password, so a client's retry logic treats both files alike. An unknown user
  gets a server-first with a stable made-up salt and fails at the proof, like a wrong password
  (RFC 5802 section 5.1's "mock" reply): user names cannot be probed.
- **0x87 Not authorized**: a re-authentication as another user (the broker's access rules were
  decided for the first one), or an AUTH whose exchange the broker no longer holds. A failed
  re-authentication always ends with DISCONNECT 0x87, since DISCONNECT cannot carry 0x86 or
  0x8A.
- **0x8A Banned** and **0x89 Server busy**: the lockout of :mod:`.authn` (failed logins per
  address, IPv6 per /64) and the bound on exchanges in progress.

Hashing: the broker runs **no PBKDF2** when it checks a login. The file holds StoredKey and
ServerKey, already derived; the check is four HMAC-SHA-256s and runs inline on the event loop.
The PBKDF2 (``iterations`` rounds) is the client's work, which
:class:`~mqttv5.client.scram.ScramClientAuthenticator` runs in a thread, and ``mqttv5 passwd``'s
when it writes the file. So SCRAM needs neither the password pool nor the success cache of
:class:`~.authn.PasswordAuthenticator`; it keeps its lockout.

The credentials file (``scram_file``), one user per line, ``#`` comments, as PostgreSQL's
``pg_authid.rolpassword``::

    alice:SCRAM-SHA-256$4096:<salt base64>$<StoredKey base64>:<ServerKey base64>

Needs the ``scramp`` package (the ``auth`` extra).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import importlib
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from mqttv5.protocol.errors import ConfigError
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import DISCONNECT_CODES, ReasonCode

from .auth import AuthRequest, AuthResult
from .authn import AuthStats, _Failures, lockout_key
from .passwords import AUTH_EXTRA, split_line

__all__ = [
    "DEFAULT_SCRAM_ITERATIONS",
    "METHOD",
    "ScramAuthenticator",
    "ScramCredentials",
    "ScramFile",
    "hash_scram",
    "parse_scram",
]

log = logging.getLogger("mqttv5.broker")

METHOD: Final = "SCRAM-SHA-256"
"""The Authentication Method name (RFC 7677's SASL mechanism name)."""

DEFAULT_SCRAM_ITERATIONS: Final = 4096
"""PBKDF2 iterations ``mqttv5 passwd`` writes: RFC 7677's minimum and PostgreSQL's default."""
MIN_ITERATIONS: Final = 4096  # RFC 7677 section 4; scramp refuses fewer
MAX_ITERATIONS: Final = 10_000_000  # scramp's bound
SALT_BYTES: Final = 16
KEY_BYTES: Final = 32  # SHA-256

_RC: Final = ReasonCode
_BAD_CREDENTIALS: Final = "bad user name or password"
_LINE: Final = re.compile(
    r"SCRAM-SHA-256\$([0-9]{1,10}):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)"
)


def load_scramp() -> Any:
    """The ``scramp`` module, or a ValueError naming the extra that provides it."""
    try:
        return importlib.import_module("scramp")
    except ImportError:
        raise ValueError(
            f"SCRAM-SHA-256 needs the scramp package, which is not installed: {AUTH_EXTRA}"
        ) from None


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {what} is not valid base64") from None


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """One user's SCRAM-SHA-256 verifier: no password, nothing a client could log in with."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def encode(self) -> str:
        """The text after ``user:`` in a SCRAM file."""
        b64 = base64.b64encode
        return (
            f"{METHOD}${self.iterations}:{b64(self.salt).decode()}$"
            f"{b64(self.stored_key).decode()}:{b64(self.server_key).decode()}"
        )


def parse_scram(text: str) -> ScramCredentials:
    """Read ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``.

    Raises:
        ValueError: not that format; the message says what is wrong.
    """
    match = _LINE.fullmatch(text)
    if match is None:
        raise ValueError(
            "expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> "
            "(write it with: mqttv5 passwd --hash scram-sha-256 --scram-file FILE USER)"
        )
    iterations = int(match[1])
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"the iteration count must be {MIN_ITERATIONS}..{MAX_ITERATIONS}")
    salt = _b64(match[2], "salt")
    if len(salt) < 12:
        raise ValueError("the salt is shorter than 12 bytes")
    stored, server = _b64(match[3], "StoredKey"), _b64(match[4], "ServerKey")
    if len(stored) != KEY_BYTES or len(server) != KEY_BYTES:
        raise ValueError(f"StoredKey and ServerKey must be {KEY_BYTES} bytes each")
    return ScramCredentials(iterations, salt, stored, server)


def hash_scram(password: bytes | str, iterations: int | None = None) -> str:
    """Derive a SCRAM-SHA-256 verifier from a password (PBKDF2: slow by design).

    Args:
        password: the password (bytes must be UTF-8); SASLprep-normalised as RFC 5802 asks.
        iterations: PBKDF2 iterations (default 4096, at least 4096).

    Returns:
        The text for a SCRAM file line (``user:`` + this).

    Raises:
        ValueError: too few iterations, a password that is not UTF-8 or that SASLprep
            refuses, or scramp missing (the message names the extra).
    """
    count = DEFAULT_SCRAM_ITERATIONS if iterations is None else iterations
    if not MIN_ITERATIONS <= count <= MAX_ITERATIONS:
        raise ValueError(f"SCRAM-SHA-256 needs {MIN_ITERATIONS}..{MAX_ITERATIONS} iterations")
    if isinstance(password, bytes):
        try:
            password = password.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("a SCRAM password must be UTF-8 text") from None
    scramp = load_scramp()
    try:
        salt, stored, server, count = scramp.ScramMechanism(METHOD).make_auth_info(
            password, iteration_count=count, salt=secrets.token_bytes(SALT_BYTES)
        )
    except scramp.ScramException as exc:
        raise ValueError(str(exc)) from None
    return ScramCredentials(count, salt, stored, server).encode()


class ScramFile:
    """The users of one SCRAM file, looked up by their SASLprep'd name."""

    def __init__(self, entries: Mapping[str, ScramCredentials], path: str | None = None) -> None:
        self._entries = dict(entries)
        self.path = path

    @classmethod
    def load(cls, path: str) -> ScramFile:
        """Read and check a SCRAM file.

        Raises:
            ConfigError: unreadable (key ``scram_file``), scramp missing, or a bad line
                (key ``line N``).
        """
        try:
            with open(path, "rb") as file:
                text = file.read().decode("utf-8")
        except OSError as exc:
            raise ConfigError("scram_file", f"cannot read {path}: {exc.strerror}", path) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError("scram_file", f"{path} is not UTF-8 text", path) from exc
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, source: str | None = None) -> ScramFile:
        """Read SCRAM file text; the last line of a user listed twice wins.

        Raises:
            ConfigError: a malformed line (key ``line N``) or scramp missing.
        """
        try:
            saslprep = load_scramp().utils.saslprep
        except ValueError as exc:
            raise ConfigError("scram_file", str(exc), source) from None
        entries: dict[str, ScramCredentials] = {}
        for number, line in enumerate(text.splitlines(), 1):
            try:
                parts = split_line(line)
                if parts is None:
                    continue
                user, encoded = parts
                entries[saslprep(user)] = parse_scram(encoded)
            except Exception as exc:  # ValueError, or scramp's refusal of the name
                raise ConfigError(f"line {number}", str(exc), source) from exc
        return cls(entries, source)

    def get(self, username: str) -> ScramCredentials | None:
        """The verifier of ``username`` (already SASLprep'd), or None."""
        return self._entries.get(username)

    @property
    def typical_iterations(self) -> int:
        """The iteration count unknown users are told (the first entry's, as most share it)."""
        first = next(iter(self._entries.values()), None)
        return first.iterations if first is not None else DEFAULT_SCRAM_ITERATIONS

    def __contains__(self, username: object) -> bool:
        return username in self._entries

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(slots=True)
class _Exchange:
    """One SCRAM exchange in progress (between server-first and client-final)."""

    connect_id: int  # id() of the CONNECT: the connection's identity while it lives
    deadline: float
    reauth: bool
    expected_user: str | None = None  # re-authentication: the user the connection is
    server: Any = None  # scramp.ScramServer once client-first is in
    username: str | None = None
    known: bool = False  # False: an unknown user answered with made-up credentials


_Key = tuple[str, str, int]  # (listener, peer address, peer port): one live connection


def _after_connack(answer: AuthResult) -> AuthResult:
    """A refused re-authentication ends in DISCONNECT [MQTT-4.12.1-2], which cannot carry
    0x86 or 0x8A: those become 0x87 Not authorized."""
    code = answer.reason_code
    if code.is_error and code not in DISCONNECT_CODES:
        answer.reason_code = _RC.NOT_AUTHORIZED
    return answer


class ScramAuthenticator:
    """SCRAM-SHA-256 over MQTT 5.0 enhanced authentication.

    Both an :class:`~.auth.Authenticator` (``authenticate``: decides every client) and an
    :class:`~.authn.AuthProvider` (``check``: None for clients that do not use SCRAM-SHA-256),
    so it can be combined with a password file in a :class:`~.authn.CompositeAuthenticator`.
    Must be called on the event loop. State is kept per connection, keyed by listener and peer
    address and port, bounded in number and time.

    Args:
        scram_file: a path (read now; :meth:`reload` re-reads it) or a loaded file.
        allow_anonymous: ``authenticate``'s answer to a client without user name or method.
        lockout_failures: failed logins from one address (IPv6: one /64) within
            ``lockout_window`` seconds that lock it out for ``lockout_seconds``; 0 disables.
        max_exchanges: exchanges in progress at once; beyond, 0x89 Server busy.
        exchange_timeout: seconds an exchange may wait for the client's next AUTH.
        max_tracked: connections whose SCRAM user is remembered for re-authentication, and
            addresses whose failures are remembered (oldest forgotten first).
        clock: monotonic time source (tests pass a fake one).

    Raises:
        ConfigError: the file cannot be read or is malformed, or scramp is missing.
    """

    def __init__(
        self,
        scram_file: str | ScramFile,
        allow_anonymous: bool = False,
        *,
        lockout_failures: int = 10,
        lockout_window: float = 60.0,
        lockout_seconds: float = 300.0,
        max_exchanges: int = 10_000,
        exchange_timeout: float = 30.0,
        max_tracked: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.file = scram_file if isinstance(scram_file, ScramFile) else ScramFile.load(scram_file)
        self._scramp = load_scramp()
        self._mechanism = self._scramp.ScramMechanism(METHOD)
        self.allow_anonymous = allow_anonymous
        self.max_exchanges = max_exchanges
        self.exchange_timeout = exchange_timeout
        self.max_tracked = max_tracked
        self.clock = clock
        self.stats = AuthStats()
        self._failures = _Failures(lockout_failures, lockout_window, lockout_seconds, max_tracked)
        self._exchanges: OrderedDict[_Key, _Exchange] = OrderedDict()
        # connection -> (id of its CONNECT, its SCRAM user): re-authentication must keep the user
        self._identities: OrderedDict[_Key, tuple[int, str]] = OrderedDict()
        self._mock_key = secrets.token_bytes(32)

    @property
    def pending(self) -> int:
        """Exchanges in progress."""
        return len(self._exchanges)

    def authenticate(self, request: AuthRequest) -> AuthResult:
        """Answer every client: SCRAM-SHA-256 as :meth:`check`; others as a broker with only
        this file would (0x8C for another method, 0x86 for a user name and password, anonymous
        per ``allow_anonymous``)."""
        answer = self.check(request)
        if answer is not None:
            return answer
        connect = request.connect
        method = connect.properties.authentication_method
        if method is not None:
            return AuthResult(
                _RC.BAD_AUTHENTICATION_METHOD,
                reason_string=f"authentication method {method!r} not supported",
            )
        if connect.username is not None:
            return AuthResult(_RC.BAD_USER_NAME_OR_PASSWORD, reason_string=_BAD_CREDENTIALS)
        if self.allow_anonymous:
            return AuthResult(_RC.SUCCESS)
        return AuthResult(_RC.NOT_AUTHORIZED, reason_string="a user name is required")

    def check(self, request: AuthRequest) -> AuthResult | None:
        """The :class:`~.authn.AuthProvider` view: None unless the CONNECT's Authentication
        Method is SCRAM-SHA-256; otherwise the next step of the exchange."""
        connect = request.connect
        if connect.properties.authentication_method != METHOD:
            return None
        key = (request.listener, request.peer_address, request.peer_port)
        auth = request.auth
        if auth is None:
            return self._start(request, key, connect.properties.authentication_data, False)
        data = auth.properties.authentication_data
        if auth.reason_code == _RC.RE_AUTHENTICATE:
            return _after_connack(self._start(request, key, data, True))
        exchange = self._exchanges.get(key)
        answer = self._continue(request, key, data)
        return _after_connack(answer) if exchange is not None and exchange.reauth else answer

    def reload(self) -> None:
        """Re-read the SCRAM file (on SIGHUP); on error the previous file stays in force.

        Exchanges in progress finish with the credentials they started with.

        Raises:
            ConfigError: the file cannot be read or is malformed.
        """
        if self.file.path is None:
            raise ValueError("this SCRAM file was not loaded from a path")
        self.file = ScramFile.load(self.file.path)

    def close(self) -> None:
        """Forget every exchange in progress (there are no threads to stop)."""
        self._exchanges.clear()

    # --- the exchange ---------------------------------------------------------------------------

    def _start(
        self, request: AuthRequest, key: _Key, data: bytes | None, reauth: bool
    ) -> AuthResult:
        now = self.clock()
        if self._failures.locked(lockout_key(request.peer_address), now):
            self.stats.refused_locked += 1
            return AuthResult(_RC.BANNED, reason_string="too many failed logins; try again later")
        self._exchanges.pop(key, None)  # a new CONNECT or re-authentication starts afresh
        self._prune(now)
        if len(self._exchanges) >= self.max_exchanges:
            self.stats.busy += 1
            log.warning("SCRAM login from %s refused: too many exchanges", request.peer_address)
            return AuthResult(_RC.SERVER_BUSY, reason_string="server busy; try again later")
        exchange = _Exchange(id(request.connect), now + self.exchange_timeout, reauth)
        if reauth:
            known = self._identities.get(key)
            if known is not None and known[0] == id(request.connect):
                exchange.expected_user = known[1]
                self._identities.move_to_end(key)
            elif request.connect.username is not None:
                exchange.expected_user = request.connect.username
            else:
                return AuthResult(
                    _RC.NOT_AUTHORIZED, reason_string="re-authentication state lost; reconnect"
                )
        if not data:  # no initial response: ask for client-first with an empty challenge
            self._exchanges[key] = exchange
            return AuthResult(_RC.CONTINUE_AUTHENTICATION)
        return self._client_first_untrusted(request, key, exchange, data)

    def _client_first_untrusted(
        self, request: AuthRequest, key: _Key, exchange: _Exchange, data: bytes
    ) -> AuthResult:
        scramp = self._scramp

        def lookup(user: str) -> tuple[bytes, bytes, bytes, int]:
            exchange.username = user
            entry = self.file.get(user)
            exchange.known = entry is not None
            if entry is None:
                entry = self._mock(user)
            return entry.salt, entry.stored_key, entry.server_key, entry.iterations

        try:
            server = self._mechanism.make_server(lookup)
            server.set_client_first(data.decode("utf-8"))
            server_first = server.get_server_first()
        except (UnicodeDecodeError, scramp.ScramException) as exc:
            return self._failed(request, exchange.username, f"bad client-first message: {exc}")
        user = exchange.username
        assert user is not None
        connect_user = request.connect.username
        if not exchange.reauth and connect_user is not None and connect_user != user:
            return self._failed(request, user, f"CONNECT user name is {connect_user!r}")
        if exchange.reauth and user != exchange.expected_user:
            log.warning(
                "Re-authentication of %r from %s as %r refused: another user",
                exchange.expected_user, request.peer_address, user,
            )  # fmt: skip
            return AuthResult(
                _RC.NOT_AUTHORIZED, reason_string="re-authentication must keep the same user"
            )
        exchange.server = server
        self._exchanges[key] = exchange
        props = Properties(authentication_data=server_first.encode("utf-8"))
        return AuthResult(_RC.CONTINUE_AUTHENTICATION, properties=props)

    def _continue(self, request: AuthRequest, key: _Key, data: bytes | None) -> AuthResult:
        exchange = self._exchanges.pop(key, None)
        if (
            exchange is None
            or exchange.connect_id != id(request.connect)
            or exchange.deadline <= self.clock()
        ):
            return AuthResult(_RC.NOT_AUTHORIZED, reason_string="no SCRAM exchange in progress")
        if exchange.server is None:  # this AUTH carries the client-first message
            if not data:
                return self._failed(request, None, "empty client-first message")
            return self._client_first_untrusted(request, key, exchange, data)
        return self._client_final_untrusted(request, key, exchange, data or b"")

    def _client_final_untrusted(
        self, request: AuthRequest, key: _Key, exchange: _Exchange, data: bytes
    ) -> AuthResult:
        user = exchange.username
        assert user is not None
        try:
            exchange.server.set_client_final(data.decode("utf-8"))
            server_final = exchange.server.get_server_final()
        except (UnicodeDecodeError, self._scramp.ScramException) as exc:
            why = "unknown user" if not exchange.known else f"bad proof ({exc})"
            return self._failed(request, user, why)
        if not exchange.known:  # cannot happen (random keys), but never accept a mock user
            return self._failed(request, user, "unknown user")
        self._identities[key] = (exchange.connect_id, user)
        self._identities.move_to_end(key)
        while len(self._identities) > self.max_tracked:
            self._identities.popitem(last=False)
        props = Properties(authentication_data=server_final.encode("utf-8"))
        return AuthResult(_RC.SUCCESS, username=user, properties=props)

    def _mock(self, user: str) -> ScramCredentials:
        """Made-up credentials for an unknown user: the same salt each time (a changing salt
        would tell that the user does not exist), keys nobody can match."""
        digest = hmac.new(self._mock_key, user.encode("utf-8"), hashlib.sha256).digest()
        return ScramCredentials(
            self.file.typical_iterations,
            digest[:SALT_BYTES],
            secrets.token_bytes(KEY_BYTES),
            secrets.token_bytes(KEY_BYTES),
        )

    def _failed(self, request: AuthRequest, user: str | None, why: str) -> AuthResult:
        self.stats.failures += 1
        log.warning("Failed SCRAM login of %r from %s: %s", user, request.peer_address, why)
        address = lockout_key(request.peer_address)
        if self._failures.record(address, self.clock()):
            self.stats.lockouts += 1
            log.warning(
                "Too many failed logins from %s: refusing its logins for %g s",
                address, self._failures.duration,
            )  # fmt: skip
        return AuthResult(_RC.BAD_USER_NAME_OR_PASSWORD, reason_string=_BAD_CREDENTIALS)

    def _prune(self, now: float) -> None:
        exchanges = self._exchanges
        while exchanges:
            oldest = next(iter(exchanges.values()))
            if oldest.deadline > now:
                break
            exchanges.popitem(last=False)
