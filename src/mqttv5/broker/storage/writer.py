"""The storage child processes, the statements they run, and the journal they fold.

Two children, both started from this file as a script (``python -I writer.py ...``), so they
need no GIL of ours and no package of ours (this module imports only the standard library; the
broker's handles on them are in :mod:`.children`):

- **The journal folder** (``storage_sync = "normal"``, the default). The broker appends each
  tick's writes to a journal (one record per group commit, one ``write()``, see
  :mod:`.journal`) and acknowledges once the write returned: the record is then in the kernel,
  which survives any crash of the broker process. This child folds the journal into the SQLite
  database every ``FOLD_INTERVAL`` (one transaction for everything new, fsynced), records how
  far it got in that same transaction, and deletes the segments it has finished. The broker's
  event loop never runs SQLite at run time.
- **The writer** (``storage_sync = "full"``). There a commit must also survive a power loss,
  so every journal record must be fsynced (~0.3-10 ms, more on a busy disk) before what it
  covers is acknowledged. Done inline that stops the event loop for as long. So the broker
  appends a batch to the journal and asks this child to ``fdatasync`` the segment; it keeps
  collecting the next batch meanwhile (group commit), and completes the batch's ticket when
  the child replies. The folder folds the journal into the database as in ``normal``.

Both exit when their socket closes: when the broker closes the store, exits, or is killed
(SIGKILL included). A record the broker wrote before dying is still folded: if it was never
acknowledged, keeping it is harmless (a resent QoS 2 message is then recognised). Neither obeys
SIGINT/SIGTERM: a Ctrl+C to the process group must not stop them before the broker's last
write.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import select
import signal
import socket
import sqlite3
import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

__all__ = [
    "FOLD_INTERVAL",
    "JOURNAL_VERSION",
    "JournalError",
    "fold_journal",
]

Statement = tuple[int, tuple[Any, ...]]
"""One write: the index of its SQL in :data:`STATEMENTS` and its parameters."""

SYNC: Final = struct.Struct("!QQ")  # broker -> writer: batch number, journal segment to fsync
REPLY: Final = struct.Struct("!QI")  # writer -> broker: batch number, length of an error text
_FOLD_BUSY_TIMEOUT: Final = 5.0  # the folder waits this long for the file (no one waits on it)
FOLD_INTERVAL: Final = 0.5  # seconds between two folds of the journal
datasync: Final = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync: fsync there

# ---------------------------------------------------------------------------------------------
# the statements: the only SQL a batch or a journal record can name

STATEMENTS: Final = (
    "INSERT OR IGNORE INTO messages VALUES (?,?,?,?,?,?,?,?,?,?)",
    "DELETE FROM messages WHERE id = ?",
    "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?,?,?)",
    "DELETE FROM sessions WHERE client_id = ?",
    "INSERT OR REPLACE INTO subscriptions VALUES (?,?,?,?,?,?,?,?,?)",
    "DELETE FROM subscriptions WHERE client_id = ? AND topic_filter = ?",
    "DELETE FROM subscriptions WHERE client_id = ?",
    "INSERT OR REPLACE INTO deliveries VALUES (?,?,?,?,?,?,?,?,?,0)",
    "DELETE FROM deliveries WHERE client_id = ? AND message_id = ?",
    "UPDATE deliveries SET packet_id = ? WHERE client_id = ? AND message_id = ?",
    "UPDATE deliveries SET released = 1 WHERE client_id = ? AND message_id = ?",
    "DELETE FROM deliveries WHERE client_id = ?",
    "INSERT OR REPLACE INTO retained VALUES (?, ?)",
    "DELETE FROM retained WHERE topic = ?",
    "INSERT OR IGNORE INTO incoming_qos2 VALUES (?, ?)",
    "DELETE FROM incoming_qos2 WHERE client_id = ? AND packet_id = ?",
    "DELETE FROM incoming_qos2 WHERE client_id = ?",
    "INSERT OR REPLACE INTO meta VALUES ('probed_at', ?)",  # can we write again?
)
(
    MESSAGE, MESSAGE_GONE, SESSION, SESSION_GONE, SUBSCRIPTION, SUBSCRIPTION_GONE,
    SUBSCRIPTIONS_GONE, DELIVERY, DELIVERY_GONE, DELIVERY_SENT, DELIVERY_RELEASED,
    DELIVERIES_GONE, RETAINED, RETAINED_GONE, QOS2_IN, QOS2_OUT, QOS2_GONE, PROBE,
) = range(len(STATEMENTS))  # fmt: skip


_TABLES: Final = ("messages", "sessions", "subscriptions", "deliveries", "retained",
                   "incoming_qos2", "meta")  # fmt: skip
_TABLE_OF: Final = tuple(
    next(i for i, t in enumerate(_TABLES) if f" {t} " in sql) for sql in STATEMENTS
)
_ARITY: Final = tuple(sql.count("?") for sql in STATEMENTS)
# Where the primary key is in the parameters of each statement that names one row (the others
# touch several rows, or none), and the statements that delete the row they name.
_ROW_KEY: Final[dict[int, tuple[int, ...]]] = {
    MESSAGE: (0,), MESSAGE_GONE: (0,), SESSION: (0,), SESSION_GONE: (0,),
    SUBSCRIPTION: (0, 1), SUBSCRIPTION_GONE: (0, 1),
    DELIVERY: (0, 1), DELIVERY_GONE: (0, 1), DELIVERY_SENT: (1, 2), DELIVERY_RELEASED: (0, 1),
    RETAINED: (0,), RETAINED_GONE: (0,), QOS2_IN: (0, 1), QOS2_OUT: (0, 1),
}  # fmt: skip
_KEY_COLUMNS: Final = tuple(_ROW_KEY.get(code) for code in range(len(STATEMENTS)))
_DELETES: Final = frozenset(
    {MESSAGE_GONE, SESSION_GONE, SUBSCRIPTION_GONE, DELIVERY_GONE, RETAINED_GONE, QOS2_OUT}
)


def without_overwritten(ops: list[Statement]) -> list[Statement]:
    """The writes of one table, less those a later delete makes moot: the same end state.

    A row whose last write in ``ops`` deletes it needs only that delete; every earlier write
    naming that row is dropped (whatever the row held before, it ends deleted). A message
    acknowledged before the fold then costs one delete per table instead of an insert and a
    delete. Writes of several rows (a session's deliveries) name no row and are all kept.
    """
    if not any(code in _DELETES for code, _ in ops):
        return ops
    keys: list[Any] = []
    last: dict[Any, int] = {}
    for i, (code, params) in enumerate(ops):
        columns = _KEY_COLUMNS[code]
        if columns is None:
            keys.append(None)
            continue
        key = params[columns[0]] if len(columns) == 1 else (params[columns[0]], params[columns[1]])
        keys.append(key)
        last[key] = i
    dead = {key for key, i in last.items() if ops[i][0] in _DELETES}
    if not dead:
        return ops
    return [
        op
        for i, op in enumerate(ops)
        if (key := keys[i]) is None or key not in dead or last[key] == i
    ]


def apply_ops(db: sqlite3.Connection, ops: Iterable[Statement]) -> None:
    """Run ``ops`` in order; consecutive runs of one statement go to one ``executemany``."""
    run_code = -1
    run: list[tuple[Any, ...]] = []
    for code, params in ops:
        if code == run_code:
            run.append(params)
            continue
        if run:
            db.executemany(STATEMENTS[run_code], run)
        run_code, run = code, [params]
    if run:
        db.executemany(STATEMENTS[run_code], run)


# ---------------------------------------------------------------------------------------------
# the journal: its format, and folding it into the database

JOURNAL_MAGIC: Final = b"MQ5J"
JOURNAL_VERSION: Final = 1
SEGMENT_HEADER: Final = struct.Struct("!4sHH")  # magic, format version, reserved (0)
RECORD_HEADER: Final = struct.Struct("!II")  # length of the body, its CRC-32
MAX_RECORD: Final = 1 << 30
_SEGMENT_NAME: Final = re.compile(r"journal\.(\d{8})")
_POSITION_KEY: Final = "journal_position"  # meta: "segment offset", the next byte to fold


class JournalError(Exception):
    """A journal segment is damaged (not just cut short), foreign, or of a newer format."""


def segment_path(directory: str, number: int) -> str:
    """The file of journal segment ``number``."""
    return os.path.join(directory, f"journal.{number:08d}")


def segment_numbers(directory: str) -> list[int]:
    """The numbers of the journal segments in ``directory``, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _SEGMENT_NAME.fullmatch(n)))


def segment_header() -> bytes:
    """The first bytes of every segment."""
    return SEGMENT_HEADER.pack(JOURNAL_MAGIC, JOURNAL_VERSION, 0)


def encode_record(new_messages: list[tuple[Any, ...]], ops: list[Statement]) -> bytes:
    """One group commit as a journal record: header (length, CRC-32) and pickled body."""
    body = pickle.dumps((new_messages, ops), protocol=5)
    return RECORD_HEADER.pack(len(body), zlib.crc32(body)) + body


class _PlainUnpickler(pickle.Unpickler):
    """Loads tuples, lists, numbers, strings, bytes and None; refuses every class."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a journal record holds no {module}.{name}")


def _decode_body(body: bytes, tables: list[list[Statement]]) -> None:
    """Append a record's writes to ``tables`` (one list per table, in order; new messages
    first); ValueError if it is not one of ours (then ``tables`` is unchanged)."""
    try:
        new_messages, ops = _PlainUnpickler(io.BytesIO(body)).load()
    except Exception as exc:  # any garbage that passed the CRC
        raise ValueError(f"not a journal record: {exc}") from exc
    if type(new_messages) is not list or type(ops) is not list:
        raise ValueError("not a journal record")
    arity = _ARITY
    size = arity[MESSAGE]
    for row in new_messages:
        if type(row) is not tuple or len(row) != size:
            raise ValueError("not a journal record: a malformed message row")
    count = len(STATEMENTS)
    for op in ops:
        if (
            type(op) is not tuple
            or len(op) != 2
            or type(op[0]) is not int
            or not 0 <= op[0] < count
            or type(op[1]) is not tuple
            or len(op[1]) != arity[op[0]]
        ):
            raise ValueError("not a journal record: a malformed write")
    tables[0].extend([(MESSAGE, row) for row in new_messages])
    table_of = _TABLE_OF
    for op in ops:
        tables[table_of[op[0]]].append(op)


def _read_segment(
    path: str, start: int, live: bool, warn: Callable[[str], None], tables: list[list[Statement]]
) -> tuple[int, int]:
    """Decode the records of one segment from byte ``start`` (0: check its header first).

    Appends the writes to ``tables`` (one list per table); returns the offset after the last
    whole record, and the number of records.
    A record cut short at the end (a write the broker was making, or one a crash cut) ends the
    segment: while the broker may still be writing it (``live``) it is read again next time,
    otherwise it is dropped with a warning: it was never acknowledged. A damaged record
    followed by more data is corruption: JournalError.
    """
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()  # from the first byte not yet folded: offsets below are from start
    pos = 0
    if start == 0:
        if len(data) < SEGMENT_HEADER.size:
            if live or not data:
                return 0, 0  # created, header not yet written (or never: empty)
            raise JournalError(f"{path} is too short to be a journal segment")
        magic, version, _ = SEGMENT_HEADER.unpack_from(data)
        if magic != JOURNAL_MAGIC:
            raise JournalError(f"{path} is not an mqttv5 journal segment; refusing to use it")
        if version > JOURNAL_VERSION:
            raise JournalError(
                f"{path} has journal format {version}, newer than this broker's "
                f"{JOURNAL_VERSION}: upgrade mqttv5"
            )
        pos = SEGMENT_HEADER.size
    records = 0
    size = len(data)
    problem = ""
    while pos + RECORD_HEADER.size <= size:
        length, crc = RECORD_HEADER.unpack_from(data, pos)
        end = pos + RECORD_HEADER.size + length
        if length > MAX_RECORD or end > size:
            problem = "a length past the end"
            break
        body = data[pos + RECORD_HEADER.size : end]
        try:
            if zlib.crc32(body) != crc:
                raise ValueError("CRC mismatch")
            _decode_body(body, tables)
        except ValueError as exc:
            problem = str(exc)
            break
        pos = end
        records += 1
    if pos < size and not live:
        # A write cut short leaves nothing whole after it (a crash mid-write, or zeros after a
        # power loss); a whole record further on means the bad one is damage: refuse.
        if _whole_record_after(data, pos + 1):
            raise JournalError(f"{path}: damaged record at byte {start + pos} ({problem})")
        warn(
            f"{path}: the last {size - pos} bytes are a record cut short (never acknowledged); "
            "dropped"
        )
    return start + pos, records


def _whole_record_after(data: bytes, start: int) -> bool:
    """Whether a valid record begins anywhere at or after ``start`` (every body starts with
    pickle's protocol-5 marker, so only those places are tried)."""
    marker = b"\x80\x05"
    at = data.find(marker, start + RECORD_HEADER.size)
    while at != -1:
        length, crc = RECORD_HEADER.unpack_from(data, at - RECORD_HEADER.size)
        body = data[at : at + length]
        if 0 < length == len(body) and zlib.crc32(body) == crc:
            try:
                _decode_body(body, [[] for _ in _TABLES])
            except ValueError:
                pass
            else:
                return True
        at = data.find(marker, at + 1)
    return False


def fold_journal(
    db: sqlite3.Connection,
    directory: str,
    final: bool = False,
    warn: Callable[[str], None] = lambda text: None,
) -> tuple[int, int]:
    """Fold the journal segments of ``directory`` into ``db`` in one transaction.

    The position reached is written in the same transaction, so a fold interrupted anywhere
    is simply done again, and two processes folding at once (a new broker starting while the
    folder of a killed one finishes) take turns on SQLite's write lock and never apply a
    record twice. Segments wholly folded are deleted after the commit; with ``final`` (nobody
    is writing the journal) the newest one too.

    Returns the number of records folded and the number the next new segment must take.

    Raises:
        JournalError: a damaged, foreign or newer segment (nothing is folded or deleted).
        sqlite3.Error: the database cannot be written (nothing is folded or deleted).
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (_POSITION_KEY,)).fetchone()
        seg, off = (int(x) for x in row[0].split()) if row else (0, 0)
        reached = (seg, off)
        numbers = [n for n in segment_numbers(directory) if n >= seg]
        records = 0
        tables: list[list[Statement]] = [[] for _ in _TABLES]
        for i, number in enumerate(numbers):
            live = not final and i == len(numbers) - 1
            start = off if number == seg else 0
            try:
                end, count = _read_segment(
                    segment_path(directory, number), start, live, warn, tables
                )
            except FileNotFoundError:
                continue  # deleted by another folder after its commit: folded already
            records += count
            seg, off = number, end
        for writes in tables:  # statements on different tables commute: one long run each
            apply_ops(db, without_overwritten(writes))
        if (seg, off) == reached:
            db.execute("ROLLBACK")  # nothing new: no write, no fsync
        else:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_POSITION_KEY, f"{seg} {off}"))
            db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    for number in numbers:
        if number < seg or (final and number == seg):
            with contextlib.suppress(FileNotFoundError):
                os.remove(segment_path(directory, number))
    return records, max([seg, *numbers]) + 1


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


def serve(sock: socket.socket, directory: str) -> None:
    """The writer's loop: fsync the journal segment each request names, and reply, until the
    socket closes. The first time a segment is named, the directory is fsynced too (the new
    file's entry must survive a power loss as well as its contents)."""
    files: dict[int, int] = {}  # segment number -> open descriptor (the newest few)
    try:
        while True:
            request = _read_exact(sock, SYNC.size)
            if request is None:
                break
            batch, segment = SYNC.unpack(request)
            error = b""
            try:
                fd = files.get(segment)
                if fd is None:
                    fd = os.open(segment_path(directory, segment), os.O_RDONLY | os.O_CLOEXEC)
                    files[segment] = fd
                    _fsync_directory(directory)
                    for old in [n for n in files if n < segment]:
                        os.close(files.pop(old))  # synced with its last request already
                datasync(fd)
            except FileNotFoundError:
                pass  # folded (durably, the folder fsyncs) and deleted meanwhile
            except OSError as exc:
                error = str(exc).encode()
            try:
                sock.sendall(REPLY.pack(batch, len(error)) + error)
            except OSError:
                break
    finally:
        for fd in files.values():
            os.close(fd)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def serve_fold(sock: socket.socket, directory: str, path: str) -> None:
    """The folder's loop: fold every ``FOLD_INTERVAL`` and when asked, until the socket
    closes; then fold once more (what the broker wrote last) and return."""
    db = sqlite3.connect(path, isolation_level=None, timeout=_FOLD_BUSY_TIMEOUT)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a segment is deleted only once its fold is durable
    db.execute(f"PRAGMA journal_size_limit={64 << 20}")

    def warn(text: str) -> None:
        print(f"mqttv5 journal folder: {text}", file=sys.stderr, flush=True)

    failing = ""
    seen: list[tuple[int, int]] = []

    def fold() -> None:
        nonlocal failing, seen
        try:
            now = [
                (n, os.path.getsize(segment_path(directory, n))) for n in segment_numbers(directory)
            ]
        except OSError:
            now = []  # a segment went meanwhile: fold to find out
        if now == seen and not failing:
            return  # nothing written since the last fold
        seen = now
        try:
            fold_journal(db, directory, warn=warn)
        except (sqlite3.Error, OSError) as exc:  # a full or failing disk: try again later
            if str(exc) != failing:
                warn(f"cannot fold the journal ({exc}); will try again")
            failing = str(exc) or type(exc).__name__
        else:
            if failing:
                warn("folding the journal works again")
            failing = ""

    try:
        while True:
            ready, _, _ = select.select([sock], [], [], FOLD_INTERVAL)
            if not ready:
                fold()
                continue
            try:
                asked = sock.recv(64)
            except OSError:
                asked = b""
            fold()
            if not asked:
                break  # the broker closed the store, exited or was killed
            try:
                sock.sendall(b"." * len(asked))
            except OSError:
                break
    finally:
        db.close()


def main(argv: Sequence[str]) -> int:
    """``writer.py FD sync DIR`` (the writer) or ``writer.py FD fold DIR PATH`` (the journal
    folder): serve the broker on socket ``FD``."""
    # The broker decides when to stop: a Ctrl+C or SIGTERM sent to the whole process group
    # must not kill a child before the broker's last write. It exits on EOF.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    fd = int(argv[0])
    if argv[1] == "fold":
        with contextlib.suppress(OSError):
            os.nice(10)  # background work: the broker's loop and its clients come first
        try:
            serve_fold(socket.socket(fileno=fd), argv[2], argv[3])
        except JournalError as exc:
            print(f"mqttv5 journal folder: {exc}", file=sys.stderr, flush=True)
            return 3
        return 0
    if argv[1] != "sync":
        return 2
    serve(socket.socket(fileno=fd), argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
