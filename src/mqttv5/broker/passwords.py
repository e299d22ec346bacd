"""Password files in Mosquitto's format: parse, verify, and hash new passwords.

One user per line, ``user:hash``; blank lines and lines whose first non-blank character is ``#``
are ignored; blanks around the user name and the hash are trimmed (as Mosquitto does). The hash
is one of:

``$7$<iterations>$<salt>$<hash>``
    PBKDF2-HMAC-SHA512 with a 64-byte result, salt and result in standard base64 with padding.
    ``mosquitto_passwd`` 2.0 writes 101 iterations and 2.1 writes 1000; any positive count is
    read. :func:`hash_password` writes 1000 (the Debian Mosquitto 2.0.11 verifies those: it reads
    the count from the line, and a test checks it).
``$6$<salt>$<hash>``
    One SHA-512 of the password followed by the salt (``SHA-512(password ‖ salt)``): Mosquitto
    1.6's format, *not* crypt(3)'s sha512-crypt, which shares the prefix.
``$argon2id$v=19$m=...,t=...,p=...$<salt>$<hash>``
    Argon2id in the PHC string format (Mosquitto 2.1 writes these); needs ``argon2-cffi``.
``$2b$<cost>$<salt and hash>`` (also ``$2a$``, ``$2y$``)
    bcrypt; needs ``bcrypt``. bcrypt reads only the first 72 bytes of a password, so a longer
    password never matches a bcrypt hash here rather than matching on its prefix.

``argon2-cffi`` and ``bcrypt`` are the ``auth`` extra (``pip install 'mqttv5[auth]'``); a file
with such a line is refused with a message naming the extra when the library is missing.

Differences from Mosquitto, all deliberate:

- A line that is not ``user:hash`` with a hash we can read (a plain-text password, a line without
  ``:``, bad base64, an unknown ``$n$`` type) refuses the whole file with a
  :class:`~mqttv5.protocol.errors.ConfigError` naming the file and the line. Mosquitto 2.0.11
  logs "removing entry" (or nothing, for a line without ``:``) and runs on without that user,
  which hides a typo until someone cannot log in.
- A user listed twice: the **last** line wins, as in Mosquitto 2.0.11 (checked by a test
  against the real broker), and a warning names both lines. Mosquitto 2.1 keeps the first line
  and logs an error instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import importlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from mqttv5.protocol.errors import ConfigError

__all__ = [
    "AUTH_EXTRA",
    "DEFAULT_BCRYPT_COST",
    "DEFAULT_PBKDF2_ITERATIONS",
    "SCHEMES",
    "Argon2idHash",
    "BcryptHash",
    "PasswordFile",
    "PasswordHash",
    "Pbkdf2Hash",
    "Sha512Hash",
    "hash_password",
    "normalize_scheme",
    "parse_hash",
    "split_line",
]

log = logging.getLogger("mqttv5.broker")

AUTH_EXTRA: Final = "pip install 'mqttv5[auth]'"
"""How to get the optional hashing libraries (argon2-cffi, bcrypt)."""

DEFAULT_PBKDF2_ITERATIONS: Final = 1000
"""PBKDF2 iterations :func:`hash_password` writes (Mosquitto 2.1's count; 2.0 wrote 101)."""

DEFAULT_BCRYPT_COST: Final = 12
"""bcrypt's log2 work factor written by :func:`hash_password` (the bcrypt package's default)."""

SALT_BYTES: Final = 12  # as mosquitto_passwd
DIGEST_BYTES: Final = 64  # SHA-512
BCRYPT_MAX_PASSWORD: Final = 72  # bcrypt ignores (bcrypt >= 5 refuses) bytes past the 72nd

SCHEMES: Final[Mapping[str, str]] = {
    "pbkdf2": "pbkdf2",
    "sha512-pbkdf2": "pbkdf2",
    "sha512": "sha512",
    "argon2id": "argon2id",
    "bcrypt": "bcrypt",
}
"""Scheme names :func:`hash_password` accepts (mosquitto_passwd's ``-H`` names included)."""

_BCRYPT: Final = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_DIGITS: Final = re.compile(r"[0-9]{1,10}")


def _b64decode(text: str, what: str) -> bytes:
    """Standard base64; padding may be left out (it carries no information)."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {what} is not valid base64") from None


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _need(module: str, package: str, scheme: str) -> Any:
    """Import an optional hashing library, or explain which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"{scheme} hashes need the {package} package, which is not installed: {AUTH_EXTRA}"
        ) from None


class PasswordHash:
    """One stored password hash; :meth:`verify` checks a password against it.

    Attributes:
        scheme: ``"pbkdf2"``, ``"sha512"``, ``"argon2id"`` or ``"bcrypt"``.
        encoded: the hash as written in the file (the text after ``user:``).
        inline: True when :meth:`verify` is cheap enough for the event loop (one SHA-512);
            every other scheme is slow by design and must run in a worker thread.
    """

    scheme: str = ""
    inline: bool = False

    def __init__(self, encoded: str) -> None:
        self.encoded = encoded

    def verify(self, password: bytes) -> bool:
        """Whether ``password`` matches; compares in constant time."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.scheme}>"


class Sha512Hash(PasswordHash):
    """``$6$``: SHA-512(password ‖ salt), Mosquitto 1.6's format."""

    scheme = "sha512"
    inline = True

    def __init__(self, encoded: str, salt: bytes, digest: bytes) -> None:
        super().__init__(encoded)
        self.salt = salt
        self.digest = digest

    def verify(self, password: bytes) -> bool:
        """Whether ``password`` matches; compares in constant time."""
        return hmac.compare_digest(hashlib.sha512(password + self.salt).digest(), self.digest)


class Pbkdf2Hash(PasswordHash):
    """``$7$``: PBKDF2-HMAC-SHA512, Mosquitto 2.0's default format."""

    scheme = "pbkdf2"

    def __init__(self, encoded: str, iterations: int, salt: bytes, digest: bytes) -> None:
        super().__init__(encoded)
        self.iterations = iterations
        self.salt = salt
        self.digest = digest

    def verify(self, password: bytes) -> bool:
        """Whether ``password`` matches; compares in constant time."""
        derived = hashlib.pbkdf2_hmac("sha512", password, self.salt, self.iterations, DIGEST_BYTES)
        return hmac.compare_digest(derived, self.digest)


class Argon2idHash(PasswordHash):
    """``$argon2id$``: Argon2id in the PHC string format (argon2-cffi)."""

    scheme = "argon2id"

    def verify(self, password: bytes) -> bool:
        """Whether ``password`` matches (argon2's own constant-time comparison)."""
        argon2 = _need("argon2", "argon2-cffi", "argon2id")
        try:
            return bool(argon2.PasswordHasher().verify(self.encoded, password))
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False


class BcryptHash(PasswordHash):
    """``$2b$`` (``$2a$``, ``$2y$``): bcrypt."""

    scheme = "bcrypt"

    def verify(self, password: bytes) -> bool:
        """Whether ``password`` matches (bcrypt's own constant-time comparison).

        A password longer than 72 bytes never matches: bcrypt would only compare its first 72.
        """
        bcrypt = _need("bcrypt", "bcrypt", "bcrypt")
        if len(password) > BCRYPT_MAX_PASSWORD:
            return False
        try:
            return bool(bcrypt.checkpw(password, self.encoded.encode("ascii")))
        except ValueError:
            return False


def _parse_pbkdf2(text: str) -> Pbkdf2Hash:
    parts = text.split("$")  # ["", "7", iterations, salt, hash]
    if len(parts) != 5:
        raise ValueError("a $7$ hash is $7$<iterations>$<salt>$<hash>")
    if not _DIGITS.fullmatch(parts[2]) or int(parts[2]) < 1:
        raise ValueError(f"the iteration count {parts[2]!r} is not a positive number")
    salt, digest = _salt_and_digest(parts[3], parts[4])
    return Pbkdf2Hash(text, int(parts[2]), salt, digest)


def _parse_sha512(text: str) -> Sha512Hash:
    parts = text.split("$")  # ["", "6", salt, hash]
    if len(parts) != 4:
        raise ValueError("a $6$ hash is $6$<salt>$<hash>")
    salt, digest = _salt_and_digest(parts[2], parts[3])
    return Sha512Hash(text, salt, digest)


def _salt_and_digest(salt_text: str, digest_text: str) -> tuple[bytes, bytes]:
    salt = _b64decode(salt_text, "salt")
    if not salt:
        raise ValueError("the salt is empty")
    digest = _b64decode(digest_text, "hash")
    if len(digest) != DIGEST_BYTES:
        raise ValueError(f"the hash is {len(digest)} bytes long, not {DIGEST_BYTES}")
    return salt, digest


def _parse_argon2id(text: str) -> Argon2idHash:
    argon2 = _need("argon2", "argon2-cffi", "argon2id")
    try:
        params = argon2.extract_parameters(text)
    except argon2.exceptions.InvalidHashError:
        raise ValueError("not a valid $argon2id$ hash") from None
    if params.type is not argon2.Type.ID:
        raise ValueError("not a valid $argon2id$ hash")
    return Argon2idHash(text)


def _parse_bcrypt(text: str) -> BcryptHash:
    _need("bcrypt", "bcrypt", "bcrypt")
    match = _BCRYPT.fullmatch(text)
    if match is None or not 4 <= int(match[1]) <= 31:
        raise ValueError("not a valid bcrypt hash")
    return BcryptHash(text)


_PARSERS: Final = (
    ("$7$", _parse_pbkdf2),
    ("$6$", _parse_sha512),
    ("$argon2id$", _parse_argon2id),
    ("$2b$", _parse_bcrypt),
    ("$2a$", _parse_bcrypt),
    ("$2y$", _parse_bcrypt),
)


def parse_hash(text: str) -> PasswordHash:
    """Read one stored hash (the text after ``user:``).

    Raises:
        ValueError: not a hash we can read; the message says why (a plain-text password, an
            unknown ``$type$``, bad base64, a wrong length, a missing optional library).
    """
    for prefix, parse in _PARSERS:
        if text.startswith(prefix):
            return parse(text)
    if text.startswith("$"):
        kind = text[: text.find("$", 1) + 1] if text.find("$", 1) > 0 else text[:12]
        raise ValueError(
            f"unknown hash type {kind!r} (known: $7$, $6$, $argon2id$, $2b$/$2a$/$2y$)"
        )
    raise ValueError(
        "the password is not hashed (plain text?); hash the file with: mqttv5 passwd -U FILE"
    )


def normalize_scheme(scheme: str) -> str:
    """The canonical name of a scheme (``sha512-pbkdf2`` -> ``pbkdf2``).

    Raises:
        ValueError: an unknown scheme.
    """
    try:
        return SCHEMES[scheme.lower()]
    except KeyError:
        known = ", ".join(SCHEMES)
        raise ValueError(f"unknown hash scheme {scheme!r} (known: {known})") from None


def hash_password(
    password: bytes | str, scheme: str = "pbkdf2", iterations: int | None = None
) -> str:
    """Hash a password for a password file line (``user:`` + the result).

    Args:
        password: the password; a str is encoded as UTF-8.
        scheme: ``pbkdf2`` (alias ``sha512-pbkdf2``, writes ``$7$``, the default and the one every
            Mosquitto 2.x reads), ``sha512`` (``$6$``, Mosquitto 1.6's weak format, for old
            brokers only), ``argon2id`` or ``bcrypt`` (these two need the ``auth`` extra, and
            Mosquitto 2.0 cannot read them).
        iterations: the work factor: PBKDF2 iterations (default 1000), bcrypt's log2 cost
            (default 12, 4..31) or Argon2's time cost (default argon2-cffi's); ignored by
            ``sha512``.

    Returns:
        The encoded hash, e.g. ``$7$1000$<salt>$<hash>``.

    Raises:
        ValueError: unknown scheme, bad work factor, a password bcrypt cannot hash (longer than
            72 bytes), or a missing optional library (the message names the extra).
    """
    secret = password.encode("utf-8") if isinstance(password, str) else password
    kind = normalize_scheme(scheme)
    if iterations is not None and iterations < 1:
        raise ValueError("the work factor (iterations) must be at least 1")
    if kind == "pbkdf2":
        count = DEFAULT_PBKDF2_ITERATIONS if iterations is None else iterations
        salt = os.urandom(SALT_BYTES)
        digest = hashlib.pbkdf2_hmac("sha512", secret, salt, count, DIGEST_BYTES)
        return f"$7${count}${_b64encode(salt)}${_b64encode(digest)}"
    if kind == "sha512":
        salt = os.urandom(SALT_BYTES)
        return f"$6${_b64encode(salt)}${_b64encode(hashlib.sha512(secret + salt).digest())}"
    if kind == "argon2id":
        argon2 = _need("argon2", "argon2-cffi", "argon2id")
        hasher = (
            argon2.PasswordHasher() if iterations is None else argon2.PasswordHasher(iterations)
        )
        return str(hasher.hash(secret))
    bcrypt = _need("bcrypt", "bcrypt", "bcrypt")
    cost = DEFAULT_BCRYPT_COST if iterations is None else iterations
    if not 4 <= cost <= 31:
        raise ValueError("the bcrypt cost must be between 4 and 31")
    if len(secret) > BCRYPT_MAX_PASSWORD:
        raise ValueError(f"bcrypt cannot hash a password longer than {BCRYPT_MAX_PASSWORD} bytes")
    return bytes(bcrypt.hashpw(secret, bcrypt.gensalt(cost))).decode("ascii")


def split_line(line: str) -> tuple[str, str] | None:
    """Split one password file line into ``(user, hash text)``, both trimmed of blanks.

    Returns:
        None for a blank line or a comment.

    Raises:
        ValueError: no ``:``, an empty user name or an empty hash.
    """
    text = line.strip(" \t\r\n")
    if not text or text.startswith("#"):
        return None
    user, colon, rest = text.partition(":")
    if not colon:
        raise ValueError("expected user:hash, found no ':'")
    user, rest = user.strip(" \t"), rest.strip(" \t")
    if not user:
        raise ValueError("empty user name")
    if not rest:
        raise ValueError(f"user {user!r} has no password hash")
    return user, rest


class PasswordFile:
    """The users of one password file and their hashes.

    Build it with :meth:`load` (a file) or :meth:`parse` (text). Lookups are by exact user name;
    :meth:`verify` runs the hash on the calling thread (see
    :class:`~mqttv5.broker.authn.PasswordAuthenticator` for the broker's off-loop use).
    """

    def __init__(self, entries: Mapping[str, PasswordHash], path: str | None = None) -> None:
        self._entries = dict(entries)
        self.path = path

    @classmethod
    def load(cls, path: str) -> PasswordFile:
        """Read and check a password file.

        Raises:
            ConfigError: the file cannot be read or is not UTF-8 (key ``password_file``), or a
                line is malformed (key ``line N``, e.g. ``/etc/mqttv5/passwd: line 3: user
                'bob': the salt is not valid base64``).
        """
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError("password_file", f"cannot read {path}: {reason}", path) from exc
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = f"{path} is not UTF-8 text: {exc.reason}"
            raise ConfigError("password_file", message, path) from exc
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, source: str | None = None) -> PasswordFile:
        """Read password file text (see the module docstring for the format).

        Raises:
            ConfigError: a malformed line, with key ``line N`` and ``source`` as its file.
        """
        entries: dict[str, PasswordHash] = {}
        lines: dict[str, int] = {}
        for number, line in enumerate(text.splitlines(), 1):
            try:
                parts = split_line(line)
            except ValueError as exc:
                raise ConfigError(f"line {number}", str(exc), source) from exc
            if parts is None:
                continue
            user, encoded = parts
            try:
                entry = parse_hash(encoded)
            except ValueError as exc:
                raise ConfigError(f"line {number}", f"user {user!r}: {exc}", source) from exc
            if user in entries:
                # Mosquitto 2.0.11 uses the last line too; 2.1 keeps the first.
                log.warning(
                    "%s: line %d: user %r already defined on line %d; the later line wins",
                    source or "password file", number, user, lines[user],
                )  # fmt: skip
            entries[user] = entry
            lines[user] = number
        return cls(entries, source)

    def get(self, username: str) -> PasswordHash | None:
        """The stored hash of ``username``, or None."""
        return self._entries.get(username)

    def verify(self, username: str, password: bytes) -> bool:
        """Whether ``username`` exists and ``password`` matches its hash (slow: see the class)."""
        entry = self._entries.get(username)
        return entry is not None and entry.verify(password)

    @property
    def decoy(self) -> PasswordHash | None:
        """Some entry of this file, to hash against for unknown users so that a refusal takes
        as long as a wrong password (a user name cannot be probed by timing); None if empty."""
        return next(iter(self._entries.values()), None)

    def __contains__(self, username: object) -> bool:
        return username in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
