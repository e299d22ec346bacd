"""Tests for ``mqttv5 passwd``, run as a subprocess like a user would, next to the real
``mosquitto_passwd`` where their behaviour should be the same."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from mqttv5.broker.passwords import PasswordFile, hash_password

SCRIPT = str(Path(sys.executable).with_name("mqttv5"))
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
TIMEOUT = 30 * float(os.environ.get("MQTTV5_TEST_TIMEOUT_FACTOR", "1"))


def passwd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert os.path.exists(SCRIPT), "the mqttv5 console script is not installed in this venv"
    return subprocess.run(
        [SCRIPT, "passwd", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def users(path: Path) -> PasswordFile:
    return PasswordFile.load(str(path))


class TestBatch:
    def test_create(self, tmp_path: Path) -> None:
        path = tmp_path / "passwd"
        done = passwd("-c", "-b", str(path), "alice", "s3cret")
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
        assert path.read_text().startswith("alice:$7$1000$")
        assert path.stat().st_mode & 0o777 == 0o600
        assert users(path).verify("alice", b"s3cret")

    def test_create_overwrites(self, tmp_path: Path) -> None:
        path = tmp_path / "passwd"
        path.write_text("old:stuff\n")
        assert passwd("-c", "-b", str(path), "alice", "pw").returncode == 0
        assert list(users(path)) == ["alice"]

    def test_add_and_update_keep_other_lines(self, tmp_path: Path) -> None:
        path = tmp_path / "passwd"
        path.write_text(f"# users\nalice:{hash_password(b'a1')}\n\nbob:{hash_password(b'b1')}")
        assert passwd("-b", str(path), "carol", "c1").returncode == 0
        assert passwd("-b", str(path), "alice", "a2").returncode == 0
        text = path.read_text()
        assert text.startswith("# users\nalice:$7$")
        assert "\n\nbob:" in text
        assert text.endswith("\n")
        pw = users(path)
        assert list(pw) == ["alice", "bob", "carol"]
        assert pw.verify("alice", b"a2")
        assert not pw.verify("alice", b"a1")
        assert pw.verify("bob", b"b1")
        assert pw.verify("carol", b"c1")

    def test_update_removes_duplicates(self, tmp_path: Path) -> None:
        path = tmp_path / "passwd"
        path.write_text(
            f"a:{hash_password(b'1')}\nb:{hash_password(b'2')}\na:{hash_password(b'3')}\n"
        )
        assert passwd("-b", str(path), "a", "4").returncode == 0
        lines = path.read_text().splitlines()
        assert [line.split(":")[0] for line in lines] == ["a", "b"]
        assert users(path).verify("a", b"4")

    @pytest.mark.parametrize(
        ("option", "scheme", "prefix"),
        [
            ("-H", "sha512-pbkdf2", "$7$1000$"),
            ("-H", "sha512", "$6$"),
            ("-H", "argon2id", "$argon2id$"),
            ("--hash", "pbkdf2", "$7$"),
            ("--hash", "bcrypt", "$2b$"),
        ],
    )
    def test_schemes(self, tmp_path: Path, option: str, scheme: str, prefix: str) -> None:
        path = tmp_path / "passwd"
        work = ["-I", "4"] if scheme == "bcrypt" else []
        assert passwd(option, scheme, *work, "-c", "-b", str(path), "u", "pw").returncode == 0
        assert path.read_text().startswith("u:" + prefix)
        assert users(path).verify("u", b"pw")

    def test_iterations(self, tmp_path: Path) -> None:
        path = tmp_path / "passwd"
        assert passwd("-I", "101", "-c", "-b", str(path), "u", "pw").returncode == 0
        assert path.read_text().startswith("u:$7$101$")

    def test_delete(self, tmp_path: Path) -> None:
        path = tmp_path / "passwd"
        path.write_text(f"alice:{hash_password(b'a')}\nbob:{hash_password(b'b')}\n")
        done = passwd("-D", str(path), "alice")
        assert (done.returncode, done.stderr) == (0, "")
        assert list(users(path)) == ["bob"]
        before = path.read_bytes()
        missing = passwd("-D", str(path), "alice")
        assert missing.returncode == 1
        assert missing.stderr == "Warning: User alice not found in password file.\n"
        assert path.read_bytes() == before

    def test_mode_and_symlink_kept(self, tmp_path: Path) -> None:
        path = tmp_path / "passwd"
        path.write_text(f"alice:{hash_password(b'a')}\n")
        path.chmod(0o640)
        link = tmp_path / "link"
        link.symlink_to(path)
        assert passwd("-b", str(link), "bob", "b").returncode == 0
        assert link.is_symlink()
        assert path.stat().st_mode & 0o777 == 0o640
        assert users(path).verify("bob", b"b")
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


class TestUpgrade:
    def test_plain_text_file(self, tmp_path: Path) -> None:
        path = tmp_path / "passwd"
        hashed = hash_password(b"already")
        path.write_text(f"# comment\nalice:one\nbob : two words \ncarol:{hashed}\n")
        done = passwd("-U", str(path))
        assert (done.returncode, done.stderr) == (0, "")
        pw = users(path)
        assert pw.verify("alice", b"one")
        assert pw.verify("bob", b"two words")
        assert pw.verify("carol", b"already")  # a hash is not hashed again
        assert f"carol:{hashed}\n" in path.read_text()
        again = path.read_text()
        assert passwd("-U", str(path)).returncode == 0
        assert path.read_text() == again  # idempotent

    def test_corrupt_file_left_alone(self, tmp_path: Path) -> None:
        path = tmp_path / "passwd"
        path.write_text("alice:one\nno colon\n")
        done = passwd("-U", str(path))
        assert (done.returncode, done.stderr) == (1, "Error: Corrupt password file at line 2.\n")
        assert path.read_text() == "alice:one\nno colon\n"


class TestPrompt:
    def test_stdin_when_not_a_terminal(self, tmp_path: Path) -> None:
        path = tmp_path / "passwd"
        done = passwd("-c", str(path), "alice", stdin="s3cret\ns3cret\n")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "Password: \nReenter password: \n"  # as mosquitto_passwd
        assert users(path).verify("alice", b"s3cret")
        done = passwd(str(path), "bob", stdin="pw two\npw two\n")
        assert done.returncode == 0
        assert users(path).verify("bob", b"pw two")

    def test_mismatch(self, tmp_path: Path) -> None:
        path = tmp_path / "passwd"
        done = passwd("-c", str(path), "alice", stdin="one\ntwo\n")
        assert (done.returncode, done.stderr) == (2, "Error: Passwords do not match.\n")
        assert not path.exists()

    @pytest.mark.parametrize("stdin", ["\n\n", "one\n", ""])
    def test_empty(self, tmp_path: Path, stdin: str) -> None:
        path = tmp_path / "passwd"
        done = passwd("-c", str(path), "alice", stdin=stdin)
        assert (done.returncode, done.stderr) == (1, "Error: Empty password.\n")
        assert not path.exists()

    def test_terminal(self, tmp_path: Path) -> None:
        """On a terminal the password is read with echo off (getpass on /dev/tty)."""
        path = tmp_path / "passwd"
        with warnings.catch_warnings():
            # Python 3.12 warns about fork() in a process with threads; the child only execs.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid, fd = pty.fork()
        if pid == 0:  # the child: its controlling terminal is the pty
            try:
                os.execv(SCRIPT, [SCRIPT, "passwd", "-c", str(path), "alice"])
            finally:
                os._exit(127)
        output = b""
        try:
            for prompt in (b"Password: ", b"Reenter password: "):
                output += _read_until(fd, prompt, output)
                os.write(fd, b"tty-secret\n")
            output += _read_rest(fd)
        finally:
            _, status = os.waitpid(pid, 0)
            os.close(fd)
        assert os.waitstatus_to_exitcode(status) == 0, output
        assert b"tty-secret" not in output  # not echoed
        assert users(path).verify("alice", b"tty-secret")


def _read_until(fd: int, wanted: bytes, seen: bytes) -> bytes:
    deadline = time.monotonic() + TIMEOUT
    got = b""
    while wanted not in got:
        assert time.monotonic() < deadline, f"no {wanted!r} prompt in {seen + got!r}"
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            got += os.read(fd, 1024)
    return got


def _read_rest(fd: int) -> bytes:
    got = b""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        got += chunk
    return got


class TestErrors:
    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (
                ["-b", "FILE", "bad:name", "pw"],
                "Error: Username must not contain the ':' character.",
            ),
            (
                ["-b", "FILE", "bad\x01", "pw"],
                "Error: Username must not contain control characters.",
            ),
            (["-b", "FILE", "", "pw"], "Error: Username must not be empty."),
            (["-b", "FILE", "#root", "pw"], "Error: Username must not begin with '#'"),
            (["-b", "FILE", " pad", "pw"], "Error: Username must not begin or end with a space"),
            (["-H", "md5", "-b", "FILE", "u", "pw"], "Error: Unknown hash type 'md5'"),
            (
                ["-H", "scram-sha-256", "-b", "FILE", "u", "p"],
                "SCRAM-SHA-256 credentials go in their own file",
            ),
            (["-I", "0", "-b", "FILE", "u", "pw"], "Error: Number of iterations must be > 0."),
            (["-b", "MISSING", "u", "pw"], "Error: Unable to open password file"),
            (["-b", "-I", "4", "-H", "bcrypt", "FILE", "u", "x" * 73], "longer than 72 bytes"),
        ],
    )
    def test_message(self, tmp_path: Path, args: list[str], message: str) -> None:
        path = tmp_path / "passwd"
        path.write_text(f"alice:{hash_password(b'a')}\n")
        before = path.read_bytes()
        args = [str(path) if a == "FILE" else str(tmp_path / "nope") if a == "MISSING" else a
                for a in args]  # fmt: skip
        done = passwd(*args)
        assert done.returncode == 1
        assert message in done.stderr
        assert path.read_bytes() == before

    def test_usage(self) -> None:
        done = passwd()
        assert done.returncode == 1
        assert done.stdout.startswith("mqttv5 passwd is a tool")
        helped = passwd("--help")
        assert helped.returncode == 0
        assert "-U : update a plain text password file" in helped.stdout

    def test_corrupt_file_is_not_rewritten(self, tmp_path: Path) -> None:
        path = tmp_path / "passwd"
        path.write_text(f"alice:{hash_password(b'a')}\nalice\n")
        done = passwd("-b", str(path), "bob", "pw")
        assert (done.returncode, done.stderr) == (1, "Error: Corrupt password file at line 2.\n")
        assert "bob" not in path.read_text()


# Arguments on which both tools must print the same message and exit with the same status.
SAME_AS_MOSQUITTO = [
    ["-c", "-D", "FILE", "u"],
    ["-c", "-U", "FILE"],
    ["-D", "-U", "FILE"],
    ["-b", "-D", "FILE", "u"],
    ["-c", "-b", "FILE", "u"],
    ["-c", "FILE"],
    ["-D", "FILE"],
    ["-U"],
    ["-U", "FILE", "extra"],
    ["-H"],
    ["-H", "nonsense", "FILE", "u"],
    ["-I", "0", "FILE", "u"],
    ["-b", "FILE", "a:b", "pw"],
    ["-b", "FILE", "u\x07", "pw"],
    ["-D", "FILE", "nobody"],
]
# Not listed: a corrupt file. mosquitto_passwd 2.0 reports the line, then (-b) drops that line
# and every later one, adds the user and exits 0, or (-D) adds a "not found" warning; we stop at
# the error and leave the file alone (TestErrors.test_corrupt_file_is_not_rewritten).


@pytest.mark.interop
@pytest.mark.parametrize("args", SAME_AS_MOSQUITTO, ids=" ".join)
def test_same_errors_as_mosquitto_passwd(tmp_path: Path, args: list[str]) -> None:
    assert MOSQUITTO_PASSWD, "mosquitto not installed"
    results = []
    for name, command in (("ours", [SCRIPT, "passwd"]), ("mosquitto", [MOSQUITTO_PASSWD])):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "passwd").write_text(f"alice:{hash_password(b'a')}\n")
        argv = [str(directory / "passwd") if a == "FILE" else a for a in args]
        done = subprocess.run(
            [*command, *argv], capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
        results.append((done.returncode, done.stderr.replace(str(directory), "DIR")))
    assert results[0] == results[1]


@pytest.mark.interop
def test_same_prompts_as_mosquitto_passwd(tmp_path: Path) -> None:
    assert MOSQUITTO_PASSWD, "mosquitto not installed"
    for stdin in ("pw\npw\n", "pw\nother\n", "\n", "pw\n\n", "pw\n", ""):
        ours = passwd("-c", str(tmp_path / "ours"), "u", stdin=stdin)
        theirs = subprocess.run(
            [MOSQUITTO_PASSWD, "-c", str(tmp_path / "theirs"), "u"],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert (ours.returncode, ours.stdout, ours.stderr) == (
            theirs.returncode,
            theirs.stdout,
            theirs.stderr,
        )
