"""The broker's side of the journal (``storage_sync = "normal"``), and the data directory lock.

Each group commit is one record appended to the current segment with one ``write()``: the
record is then in the kernel's page cache, which a crash of the broker process (SIGKILL, the
out-of-memory killer) cannot take back, so the acknowledgements it covers may go out at once.
That costs a few microseconds per message, everything included, where an SQLite transaction
cost about 10 per message on this machine; the journal folder child (:mod:`.writer`) moves the
records into the database off the event loop, and deletes the segments it has finished.

The format (also in docs/storage.md): a segment ``journal.NNNNNNNN`` starts with 8 bytes,
``"MQ5J"``, the format version (uint16) and 0 (uint16); then records, each a 4-byte body
length, the body's CRC-32 (both big-endian) and the body: a pickled pair of lists, the new
message rows and the other writes as ``(statement number, parameters)``. Loading refuses any
class (only tuples, lists, numbers, strings, bytes and None) and any unknown statement.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import IO, Any, Final

from .base import StorageError
from .writer import Statement, datasync, encode_record, segment_header, segment_path

__all__ = ["SEGMENT_BYTES", "JournalWriter", "lock_directory"]

SEGMENT_BYTES: Final = 16 << 20  # a new segment once the current one has grown past this
LOCK_NAME: Final = "mqttv5.lock"


class JournalWriter:
    """Appends records to the journal segments of ``directory``, from segment ``first`` on.

    Args:
        directory: the data directory.
        first: the number of the first segment to create (above every existing one).
        segment_bytes: start a new segment once the current one is this large.
    """

    def __init__(self, directory: str, first: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.number = first - 1  # the segment being written (once opened)
        self.segment_bytes = segment_bytes
        self.size = 0
        self._fd: int | None = None

    def append(self, new_messages: list[tuple[Any, ...]], ops: list[Statement]) -> None:
        """Write one record; on return it survives a crash of this process.

        Raises:
            OSError: the write failed (disk full, I/O error). Nothing of the record counts: a
                part already written is cut off again, or, if that fails too, the segment is
                abandoned (the folder drops a record cut short at the end of a segment).
        """
        if self._fd is None or self.size >= self.segment_bytes:
            self._next_segment()
        assert self._fd is not None
        self._write(self._fd, encode_record(new_messages, ops))

    def _next_segment(self) -> None:
        self.close()
        number = self.number + 1
        fd = os.open(
            segment_path(self.directory, number),
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
        self.size = 0
        try:
            self._write(fd, segment_header())
        except OSError:
            os.close(fd)  # the same number is tried again (truncated) next time
            raise
        self._fd = fd
        self.number = number

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(fd, view[done:])
        except OSError:
            if done:
                try:
                    os.ftruncate(fd, self.size)
                except OSError:
                    if fd == self._fd:  # a torn record stays at the end of this segment
                        self.close()
            raise
        self.size += done

    def sync(self) -> None:
        """Make what was appended survive a power loss too (``fdatasync``)."""
        if self._fd is not None:
            datasync(self._fd)

    def close(self) -> None:
        """Close the current segment (the next append starts a new one)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def lock_directory(directory: str) -> IO[str]:
    """Lock the data directory for this process, for as long as the returned file is open.

    Two brokers on one directory would fold and delete each other's journal, and
    ``mqttv5 storage`` must not work on the files of a running broker.

    Raises:
        StorageError: another process holds the lock (its process id is named).
    """
    path = os.path.join(directory, LOCK_NAME)
    f = open(path, "a+")  # noqa: SIM115 - held open for the store's lifetime
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise StorageError(
            f"{directory} is in use by another mqttv5 process (pid {holder}); stop it first, "
            "or give this one another --data-dir"
        ) from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f
