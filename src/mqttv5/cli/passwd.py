"""``mqttv5 passwd``: manage a password file, with ``mosquitto_passwd``'s interface.

::

    mqttv5 passwd [-H hash] [-I work] [-c | -D] FILE USER        prompt for the password
    mqttv5 passwd [-H hash] [-I work] [-c] -b FILE USER PASSWORD
    mqttv5 passwd -U FILE                                        hash a plain-text file
    mqttv5 passwd --hash scram-sha-256 [-I work] [-c | -D] --scram-file FILE USER [PASSWORD]

Options, messages and exit statuses are mosquitto_passwd's (2.0), with these differences:

- ``-H`` also takes ``argon2id`` and ``bcrypt`` (the ``auth`` extra; Mosquitto 2.0 cannot read
  them), ``--hash pbkdf2|argon2id|bcrypt`` is a synonym, and ``$7$`` lines get 1000 PBKDF2
  iterations (Mosquitto 2.1's count; 2.0 wrote 101; every 2.x reads both).
- The file is replaced atomically (a temporary file in the same directory, then a rename), keeps
  its mode and owner, and is created with mode 0600: mosquitto_passwd rewrites it in place and
  creates it with the umask's mode.
- A corrupt line (no ``user:password``) stops every command with "Corrupt password file at line
  N" and leaves the file alone; mosquitto_passwd 2.0 prints that and then, when adding a user,
  drops that line and every later one and exits 0. Comment and blank lines are kept.
- ``-U`` leaves lines that already hold a hash alone (mosquitto_passwd hashes the hash again,
  which locks that user out), so it can be run twice.
- User names must also not be empty, start with ``#`` (the line would be a comment) or begin or
  end with a blank (the broker trims them).

SCRAM-SHA-256 credentials (enhanced authentication, ``scram_file`` in the broker's configuration)
live in a file of their own, ``user:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``
(PostgreSQL's format: no password is stored), written with ``--scram-file FILE``, which implies
``--hash scram-sha-256``. A PASSWORD after USER sets it without a prompt (no ``-b`` needed); the
file is created when missing; ``-I`` is the PBKDF2 iteration count (default 4096, at least 4096).
SCRAM lines are never written into a Mosquitto password file, which could not read them.

Without ``-b`` the password is asked twice: with echo off on a terminal (getpass); when standard
input is not a terminal, one line each is read from it and the prompts go to standard output,
as mosquitto_passwd does (``printf 'pw\\npw\\n' | mqttv5 passwd FILE USER``).
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from ..broker.passwords import hash_password, normalize_scheme, parse_hash, split_line
from ..broker.scram import MIN_ITERATIONS, hash_scram

__all__ = ["main"]

USAGE: Final = """\
mqttv5 passwd is a tool for managing password files for mosquitto and mqttv5.

Usage: mqttv5 passwd [-H sha512-pbkdf2 | -H argon2id | -H bcrypt] [-I work] [-c | -D] passwordfile username
       mqttv5 passwd [-H sha512-pbkdf2 | -H argon2id | -H bcrypt] [-I work] [-c] -b passwordfile username password
       mqttv5 passwd -U passwordfile
       mqttv5 passwd --hash scram-sha-256 [-I work] [-c | -D] --scram-file scramfile username [password]
 -b : run in batch mode to allow passing passwords on the command line.
 -c : create a new password file. This will overwrite existing files.
 -D : delete the username rather than adding/updating its password.
 -H : specify the hashing algorithm. Defaults to sha512-pbkdf2 ($7$), which every
      Mosquitto 2.x reads. argon2id and bcrypt need 'pip install mqttv5[auth]' and are
      not read by Mosquitto 2.0; sha512 ($6$) is Mosquitto 1.6's weak format.
      --hash pbkdf2|argon2id|bcrypt is the same option.
 -I : work factor: PBKDF2 iterations (default 1000), bcrypt cost (default 12) or
      Argon2 time cost.
 -U : update a plain text password file to use hashed passwords.
 --scram-file : write SCRAM-SHA-256 credentials (for enhanced authentication) to this
      file instead; -I is then the PBKDF2 iteration count (default and minimum 4096).
"""  # noqa: E501

MAX_LENGTH: Final = 65535
EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_MISMATCH: Final = 2  # mosquitto_passwd's status when the two passwords differ

SCRAM: Final = "scram-sha-256"
_SCRAM_NAMES: Final = ("scram-sha-256", "scram")
_SCRAM_OTHERS: Final = ("scram-sha-1", "scram-sha-512", "scram-sha-1-plus", "scram-sha-256-plus")
_SCRAM_USAGE: Final = "mqttv5 passwd --hash scram-sha-256 --scram-file FILE USER [PASSWORD]"


class PasswdError(Exception):
    """A failure to report: the message (printed to standard error) and the exit status."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


class _UsageError(PasswdError):
    """Wrong arguments: the usage goes to standard output, as mosquitto_passwd prints it."""

    def __init__(self) -> None:
        super().__init__(USAGE)


@dataclass
class _Options:
    batch: bool = False
    create: bool = False
    delete: bool = False
    upgrade: bool = False
    scheme: str = "pbkdf2"
    scheme_given: bool = False
    work: int | None = None
    scram_file: str | None = None
    positional: list[str] = field(default_factory=list)


def _scheme(name: str) -> str:
    if name.lower() in _SCRAM_NAMES:
        return SCRAM
    if name.lower() in _SCRAM_OTHERS:
        raise PasswdError(f"Error: Hash type '{name}' is not supported: only scram-sha-256 is.")
    try:
        return normalize_scheme(name)
    except ValueError:
        raise PasswdError(f"Error: Unknown hash type '{name}'") from None


def _parse_options(argv: Sequence[str]) -> _Options:
    """mosquitto_passwd's parsing: options until the first word that is not one."""
    opts = _Options()
    flags = {"-b": "batch", "-c": "create", "-D": "delete", "-U": "upgrade"}
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in flags:
            setattr(opts, flags[arg], True)
        elif arg in ("-H", "--hash", "-I"):
            if index + 1 == len(argv):
                raise PasswdError(f"Error: {arg} argument given but not enough other arguments.")
            index += 1
            if arg == "-I":
                value = argv[index]
                opts.work = int(value) if value.isdigit() else 0
                if opts.work < 1:
                    raise PasswdError("Error: Number of iterations must be > 0.")
            else:
                opts.scheme, opts.scheme_given = _scheme(argv[index]), True
        elif arg.startswith("--hash="):
            opts.scheme, opts.scheme_given = _scheme(arg.partition("=")[2]), True
        elif arg == "--scram-file":
            if index + 1 == len(argv):
                raise PasswdError(f"Error: {arg} argument given but not enough other arguments.")
            index += 1
            opts.scram_file = argv[index]
        elif arg.startswith("--scram-file="):
            opts.scram_file = arg.partition("=")[2]
        else:
            break
        index += 1
    opts.positional = list(argv[index:])
    return opts


_CONFLICTS: Final = (
    ("create", "delete", "-c and -D"),
    ("create", "upgrade", "-c and -U"),
    ("delete", "upgrade", "-D and -U"),
    ("delete", "batch", "-b and -D"),
)


def _check_arguments(opts: _Options) -> None:
    """mosquitto_passwd's checks of option combinations and argument counts."""
    for first, second, text in _CONFLICTS:
        if getattr(opts, first) and getattr(opts, second):
            raise PasswdError(f"Error: {text} cannot be used together.")
    count = len(opts.positional)
    if opts.create:
        needed = 3 if opts.batch else 2
        if count < needed:
            what = "password file, username, or password" if opts.batch else (
                "password file or username"
            )  # fmt: skip
            raise PasswdError(f"Error: -c argument given but {what} missing.")
    elif opts.delete:
        if count < 2:
            raise PasswdError("Error: -D argument given but password file or username missing.")
    elif opts.upgrade:
        if count != 1:
            raise PasswdError("Error: -U argument given but password file missing.")
    elif count != (3 if opts.batch else 2):
        raise _UsageError


def _check_username(name: str) -> None:
    if len(name) > MAX_LENGTH:
        raise PasswdError("Error: Username must be less than 65536 characters long.")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise PasswdError("Error: Username must not contain control characters.")
    if ":" in name:
        raise PasswdError("Error: Username must not contain the ':' character.")
    if not name:
        raise PasswdError("Error: Username must not be empty.")
    if name.startswith("#"):
        raise PasswdError("Error: Username must not begin with '#' (the line would be a comment).")
    if name != name.strip(" \t"):
        raise PasswdError("Error: Username must not begin or end with a space or tab.")


def _ask(prompt: str) -> bytes:
    """One password from the terminal (echo off), or one line of standard input."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt).encode("utf-8", "surrogateescape")
    sys.stdout.write(prompt)
    sys.stdout.flush()
    line = sys.stdin.buffer.readline().rstrip(b"\r\n")
    if line:  # mosquitto_passwd ends the prompt's line only when it read something
        sys.stdout.write("\n")
        sys.stdout.flush()
    return line


def _prompt_password() -> bytes:
    first = _ask("Password: ")
    if not first:
        raise PasswdError("Error: Empty password.")
    second = _ask("Reenter password: ")
    if not second:
        raise PasswdError("Error: Empty password.")
    if first != second:
        raise PasswdError("Error: Passwords do not match.", EXIT_MISMATCH)
    return first


def _new_line(username: str, password: bytes, opts: _Options) -> str:
    if len(password) > MAX_LENGTH:
        raise PasswdError("Error: Password must be less than 65536 characters long.")
    try:
        return f"{username}:{hash_password(password, opts.scheme, opts.work)}\n"
    except ValueError as exc:
        raise PasswdError(f"Error: Unable to hash password: {exc}.") from None


# --- the file -----------------------------------------------------------------------------------


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PasswdError(f"Error: Unable to open password file {path}. {reason}.") from None
    lines = data.decode("utf-8", "surrogateescape").splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        try:
            split_line(line)
        except ValueError:
            raise PasswdError(f"Error: Corrupt password file at line {number}.") from None
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return lines


def _user_of(line: str) -> str | None:
    parts = split_line(line)  # checked by _read_lines
    return None if parts is None else parts[0]


def _write_atomically(path: str, lines: Sequence[str], *, create: bool) -> None:
    """Replace ``path`` by a file holding ``lines``: a temporary file, then a rename."""
    target = os.path.realpath(path)  # replace a symlink's target, not the link
    directory = os.path.dirname(target) or "."
    try:
        old = None if create else os.stat(target)
    except FileNotFoundError:
        old = None
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", dir=directory)
    except OSError as exc:
        raise PasswdError(
            f"Error: Unable to open file {path} for writing. {exc.strerror or exc}."
        ) from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write("".join(lines).encode("utf-8", "surrogateescape"))
            file.flush()
            os.fsync(file.fileno())
            os.fchmod(file.fileno(), 0o600 if old is None else stat.S_IMODE(old.st_mode))
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(file.fileno(), old.st_uid, old.st_gid)
                except PermissionError:
                    pass  # not root: the file becomes ours, as with any editor
        os.replace(temporary, target)
    except OSError as exc:
        os.unlink(temporary)
        raise PasswdError(
            f"Error: Unable to write password file {path}. {exc.strerror or exc}."
        ) from None


def _update_user(lines: list[str], username: str, new_line: str) -> list[str]:
    """Replace the user's line (later duplicates go) or append one."""
    result: list[str] = []
    found = False
    for line in lines:
        if _user_of(line) != username:
            result.append(line)
        elif not found:
            result.append(new_line)
            found = True
    if not found:
        result.append(new_line)
    return result


def _upgrade(lines: list[str], opts: _Options) -> list[str]:
    """Hash every plain-text password; lines that hold a hash already stay as they are."""
    result: list[str] = []
    for line in lines:
        parts = split_line(line)
        if parts is None:
            result.append(line)
            continue
        username, secret = parts
        try:
            parse_hash(secret)
        except ValueError:
            result.append(_new_line(username, secret.encode("utf-8", "surrogateescape"), opts))
        else:
            result.append(line)
    return result


def _run_scram(opts: _Options) -> int:
    """``--scram-file FILE USER [PASSWORD]``: add, update (or with -D delete) a SCRAM user."""
    path = opts.scram_file
    if path is None:
        raise PasswdError(
            "Error: SCRAM-SHA-256 credentials go in their own file (a Mosquitto password "
            f"file cannot hold them): {_SCRAM_USAGE}"
        )
    if opts.scheme_given and opts.scheme != SCRAM:
        raise PasswdError("Error: --scram-file takes only --hash scram-sha-256.")
    if opts.upgrade:
        raise PasswdError("Error: -U cannot be used with --scram-file.")
    if opts.create and opts.delete:
        raise PasswdError("Error: -c and -D cannot be used together.")
    count = len(opts.positional)
    if not (count == 1 if opts.delete else 1 <= count <= 2) or (opts.batch and count != 2):
        raise PasswdError(f"Error: usage: {_SCRAM_USAGE}")
    if opts.work is not None and opts.work < MIN_ITERATIONS:
        raise PasswdError(f"Error: SCRAM-SHA-256 needs at least {MIN_ITERATIONS} iterations.")
    username = opts.positional[0]
    _check_username(username)
    exists = os.path.exists(path)
    lines = _read_lines(path) if exists and not opts.create else []
    if opts.delete:
        kept = [line for line in lines if _user_of(line) != username]
        if not exists or len(kept) == len(lines):
            raise PasswdError(f"Warning: User {username} not found in SCRAM file.")
        _write_atomically(path, kept, create=False)
        return EXIT_OK
    password = os.fsencode(opts.positional[1]) if count == 2 else _prompt_password()
    if len(password) > MAX_LENGTH:
        raise PasswdError("Error: Password must be less than 65536 characters long.")
    try:
        new_line = f"{username}:{hash_scram(password, opts.work)}\n"
    except ValueError as exc:
        raise PasswdError(f"Error: Unable to hash password: {exc}.") from None
    create = opts.create or not exists
    _write_atomically(path, _update_user(lines, username, new_line), create=create)
    return EXIT_OK


def _run(opts: _Options) -> int:
    if opts.scram_file is not None or opts.scheme == SCRAM:
        return _run_scram(opts)
    _check_arguments(opts)
    path = opts.positional[0]
    if opts.upgrade:
        _write_atomically(path, _upgrade(_read_lines(path), opts), create=False)
        return EXIT_OK
    username = opts.positional[1]
    _check_username(username)
    given = os.fsencode(opts.positional[2]) if opts.batch else None
    if given is not None and len(given) > MAX_LENGTH:
        raise PasswdError("Error: Password must be less than 65536 characters long.")
    if opts.create:
        password = _prompt_password() if given is None else given
        _write_atomically(path, [_new_line(username, password, opts)], create=True)
        return EXIT_OK
    lines = _read_lines(path)
    if opts.delete:
        kept = [line for line in lines if _user_of(line) != username]
        if len(kept) == len(lines):
            raise PasswdError(f"Warning: User {username} not found in password file.")
        _write_atomically(path, kept, create=False)
        return EXIT_OK
    password = _prompt_password() if given is None else given
    new_line = _new_line(username, password, opts)
    _write_atomically(path, _update_user(lines, username, new_line), create=False)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mqttv5 passwd``; returns the exit status (0 ok, 1 error, 2 the two
    passwords differ)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(USAGE)
        return EXIT_ERROR
    if args[0] in ("--help", "-h"):
        print(USAGE)
        return EXIT_OK
    try:
        return _run(_parse_options(args))
    except PasswdError as exc:
        print(exc, file=sys.stdout if isinstance(exc, _UsageError) else sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_ERROR
