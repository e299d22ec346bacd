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


class _ChildProcess:
    """A storage child: started from :mod:`.writer` with ``args``; its socket is read from
    the event loop once attached (or by blocking waits without one); ``on_exit`` is called
    once with a description when it is gone (EOF on its socket)."""

    role = "child"

    def __init__(self, args: list[str], on_exit: Callable[[str], None]) -> None:
        self._on_exit = on_exit
        self._reader_fd: int | None = None
        self._loop: Any = None
        self.gone = False
        self.sock, self.proc = _spawn(args)

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

    def _send(self, data: bytes) -> bool:
        """Send a request; False (and ``on_exit`` called) if the child is gone. Requests are
        a few bytes, one at a time: this blocking send only copies into the socket."""
        if self.gone:
            return False
        try:
            self.sock.sendall(data)
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
        """Replies (``data``), or the child's exit (empty)."""
        raise NotImplementedError

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
        """Close the socket (the child finishes its work and exits) and reap the child,
        killing it after ``timeout``."""
        if not self.gone:
            self.gone = True
            self.detach()
            self.sock.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WriterProcess(_ChildProcess):
    """The broker's handle on the writer child (``storage_sync = "full"``): it fsyncs the
    journal segment each request names.

    Args:
        directory: the data directory (journal segments).
        on_reply: called with ``(batch, error)`` for each reply; ``error`` is None when the
            batch's journal segment is durable, else the error text of the fsync.
        on_exit: called once with a description when the child is gone (EOF on its socket).
    """

    role = "writer"

    def __init__(
        self,
        directory: str,
        on_reply: Callable[[int, str | None], None],
        on_exit: Callable[[str], None],
    ) -> None:
        super().__init__(["sync", directory], on_exit)
        self._on_reply = on_reply
        self._buf = b""

    def sync(self, batch: int, segment: int) -> bool:
        """Ask the child to make journal segment ``segment`` durable (``fdatasync``) and to
        reply for ``batch``; False (and ``on_exit`` called) if it is gone."""
        return self._send(SYNC.pack(batch, segment))

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


class FolderProcess(_ChildProcess):
    """The broker's handle on the journal folder child (both modes).

    Nothing waits for it: the broker acknowledges once a record is in the journal (and, with
    ``full``, fsynced). It folds every ``FOLD_INTERVAL``; :meth:`fold_now` asks for a fold at
    once and waits for it.

    Args:
        directory: the data directory (journal segments).
        path: the database file (created and migrated by the broker before the child starts).
        on_exit: called once with a description when the child is gone (EOF on its socket).
    """

    role = "journal folder"

    def __init__(self, directory: str, path: str, on_exit: Callable[[str], None]) -> None:
        super().__init__(["fold", directory, path], on_exit)
        self.folds = 0

    def _received(self, data: bytes) -> None:
        if not data:
            self._exited("exited")
            return
        self.folds += len(data)  # one byte per fold asked for and done

    def fold_now(self, timeout: float = 30.0) -> bool:
        """Fold everything written so far, and wait for it (tests, maintenance); False on
        timeout or if the child is gone."""
        before = self.folds
        if not self._send(b"f"):
            return False
        deadline = time.monotonic() + timeout
        while self.folds == before and not self.gone:
            if not self.wait(max(0.0, deadline - time.monotonic())):
                return False
        return self.folds > before
