"""Password authentication for the broker, and a way to combine several authentication sources.

:class:`PasswordAuthenticator` implements the :class:`~mqttv5.broker.auth.Authenticator`
protocol over a Mosquitto password file (:mod:`mqttv5.broker.passwords`). Its answers:

========================================  ==============================  =====================
Client                                    MQTT 5.0 CONNACK                3.1.1 return code
========================================  ==============================  =====================
no user name, ``allow_anonymous`` true    0x00 Success                    0
no user name, ``allow_anonymous`` false   0x87 Not authorized             5
unknown user, wrong or missing password   0x86 Bad User Name or Password  4
address locked out (too many failures)    0x8A Banned                     5
too many hashes waiting                   0x89 Server busy                3
an Authentication Method (enhanced auth)  0x8C Bad authentication method  4
========================================  ==============================  =====================

(The broker maps the 5.0 codes to 3.1.1 return codes.) Mosquitto 2.0 answers a wrong password
with 0x87 / 5 (not authorised), like a refused anonymous client; we use the code that says what
went wrong.

Hash checks are slow by design (PBKDF2, Argon2id, bcrypt), so they run in a small thread pool
owned by the authenticator (``max_concurrent`` threads), never on the event loop; ``authenticate``
then returns an awaitable and the handler holds the connection's later packets until it
resolves. Three things keep a flood of CONNECTs from turning into a flood of hashes:

- **Lockout, checked before any hashing.** ``lockout_failures`` failed logins from one address
  within ``lockout_window`` seconds refuse every login from that address for
  ``lockout_seconds``, answered at once with 0x8A Banned: the spec's code for a refusal decided
  by the server's policy rather than by these credentials. Answering 0x86 instead would tell a
  legitimate user behind the same address that a correct password is wrong. IPv6 clients are
  counted per /64 (one subscriber's network), since one host can use many addresses of its /64.
  A success does not reset the count, so one known password does not buy unlimited guesses at
  others; the window does.
- **A bounded queue.** When ``max_concurrent + queue_limit`` checks are already running or
  waiting, the next CONNECT is answered 0x89 Server busy at once (not counted as a failure).
- **A cache of recent successes.** ``HMAC-SHA256(key, user ‖ stored hash ‖ password)`` maps to an
  expiry time, with ``key`` random per process and per :meth:`~PasswordAuthenticator.reload`: a
  client that reconnects with the same credentials is not rehashed, and the cache holds no
  password nor anything that can be attacked offline without the key.

An unknown user name is hashed against some other entry of the file and refused, so a refusal
takes as long either way and user names cannot be probed by timing. Failed logins are logged on
logger ``mqttv5.broker`` at WARNING with the user name and the address, never the password.

Combining sources
-----------------
:class:`CompositeAuthenticator` asks several providers in order. A provider is anything with an
:class:`AuthProvider` ``check`` method: it answers an :class:`~mqttv5.broker.auth.AuthResult`, an
awaitable of one, or **None for "no opinion"** (this client is not mine: a certificate
provider when there is no certificate, a password file that does not list the user). Plain
:class:`~mqttv5.broker.auth.Authenticator` objects are accepted too and always have an opinion.
:class:`PasswordAuthenticator` is both: ``authenticate`` decides everything, ``check`` abstains
for clients without a user name, users not in its file and enhanced-authentication methods.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeAlias, runtime_checkable

from mqttv5.protocol.reason_codes import ReasonCode

from .auth import Authenticator, AuthRequest, AuthResult
from .passwords import PasswordFile, PasswordHash

__all__ = [
    "AuthProvider",
    "AuthStats",
    "CompositeAuthenticator",
    "PasswordAuthenticator",
    "lockout_key",
]

log = logging.getLogger("mqttv5.broker")

_RC: Final = ReasonCode
_BAD_CREDENTIALS: Final = "bad user name or password"

Answer: TypeAlias = AuthResult | Awaitable[AuthResult | None] | None
"""What a provider's ``check`` returns: a decision, None (no opinion), or an awaitable of either."""


@runtime_checkable
class AuthProvider(Protocol):
    """One authentication source inside a :class:`CompositeAuthenticator`."""

    def check(self, request: AuthRequest) -> Answer:
        """Decide about this client, or return None when it is not this provider's to decide."""
        ...


def lockout_key(address: str) -> str:
    """The address failures are counted under: an IPv4 address as is (also when IPv4-mapped),
    an IPv6 address as its /64 network, anything unparsable as given."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class AuthStats:
    """Counters for logs and metrics."""

    hashes: int = 0  #: hash checks started (in the pool or inline)
    cache_hits: int = 0  #: logins accepted from the success cache
    failures: int = 0  #: failed logins (wrong password, unknown user, no password)
    lockouts: int = 0  #: lockouts started
    refused_locked: int = 0  #: logins refused because their address was locked out
    busy: int = 0  #: logins refused with Server busy


class _Failures:
    """Failed logins per address and the lockouts they cause (bounded memory, oldest first)."""

    def __init__(self, limit: int, window: float, duration: float, max_tracked: int) -> None:
        self.limit = limit
        self.window = window
        self.duration = duration
        self.max_tracked = max_tracked
        # key -> (recent failure times, locked until); least recently failed first
        self._by_key: OrderedDict[str, tuple[deque[float], float]] = OrderedDict()

    def locked(self, key: str, now: float) -> bool:
        entry = self._by_key.get(key)
        return entry is not None and entry[1] > now

    def record(self, key: str, now: float) -> bool:
        """Count a failure; True when it starts a lockout."""
        if self.limit <= 0:
            return False
        times, until = self._by_key.pop(key, (deque(maxlen=self.limit), 0.0))
        times.append(now)
        started = until <= now and len(times) == self.limit and times[0] > now - self.window
        if started:
            until = now + self.duration
            times.clear()
        self._by_key[key] = (times, until)
        self._prune(now)
        return started

    def _prune(self, now: float) -> None:
        while len(self._by_key) > self.max_tracked:
            self._by_key.popitem(last=False)
        while self._by_key:
            times, until = next(iter(self._by_key.values()))
            if until > now or (times and times[-1] > now - self.window):
                break
            self._by_key.popitem(last=False)


class _SuccessCache:
    """Recent successful logins: keyed HMAC of the credentials -> expiry (LRU, bounded)."""

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self._key = secrets.token_bytes(32)
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def key(self, username: str, entry: PasswordHash, password: bytes) -> bytes:
        # User names and hashes never contain U+0000 [MQTT-1.5.4-2], so NUL separates unambiguously.
        message = b"%s\0%s\0%s" % (username.encode(), entry.encoded.encode(), password)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def hit(self, key: bytes, now: float) -> bool:
        expiry = self._expiry.get(key)
        if expiry is None:
            return False
        if expiry <= now:
            del self._expiry[key]
            return False
        self._expiry.move_to_end(key)
        return True

    def add(self, key: bytes, now: float) -> None:
        if self.ttl <= 0 or self.size <= 0:
            return
        self._expiry[key] = now + self.ttl
        self._expiry.move_to_end(key)
        while len(self._expiry) > self.size:
            self._expiry.popitem(last=False)

    def clear(self) -> None:
        self._expiry.clear()
        self._key = secrets.token_bytes(32)

    def __len__(self) -> int:
        return len(self._expiry)


@dataclass(slots=True)
class _Attempt:
    """One login being checked off the event loop."""

    request: AuthRequest
    username: str
    address: str
    cache_key: bytes | None  # None: a decoy check for an unknown user, refused whatever it says


class PasswordAuthenticator:
    """Checks user names and passwords against a Mosquitto password file.

    Create one per password file (listeners that share a file can share it) and call
    :meth:`close` when the broker stops. :meth:`authenticate` must be called on the event loop.

    Args:
        password_file: a path (read now; :meth:`reload` re-reads it) or a loaded file.
        allow_anonymous: accept clients that send no user name.
        max_concurrent: hash checks running at once (threads in the authenticator's own pool).
        queue_limit: checks that may wait for a thread; beyond, 0x89 Server busy.
        lockout_failures: failed logins from one address (IPv6: one /64) within
            ``lockout_window`` seconds that lock it out; 0 disables lockout.
        lockout_window: seconds over which failures are counted.
        lockout_seconds: how long a lockout lasts.
        cache_seconds: how long a successful login is remembered (0 disables the cache).
        cache_size: most logins remembered.
        max_tracked_addresses: most addresses whose failures are remembered (oldest forgotten).
        clock: monotonic time source (tests pass a fake one).

    Raises:
        ConfigError: the password file cannot be read or is malformed.
    """

    def __init__(
        self,
        password_file: str | PasswordFile,
        allow_anonymous: bool,
        *,
        max_concurrent: int = 2,
        queue_limit: int = 64,
        lockout_failures: int = 10,
        lockout_window: float = 60.0,
        lockout_seconds: float = 300.0,
        cache_seconds: float = 300.0,
        cache_size: int = 10_000,
        max_tracked_addresses: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrent < 1 or queue_limit < 0:
            raise ValueError("max_concurrent must be at least 1 and queue_limit at least 0")
        if isinstance(password_file, PasswordFile):
            self.file = password_file
        else:
            self.file = PasswordFile.load(password_file)
        self.allow_anonymous = allow_anonymous
        self.max_concurrent = max_concurrent
        self.queue_limit = queue_limit
        self.clock = clock
        self.stats = AuthStats()
        self._failures = _Failures(
            lockout_failures, lockout_window, lockout_seconds, max_tracked_addresses
        )
        self._cache = _SuccessCache(cache_seconds, cache_size)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending = 0

    @property
    def pending(self) -> int:
        """Hash checks running or waiting for a thread."""
        return self._pending

    def authenticate(self, request: AuthRequest) -> AuthResult | Awaitable[AuthResult]:
        """Answer a CONNECT: at once when no hash is needed, else with an awaitable."""
        connect = request.connect
        method = connect.properties.authentication_method
        if method is not None:
            return AuthResult(
                _RC.BAD_AUTHENTICATION_METHOD,
                reason_string=f"authentication method {method!r} not supported",
            )
        if connect.username is None:
            if self.allow_anonymous:
                return AuthResult(_RC.SUCCESS)
            log.info("Anonymous login refused from %s", request.peer_address)
            return AuthResult(_RC.NOT_AUTHORIZED, reason_string="a user name is required")
        return self._check_password(request, connect.username, self.file.get(connect.username))

    def check(self, request: AuthRequest) -> AuthResult | Awaitable[AuthResult] | None:
        """The :class:`AuthProvider` view: None (no opinion) for clients without a user name,
        users not in the file and enhanced authentication; otherwise as :meth:`authenticate`."""
        connect = request.connect
        if connect.properties.authentication_method is not None or connect.username is None:
            return None
        entry = self.file.get(connect.username)
        if entry is None:
            return None
        return self._check_password(request, connect.username, entry)

    def reload(self) -> None:
        """Re-read the password file (on SIGHUP) and forget cached successes.

        On error the previous file stays in force. Lockouts are kept: they are about addresses.

        Raises:
            ConfigError: the file cannot be read or is malformed.
        """
        if self.file.path is None:
            raise ValueError("this password file was not loaded from a path")
        self.file = PasswordFile.load(self.file.path)
        self._cache.clear()

    def close(self) -> None:
        """Stop the hashing threads (checks not yet started are cancelled)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # --- the password check ---------------------------------------------------------------------

    def _check_password(
        self, request: AuthRequest, username: str, entry: PasswordHash | None
    ) -> AuthResult | Awaitable[AuthResult]:
        now = self.clock()
        address = lockout_key(request.peer_address)
        if self._failures.locked(address, now):
            # Checked before any hashing: a locked-out address costs us nothing.
            self.stats.refused_locked += 1
            log.debug("Login of %r refused: %s is locked out", username, request.peer_address)
            return AuthResult(_RC.BANNED, reason_string="too many failed logins; try again later")
        password = request.connect.password
        if password is None:
            return self._failed(request, username, address, "no password given")
        if entry is None:
            decoy = self.file.decoy
            if decoy is None:
                return self._failed(request, username, address, "unknown user")
            return self._off_loop(decoy, password, _Attempt(request, username, address, None))
        cache_key = self._cache.key(username, entry, password)
        if self._cache.hit(cache_key, now):
            self.stats.cache_hits += 1
            return AuthResult(_RC.SUCCESS, username=username)
        attempt = _Attempt(request, username, address, cache_key)
        if entry.inline:
            self.stats.hashes += 1
            return self._conclude(attempt, entry.verify(password))
        return self._off_loop(entry, password, attempt)

    def _off_loop(
        self, entry: PasswordHash, password: bytes, attempt: _Attempt
    ) -> AuthResult | Awaitable[AuthResult]:
        if self._pending >= self.max_concurrent + self.queue_limit:
            self.stats.busy += 1
            log.warning(
                "Login of %r from %s refused: %d password checks already waiting",
                attempt.username, attempt.request.peer_address, self._pending,
            )  # fmt: skip
            return AuthResult(_RC.SERVER_BUSY, reason_string="server busy; try again later")
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.max_concurrent, thread_name_prefix="mqttv5-auth"
            )
        loop = asyncio.get_running_loop()
        self._pending += 1
        self.stats.hashes += 1
        checked = loop.run_in_executor(self._pool, entry.verify, password)
        answer: asyncio.Future[AuthResult] = loop.create_future()
        # The outcome is recorded in a callback, not by whoever awaits ``answer``: a client that
        # hangs up before its CONNACK still has its failure counted.
        checked.add_done_callback(lambda done: self._verified(done, attempt, answer))
        return answer

    def _verified(
        self, done: asyncio.Future[bool], attempt: _Attempt, answer: asyncio.Future[AuthResult]
    ) -> None:
        self._pending -= 1
        if done.cancelled():
            result = AuthResult(_RC.SERVER_UNAVAILABLE, reason_string="authentication stopped")
        elif (exc := done.exception()) is not None:
            log.error("Password check of %r failed", attempt.username, exc_info=exc)
            result = AuthResult(_RC.UNSPECIFIED_ERROR, reason_string="authentication failed")
        else:
            result = self._conclude(attempt, done.result())
        if not answer.done():
            answer.set_result(result)

    def _conclude(self, attempt: _Attempt, matched: bool) -> AuthResult:
        if attempt.cache_key is None:  # the decoy check of an unknown user
            return self._failed(attempt.request, attempt.username, attempt.address, "unknown user")
        if not matched:
            return self._failed(attempt.request, attempt.username, attempt.address, "bad password")
        self._cache.add(attempt.cache_key, self.clock())
        return AuthResult(_RC.SUCCESS, username=attempt.username)

    def _failed(self, request: AuthRequest, username: str, address: str, why: str) -> AuthResult:
        self.stats.failures += 1
        log.warning("Failed login of %r from %s: %s", username, request.peer_address, why)
        if self._failures.record(address, self.clock()):
            self.stats.lockouts += 1
            log.warning(
                "Too many failed logins from %s: refusing its logins for %g s",
                address, self._failures.duration,
            )  # fmt: skip
        return AuthResult(_RC.BAD_USER_NAME_OR_PASSWORD, reason_string=_BAD_CREDENTIALS)


# --- composition --------------------------------------------------------------------------------


class _Tally:
    """Folds providers' answers into one decision."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.accepted: AuthResult | None = None

    def add(self, answer: AuthResult | None) -> AuthResult | None:
        """The final decision if ``answer`` settles it, else None (ask the next provider)."""
        if answer is None:
            return None
        code = answer.reason_code
        if code.is_error or code == _RC.CONTINUE_AUTHENTICATION or self.mode == "first":
            return answer
        if self.accepted is None:
            self.accepted = answer
        return None

    def finish(self, request: AuthRequest, allow_anonymous: bool) -> AuthResult:
        """The decision once every provider has answered."""
        if self.accepted is not None:
            return self.accepted
        connect = request.connect
        if connect.properties.authentication_method is not None:
            method = connect.properties.authentication_method
            return AuthResult(
                _RC.BAD_AUTHENTICATION_METHOD,
                reason_string=f"authentication method {method!r} not supported",
            )
        if connect.username is not None:
            return AuthResult(_RC.BAD_USER_NAME_OR_PASSWORD, reason_string=_BAD_CREDENTIALS)
        if allow_anonymous:
            return AuthResult(_RC.SUCCESS)
        return AuthResult(_RC.NOT_AUTHORIZED, reason_string="a user name is required")


class CompositeAuthenticator:
    """Several authentication sources, asked in order; an :class:`Authenticator` itself.

    Modes:
        ``"first"``: the first provider with an opinion decides (accept or refuse).
        ``"all"``: every provider with an opinion must accept; the first refusal decides, and
        the first acceptance supplies the user name. A CONTINUE_AUTHENTICATION answer is
        returned at once in both modes (the handler sends AUTH and asks again on the client's
        next AUTH; every provider is asked again then).

    When no provider has an opinion: a client without a user name is accepted if
    ``allow_anonymous`` (else 0x87 Not authorized), one with a user name gets 0x86, one with an
    Authentication Method gets 0x8C.

    Args:
        providers: :class:`AuthProvider` objects (their ``check`` is used) or plain
            authenticators (their ``authenticate``; they always have an opinion).
        mode: ``"first"`` or ``"all"``.
        allow_anonymous: the answer for anonymous clients nobody had an opinion about.
    """

    def __init__(
        self,
        providers: Sequence[AuthProvider | Authenticator],
        mode: Literal["first", "all"] = "first",
        *,
        allow_anonymous: bool = False,
    ) -> None:
        if mode not in ("first", "all"):
            raise ValueError(f"mode must be 'first' or 'all', not {mode!r}")
        self.providers = list(providers)
        self.mode = mode
        self.allow_anonymous = allow_anonymous
        self._asks: list[Callable[[AuthRequest], Answer]] = [
            p.check if isinstance(p, AuthProvider) else p.authenticate for p in self.providers
        ]

    def authenticate(self, request: AuthRequest) -> AuthResult | Awaitable[AuthResult]:
        """Ask the providers in order; synchronous until one of them answers an awaitable."""
        tally = _Tally(self.mode)
        for index, ask in enumerate(self._asks):
            answer = ask(request)
            if answer is not None and not isinstance(answer, AuthResult):
                return self._rest(request, tally, answer, index + 1)
            final = tally.add(answer)
            if final is not None:
                return final
        return tally.finish(request, self.allow_anonymous)

    async def _rest(
        self,
        request: AuthRequest,
        tally: _Tally,
        waiting: Awaitable[AuthResult | None],
        start: int,
    ) -> AuthResult:
        final = tally.add(await waiting)
        if final is not None:
            return final
        for ask in self._asks[start:]:
            answer = ask(request)
            if answer is not None and not isinstance(answer, AuthResult):
                answer = await answer
            final = tally.add(answer)
            if final is not None:
                return final
        return tally.finish(request, self.allow_anonymous)
