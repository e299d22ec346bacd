"""The broker's handles on the storage child processes (see :mod:`.writer`, the script they
run): start one, talk to it over a socket pair, notice when it is gone."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from . import writer as _script
from .writer import REPLY, SYNC

__all__ = ["FolderProcess", "WriterProcess"]


def _spawn(args: list[str]) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """Start :mod:`.writer` as a child script with ``args``; return our end of its socket and
    the child."""
    ours, theirs = socket.socketpair()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(_script.__file__), str(theirs.fileno()), *args],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()  # the child's end lives only in the child: EOF when either dies
    return ours, proc


class WriterProcess:
    """The broker's handle on one writer child: start it, ask for fsyncs, read its replies.

    Args:
        directory: the data directory (journal segments).
        on_reply: called with ``(batch, error)`` for each reply; ``error`` is None when the
            batch's journal segment is durable, else the error text of the fsync.
        on_exit: called once with a description when the child is gone (EOF on its socket).
    """

    def __init__(
        self,
        directory: str,
        on_reply: Callable[[int, str | None], None],
        on_exit: Callable[[str], None],
    ) -> None:
        self._on_reply = on_reply
        self._on_exit = on_exit
        self._buf = b""
        self._reader_fd: int | None = None
        self._loop: Any = None
        self.gone = False
        self.sock, self.proc = _spawn(["sync", directory])

    role = "writer"

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def attach(self, loop: Any) -> None:
        """Read replies from ``loop`` (an asyncio event loop) as they come."""
        if self._loop is loop or self.gone:
            return
        self.detach()
        loop.add_reader(self.sock.fileno(), self._readable)
        self._loop = loop
        self._reader_fd = self.sock.fileno()

    def detach(self) -> None:
        """Stop reading replies from the event loop."""
        if self._loop is not None and self._reader_fd is not None:
            with contextlib.suppress(Exception):  # the loop may be closed already
                self._loop.remove_reader(self._reader_fd)
        self._loop = None
        self._reader_fd = None

    def sync(self, batch: int, segment: int) -> bool:
        """Ask the child to make journal segment ``segment`` durable (``fdatasync``) and to
        reply for ``batch``; False (and ``on_exit`` called) if it is gone.

        Only one batch is in flight at a time, so this blocking send only copies 16 bytes into
        the socket.
        """
        if self.gone:
            return False
        try:
            self.sock.sendall(SYNC.pack(batch, segment))
        except OSError as exc:
            self._exited(f"cannot be written to ({exc})")
            return False
        return True

    def _readable(self) -> None:
        try:
            data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # a blocking wait took the reply already
        except OSError as exc:
            self._exited(f"cannot be read from ({exc})")
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        if not data:
            self._exited("exited")
            return
        buf = self._buf + data
        while len(buf) >= REPLY.size:
            batch, length = REPLY.unpack_from(buf)
            if len(buf) < REPLY.size + length:
                break
            error = buf[REPLY.size : REPLY.size + length].decode() if length else None
            buf = buf[REPLY.size + length :]
            self._on_reply(batch, error)
        self._buf = buf

    def wait(self, timeout: float) -> bool:
        """Block until a reply (or the child's exit) arrives; False after ``timeout``."""
        if self.gone:
            return True
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        try:
            data = self.sock.recv(1 << 16)
        except OSError as exc:
            self._exited(f"cannot be read from ({exc})")
            return True
        self._received(data)
        return True

    def _exited(self, what: str) -> None:
        if self.gone:
            return
        self.gone = True
        self.detach()
        self.sock.close()
        code = self.proc.poll()
        if code is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(0.5)
        detail = f"{what}, exit status {code}" if code is not None else what
        self._on_exit(f"storage {self.role} process {self.proc.pid} {detail}")

    def close(self, timeout: float = 10.0) -> None:
        """Close the socket (the child commits nothing more and exits) and reap the child."""
        if not self.gone:
            self.gone = True
            self.detach()
            self.sock.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class FolderProcess(WriterProcess):
    """The broker's handle on the journal folder child (``storage_sync = "normal"``).

    Nothing waits for it: the broker acknowledges once a record is in the journal. It folds
    every ``FOLD_INTERVAL``; :meth:`fold_now` asks for a fold at once and waits for it.

    Args:
        directory: the data directory (journal segments).
        path: the database file (created and migrated by the broker before the child starts).
        on_exit: called once with a description when the child is gone (EOF on its socket).
    """

    role = "journal folder"

    def __init__(self, directory: str, path: str, on_exit: Callable[[str], None]) -> None:
        self._on_reply = lambda _number, _error: None
        self._on_exit = on_exit
        self._buf = b""
        self._reader_fd: int | None = None
        self._loop: Any = None
        self.gone = False
        self.folds = 0
        self.sock, self.proc = _spawn(["fold", directory, path])

    def _received(self, data: bytes) -> None:
        if not data:
            self._exited("exited")
            return
        self.folds += len(data)  # one byte per fold asked for and done

    def fold_now(self, timeout: float = 30.0) -> bool:
        """Fold everything written so far, and wait for it (tests, maintenance); False on
        timeout or if the child is gone."""
        if self.gone:
            return False
        before = self.folds
        try:
            self.sock.sendall(b"f")
        except OSError as exc:
            self._exited(f"cannot be written to ({exc})")
            return False
        deadline = time.monotonic() + timeout
        while self.folds == before and not self.gone:
            if not self.wait(max(0.0, deadline - time.monotonic())):
                return False
        return self.folds > before
