"""The writer process of ``storage_sync = "full"``, and the transaction both modes write.

With ``FULL`` every commit ends with an fsync (~0.3-10 ms, more on a busy disk). Done inline it
stops the event loop for that long; done by a thread beside a busy loop it convoys on the GIL
(sqlite3 releases it at every step: measured at 33 rows/s). So a child process owns the write
connection: the broker sends it one batch of statements at a time over a socket pair, keeps
collecting the next batch meanwhile (group commit), and completes the batch's ticket when the
child reports the commit. The child needs no GIL of ours and no package of ours: this module
imports only the standard library and runs as a script (``python -I writer.py FD PATH SYNC``).

The child exits when its socket closes: when the broker closes the store, exits, or is killed
(SIGKILL included). A batch the broker wrote before dying is still read and committed: it was
never acknowledged, so committing it is harmless (a resent QoS 2 message is then recognised).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

__all__ = ["WriterProcess", "apply_batch"]

Statement = tuple[str, tuple[Any, ...]]

_FRAME: Final = struct.Struct("!I")  # broker -> writer: length of the pickled batch
_REPLY: Final = struct.Struct("!QI")  # writer -> broker: batch number, length of an error text
_BUSY_TIMEOUT: Final = 0.2  # another process holding the file: fail (0x97), do not hang
INSERT_MESSAGE: Final = "INSERT OR IGNORE INTO messages VALUES (?,?,?,?,?,?,?,?,?,?)"


def apply_batch(
    db: sqlite3.Connection, new_messages: Sequence[tuple[Any, ...]], ops: Sequence[Statement]
) -> None:
    """Write ``new_messages`` then ``ops`` in one transaction; on error roll back and raise.

    Consecutive runs of one statement go to ``executemany`` (one call into SQLite each).
    """
    try:
        db.execute("BEGIN")
        if new_messages:  # new rows first: later statements may refer to them
            db.executemany(INSERT_MESSAGE, new_messages)
        run_sql: str | None = None
        run: list[tuple[Any, ...]] = []
        for sql, params in ops:
            if sql is run_sql or sql == run_sql:
                run.append(params)
                continue
            if run_sql is not None:
                db.executemany(run_sql, run)
            run_sql, run = sql, [params]
        if run_sql is not None:
            db.executemany(run_sql, run)
        db.execute("COMMIT")
    except sqlite3.Error:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


# ---------------------------------------------------------------------------------------------
# the broker's side


class WriterProcess:
    """The broker's handle on one writer child: start it, send batches, read its replies.

    Args:
        path: the database file (created and migrated by the broker before the child starts).
        synchronous: the child's ``PRAGMA synchronous`` (``FULL``).
        on_reply: called with ``(batch, error)`` for each reply; ``error`` is None when the
            batch committed, else the SQLite error text (the batch was rolled back).
        on_exit: called once with a description when the child is gone (EOF on its socket).
    """

    def __init__(
        self,
        path: str,
        synchronous: str,
        on_reply: Callable[[int, str | None], None],
        on_exit: Callable[[str], None],
    ) -> None:
        self._on_reply = on_reply
        self._on_exit = on_exit
        self._buf = b""
        self._reader_fd: int | None = None
        self._loop: Any = None
        self.gone = False
        ours, theirs = socket.socketpair()
        self.sock = ours
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", os.path.abspath(__file__), str(theirs.fileno()), path,
                 synchronous],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child's end lives only in the child: EOF when either dies

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

    def send(self, batch: int, new_messages: list[Any], ops: list[Statement]) -> bool:
        """Hand one batch to the child; False (and ``on_exit`` called) if it is gone.

        The child reads every batch as soon as it has replied to the previous one, and only
        one batch is in flight at a time, so this blocking send only copies into the socket.
        """
        if self.gone:
            return False
        frame = pickle.dumps((batch, new_messages, ops), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.sock.sendall(_FRAME.pack(len(frame)) + frame)
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
        while len(buf) >= _REPLY.size:
            batch, length = _REPLY.unpack_from(buf)
            if len(buf) < _REPLY.size + length:
                break
            error = buf[_REPLY.size : _REPLY.size + length].decode() if length else None
            buf = buf[_REPLY.size + length :]
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
        self._on_exit(f"storage writer process {self.proc.pid} {detail}")

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


# ---------------------------------------------------------------------------------------------
# the child's side


def _read_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            return None  # the broker closed the store, exited or was killed
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def serve(sock: socket.socket, path: str, synchronous: str) -> None:
    """The child's loop: commit each batch and reply, until the socket closes."""
    db = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_TIMEOUT)
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA journal_size_limit={64 << 20}")  # checkpoints: SQLite's own, in here
    try:
        while True:
            header = _read_exact(sock, _FRAME.size)
            frame = None if header is None else _read_exact(sock, _FRAME.unpack(header)[0])
            if frame is None:
                break
            batch, new_messages, ops = pickle.loads(frame)
            error = b""
            try:
                apply_batch(db, new_messages, ops)
            except sqlite3.Error as exc:
                error = str(exc).encode()
            try:
                sock.sendall(_REPLY.pack(batch, len(error)) + error)
            except OSError:
                break
    finally:
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        db.close()


def main(argv: Sequence[str]) -> int:
    """``writer.py FD PATH SYNCHRONOUS``: serve the broker on socket ``FD``."""
    # The broker decides when to stop: a Ctrl+C or SIGTERM sent to the whole process group
    # must not kill the writer before the broker's last commit. It exits on EOF.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    fd, path, synchronous = int(argv[0]), argv[1], argv[2]
    if synchronous not in ("NORMAL", "FULL"):
        return 2
    serve(socket.socket(fileno=fd), path, synchronous)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
