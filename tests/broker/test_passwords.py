"""Tests for mqttv5.broker.passwords: Mosquitto's password file format, both ways.

The interop tests use the real Debian Mosquitto 2.0.11: files made by its ``mosquitto_passwd``
verify here, and files made by ``mqttv5 passwd`` let ``mosquitto_pub`` log in to its broker.
Mosquitto 2.0.11 reads only ``$7$`` and ``$6$``; a test checks that it refuses ``$argon2id$``
and ``$2b$`` lines, so only those two schemes are checked against it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import argon2
import bcrypt
import pytest

from mqttv5.broker.passwords import (
    Argon2idHash,
    BcryptHash,
    PasswordFile,
    Pbkdf2Hash,
    Sha512Hash,
    hash_password,
    normalize_scheme,
    parse_hash,
)
from mqttv5.cli import passwd
from mqttv5.protocol.errors import ConfigError
from tests.client.mosquitto import Mosquitto, scaled

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
MOSQUITTO_PUB = shutil.which("mosquitto_pub")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pbkdf2_line(password: bytes, iterations: int, salt: bytes = b"0123456789ab") -> str:
    digest = hashlib.pbkdf2_hmac("sha512", password, salt, iterations)
    return f"$7${iterations}${b64(salt)}${b64(digest)}"


def sha512_line(password: bytes, salt: bytes = b"saltsaltsalt") -> str:
    # Mosquitto 1.6: SHA-512 of the password followed by the salt (not crypt(3))
    return f"$6${b64(salt)}${b64(hashlib.sha512(password + salt).digest())}"


class TestSchemes:
    @pytest.mark.parametrize("iterations", [1, 101, 1000])
    def test_pbkdf2(self, iterations: int) -> None:
        entry = parse_hash(pbkdf2_line(b"secret", iterations))
        assert isinstance(entry, Pbkdf2Hash)
        assert entry.iterations == iterations
        assert entry.verify(b"secret")
        assert not entry.verify(b"secreT")
        assert not entry.verify(b"")
        assert not entry.inline

    def test_sha512_is_password_then_salt(self) -> None:
        entry = parse_hash(sha512_line(b"secret"))
        assert isinstance(entry, Sha512Hash)
        assert entry.verify(b"secret")
        assert entry.inline  # one SHA-512: cheap enough for the event loop
        salt = b"saltsaltsalt"
        salt_first = f"$6${b64(salt)}${b64(hashlib.sha512(salt + b'secret').digest())}"
        assert not parse_hash(salt_first).verify(b"secret")

    def test_argon2id(self) -> None:
        entry = parse_hash(
            argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash(b"secret")
        )
        assert isinstance(entry, Argon2idHash)
        assert entry.verify(b"secret")
        assert not entry.verify(b"wrong")

    @pytest.mark.parametrize("prefix", ["$2b$", "$2a$", "$2y$"])
    def test_bcrypt(self, prefix: str) -> None:
        made = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
        entry = parse_hash(prefix + made[4:])
        assert isinstance(entry, BcryptHash)
        assert entry.verify(b"secret")
        assert not entry.verify(b"wrong")

    def test_bcrypt_never_matches_past_72_bytes(self) -> None:
        entry = parse_hash(bcrypt.hashpw(b"x" * 72, bcrypt.gensalt(4)).decode())
        assert entry.verify(b"x" * 72)
        assert not entry.verify(b"x" * 73)  # bcrypt would compare only the first 72

    def test_padding_may_be_left_out(self) -> None:
        text = pbkdf2_line(b"pw", 5).replace("=", "")
        assert parse_hash(text).verify(b"pw")


class TestHashPassword:
    @pytest.mark.parametrize(
        ("scheme", "prefix", "work"),
        [
            ("pbkdf2", "$7$1000$", None),
            ("sha512-pbkdf2", "$7$7$", 7),
            ("sha512", "$6$", None),
            ("argon2id", "$argon2id$", 1),
            ("bcrypt", "$2b$04$", 4),
        ],
    )
    def test_round_trip(self, scheme: str, prefix: str, work: int | None) -> None:
        encoded = hash_password("pässword", scheme, work)
        assert encoded.startswith(prefix)
        entry = parse_hash(encoded)
        assert entry.verify("pässword".encode())
        assert not entry.verify(b"password")

    def test_pbkdf2_layout_as_mosquitto(self) -> None:
        _, seven, iterations, salt, digest = hash_password(b"pw").split("$")
        assert (seven, iterations) == ("7", "1000")
        assert len(base64.b64decode(salt, validate=True)) == 12
        assert len(base64.b64decode(digest, validate=True)) == 64

    def test_salts_differ(self) -> None:
        assert hash_password(b"pw", iterations=1) != hash_password(b"pw", iterations=1)

    def test_errors(self) -> None:
        with pytest.raises(ValueError, match="unknown hash scheme"):
            hash_password(b"pw", "md5")
        with pytest.raises(ValueError, match="72 bytes"):
            hash_password(b"x" * 73, "bcrypt", 4)
        with pytest.raises(ValueError, match="between 4 and 31"):
            hash_password(b"pw", "bcrypt", 3)
        with pytest.raises(ValueError, match="at least 1"):
            hash_password(b"pw", "pbkdf2", 0)
        assert normalize_scheme("SHA512-PBKDF2") == "pbkdf2"


class TestFile:
    def test_comments_blanks_and_trimming(self) -> None:
        text = (
            "# users\n"
            "\n"
            "   \t\n"
            f"alice:{pbkdf2_line(b'a', 3)}\r\n"
            f"  bob \t:  {sha512_line(b'b')}  \n"
            "   # an indented comment\n"
        )
        pw = PasswordFile.parse(text, "mem")
        assert sorted(pw) == ["alice", "bob"]
        assert len(pw) == 2
        assert "bob" in pw
        assert pw.verify("alice", b"a")
        assert pw.verify("bob", b"b")
        assert not pw.verify("bob", b"a")
        assert not pw.verify("carol", b"a")
        assert pw.get("carol") is None
        assert pw.decoy is not None

    def test_duplicate_user_last_wins(self, caplog: pytest.LogCaptureFixture) -> None:
        text = (
            f"dup:{pbkdf2_line(b'first', 2)}\n"
            f"other:{sha512_line(b'x')}\n"
            f"dup:{sha512_line(b'second')}\n"
        )
        with caplog.at_level(logging.WARNING, logger="mqttv5.broker"):
            pw = PasswordFile.parse(text, "pwfile")
        assert pw.verify("dup", b"second")
        assert not pw.verify("dup", b"first")
        assert "pwfile: line 3: user 'dup' already defined on line 1" in caplog.text

    def test_load(self, tmp_path: Path) -> None:
        path = tmp_path / "passwd"
        path.write_text(f"alice:{pbkdf2_line(b'a', 2)}\n")
        pw = PasswordFile.load(str(path))
        assert pw.path == str(path)
        assert pw.verify("alice", b"a")

    def test_missing_and_undecodable_files(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read") as info:
            PasswordFile.load(str(tmp_path / "nope"))
        assert info.value.key == "password_file"
        path = tmp_path / "latin1"
        path.write_bytes(b"j\xf6rg:" + pbkdf2_line(b"x", 1).encode() + b"\n")
        with pytest.raises(ConfigError, match="not UTF-8"):
            PasswordFile.load(str(path))

    def test_empty_file(self) -> None:
        pw = PasswordFile.parse("# nobody\n")
        assert len(pw) == 0
        assert pw.decoy is None


GOOD = pbkdf2_line(b"pw", 2)
MALFORMED = [
    ("no colon here", "no ':'"),
    (f":{GOOD}", "empty user name"),
    ("alice:", "no password hash"),
    ("alice:plaintext", "not hashed.*mqttv5 passwd -U"),
    ("alice:$5$abc$def", "unknown hash type '\\$5\\$'"),
    ("alice:$7$101$c2FsdA==", "\\$7\\$<iterations>"),
    ("alice:$7$0$c2FsdA==$" + b64(bytes(64)), "not a positive number"),
    ("alice:$7$ten$c2FsdA==$" + b64(bytes(64)), "not a positive number"),
    ("alice:$7$101$!!!!$" + b64(bytes(64)), "salt is not valid base64"),
    ("alice:$7$101$$" + b64(bytes(64)), "salt is empty"),
    ("alice:$7$101$c2FsdA==$" + b64(bytes(32)), "32 bytes long, not 64"),
    ("alice:$6$c2FsdA==", "\\$6\\$<salt>\\$<hash>"),
    ("alice:$6$c2FsdA==$####", "hash is not valid base64"),
    ("alice:$argon2id$v=19$garbage", "not a valid \\$argon2id\\$"),
    ("alice:$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g", "unknown hash type"),
    ("alice:$2b$04$tooshort", "not a valid bcrypt"),
    ("alice:$2b$99$" + "a" * 53, "not a valid bcrypt"),
]


@pytest.mark.parametrize(("line", "message"), MALFORMED)
def test_malformed_line_refuses_the_file(line: str, message: str) -> None:
    text = f"# header\nbob:{GOOD}\n{line}\ncarol:{GOOD}\n"
    with pytest.raises(ConfigError, match=message) as info:
        PasswordFile.parse(text, "/etc/mqttv5/passwd")
    assert info.value.key == "line 3"
    assert str(info.value).startswith("/etc/mqttv5/passwd: line 3: ")


@pytest.mark.parametrize(
    ("module", "encoded"),
    [
        ("argon2", "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"),
        ("bcrypt", "$2b$04$" + "a" * 53),
    ],
)
def test_missing_library_names_the_extra(
    module: str, encoded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'mqttv5\[auth\]'") as info:
        PasswordFile.parse(f"alice:{encoded}\n", "pw")
    assert info.value.key == "line 1"
    with pytest.raises(ValueError, match=r"mqttv5\[auth\]"):
        hash_password(b"pw", "argon2id" if module == "argon2" else "bcrypt")


# --- against the real Mosquitto -------------------------------------------------------------------


@pytest.mark.interop
class TestMosquittoPasswdFiles:
    """Files written by the real mosquitto_passwd (2.0.11 writes $7$ with 101 iterations)."""

    def test_pbkdf2_file_verifies(self, tmp_path: Path) -> None:
        assert MOSQUITTO_PASSWD, "mosquitto not installed"
        path = tmp_path / "passwd"
        subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(path), "alice", "s3cret"], check=True)
        subprocess.run([MOSQUITTO_PASSWD, "-b", str(path), "bob", "hunter2"], check=True)
        assert path.read_text().startswith("alice:$7$101$")
        pw = PasswordFile.load(str(path))
        assert pw.verify("alice", b"s3cret")
        assert pw.verify("bob", b"hunter2")
        assert not pw.verify("alice", b"hunter2")

    def test_sha512_file_verifies(self, tmp_path: Path) -> None:
        assert MOSQUITTO_PASSWD, "mosquitto not installed"
        path = tmp_path / "passwd"
        args = [MOSQUITTO_PASSWD, "-H", "sha512", "-c", "-b", str(path), "alice", "s3cret"]
        subprocess.run(args, check=True)
        assert path.read_text().startswith("alice:$6$")
        pw = PasswordFile.load(str(path))
        assert pw.verify("alice", b"s3cret")
        assert not pw.verify("alice", b"s3cre")

    def test_upgraded_plain_text_file_verifies(self, tmp_path: Path) -> None:
        assert MOSQUITTO_PASSWD, "mosquitto not installed"
        path = tmp_path / "passwd"
        path.write_text("alice:one\nbob:two\n")
        subprocess.run([MOSQUITTO_PASSWD, "-U", str(path)], check=True)
        pw = PasswordFile.load(str(path))
        assert pw.verify("alice", b"one")
        assert pw.verify("bob", b"two")


OurBroker = tuple[Mosquitto, str]  # the broker and its password file


def _login(broker: Mosquitto, user: str | None, password: str | None) -> bool:
    assert MOSQUITTO_PUB, "mosquitto-clients not installed"
    args = [MOSQUITTO_PUB, "-p", str(broker.port), "-h", "127.0.0.1", "-t", "t", "-m", "x"]
    if user is not None:
        args += ["-u", user]
    if password is not None:
        args += ["-P", password]
    done = subprocess.run(args, capture_output=True, timeout=scaled(10), check=False)
    return done.returncode == 0


@pytest.fixture(scope="module")
def mosquitto_with_our_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OurBroker]:
    """Mosquitto 2.0.11 with a password file written by ``mqttv5 passwd``."""
    directory = tmp_path_factory.mktemp("mosquitto-passwd")
    path = str(directory / "passwd")
    assert passwd.main(["-c", "-b", path, "pbkdf2user", "pbkdf2 pass"]) == 0
    assert passwd.main(["-H", "sha512", "-b", path, "sha512user", "sha512pass"]) == 0
    assert passwd.main(["-I", "101", "-b", path, "user101", "pass101"]) == 0
    assert passwd.main(["-H", "argon2id", "-b", path, "argonuser", "argonpass"]) == 0
    assert passwd.main(["--hash", "bcrypt", "-b", path, "bcryptuser", "bcryptpass"]) == 0
    with open(path, "a") as file:  # a user listed twice: Mosquitto 2.0.11 takes the last line
        file.write(f"dup:{hash_password(b'first')}\ndup:{hash_password(b'second')}\n")
    extra = f"allow_anonymous false\npassword_file {path}\n"
    broker = Mosquitto(directory, extra=extra)
    broker.start()
    yield broker, path
    broker.stop()


@pytest.mark.interop
class TestOurFilesInMosquitto:
    @pytest.mark.parametrize(
        ("user", "password"),
        [("pbkdf2user", "pbkdf2 pass"), ("sha512user", "sha512pass"), ("user101", "pass101")],
    )
    def test_login(self, mosquitto_with_our_file: OurBroker, user: str, password: str) -> None:
        broker, _ = mosquitto_with_our_file
        assert _login(broker, user, password)
        assert not _login(broker, user, password + "x")
        assert not _login(broker, user, None)

    def test_unknown_user_and_anonymous_refused(self, mosquitto_with_our_file: OurBroker) -> None:
        broker, _ = mosquitto_with_our_file
        assert not _login(broker, "nobody", "pbkdf2 pass")
        assert not _login(broker, None, None)

    def test_mosquitto_2_0_cannot_read_argon2id_or_bcrypt(
        self, mosquitto_with_our_file: OurBroker
    ) -> None:
        # Documented limitation of Mosquitto 2.0: it logs "Invalid password hash type" and drops
        # the user. We read these lines (checked by the same file below).
        broker, path = mosquitto_with_our_file
        assert not _login(broker, "argonuser", "argonpass")
        assert not _login(broker, "bcryptuser", "bcryptpass")
        pw = PasswordFile.load(path)
        assert pw.verify("argonuser", b"argonpass")
        assert pw.verify("bcryptuser", b"bcryptpass")

    def test_duplicate_user_same_answer_as_mosquitto(
        self, mosquitto_with_our_file: OurBroker
    ) -> None:
        broker, path = mosquitto_with_our_file
        assert _login(broker, "dup", "second")
        assert not _login(broker, "dup", "first")
        pw = PasswordFile.load(path)
        assert pw.verify("dup", b"second")
        assert not pw.verify("dup", b"first")
        assert os.stat(path).st_mode & 0o777 == 0o600
