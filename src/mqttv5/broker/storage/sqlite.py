"""``SqliteStore``: the embedded durable store (``--storage sqlite``, data under ``--data-dir``).

SQLite in WAL mode. Writes are buffered as statements and committed together once per event-loop
tick (group commit):

- ``synchronous = NORMAL`` (the default; survives a crash of the broker process): the commit
  of a tick is one record appended to a journal (:mod:`.journal`, one ``write()``), and a
  child process folds the journal into the database every half second (:mod:`.writer`). An
  SQLite transaction on the event loop cost about 10 microseconds per message; the journal
  costs 2-4 (docs/storage.md), and the folding runs on another core. At start-up (and in
  ``mqttv5 storage``) whatever the journal still holds is folded before anything is read.
- ``synchronous = FULL`` (power loss too): the same journal, and a writer process fsyncs it
  (:mod:`.writer`), so the fsync of each commit never stops the event loop. While one batch is
  being fsynced the next one collects; a batch's ticket completes when the writer reports it
  durable.

One row per message (``messages``) and one reference row per session that still owes it
(``deliveries``): a message's payload is stored once however many sessions wait for it, and
deleted with its last reference (unless it is retained).

Exactly once across a crash: the broker routes a QoS 2 message at once but holds every byte of
output until the commit of its tick is durable (journal: the flush of a tick starts with the
append; writer process: :class:`~.gate.OutputGate`), and sends PUBREC only after that commit.
Killed before the commit, nothing was sent to a subscriber and the publisher resends; killed
after it, the publisher's packet identifier is on disk and its resend is answered without a
second delivery.

A failed commit (disk full, I/O error, a writer process that died) keeps its writes and their
tickets: they are retried, and the acknowledgements wait for them. While writes fail,
:meth:`SqliteStore.writable` is False and the broker refuses with 0x97, before routing them, the
QoS 1/2 messages that would need storage: a refused message is neither delivered nor stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from typing import Any, Final

from mqttv5.protocol.codec import encode_varint
from mqttv5.protocol.packets import Will
from mqttv5.protocol.properties import WILL, decode_properties, encode_properties

from .. import message as message_module
from ..message import BrokerMessage, Delivery
from ..sessions import SubEntry
from .base import (
    COMMITTED,
    CommitTicket,
    StorageError,
    StoredDelivery,
    StoredSession,
    StoredState,
)
from .children import FolderProcess, WriterProcess
from .journal import JournalWriter, lock_directory
from .schema import APPLICATION_ID, SCHEMA, SCHEMA_VERSION, migrate
from .writer import (
    DELIVERIES_GONE,
    DELIVERY,
    DELIVERY_GONE,
    DELIVERY_RELEASED,
    DELIVERY_SENT,
    MESSAGE,
    MESSAGE_GONE,
    PROBE,
    QOS2_GONE,
    QOS2_IN,
    QOS2_OUT,
    RETAINED,
    RETAINED_GONE,
    SESSION,
    SESSION_GONE,
    SUBSCRIPTION,
    SUBSCRIPTION_GONE,
    SUBSCRIPTIONS_GONE,
    JournalError,
    Statement,
    fold_journal,
    segment_numbers,
    segment_path,
)

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

log = logging.getLogger("mqttv5.broker")

DB_NAME: Final = "mqttv5.db"
WAL_LIMIT: Final = 64 << 20  # a WAL grown past this is truncated when it restarts
WRITER_TIMEOUT: Final = 30.0  # a blocking commit (shutdown, takeover) waits this long at most
RESPAWN_MIN: Final = 0.5  # seconds between two starts of a dying child process, doubling...
RESPAWN_MAX: Final = 10.0  # ...up to this while it keeps dying
PROBE_INTERVAL: Final = 0.2  # while writes fail, how often a new message may try one


class SqliteStore:
    """A durable :class:`~mqttv5.broker.storage.SessionStore` in one SQLite file.

    Args:
        data_dir: the directory of the database (created if missing).
        synchronous: ``"NORMAL"`` (survives a process crash) or ``"FULL"`` (power loss too).
        writer: have a writer process fsync each journal append (default: with ``FULL``
            only); ``False`` with ``FULL`` fsyncs on the event loop instead. See
            docs/storage.md for the figures behind that choice.

    Raises:
        StorageError: the file or a journal segment is foreign, corrupted, or of a newer
            format (never emptied), or another process uses ``data_dir``.
    """

    durable = True

    def __init__(
        self, data_dir: str, synchronous: str = "NORMAL", writer: bool | None = None
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        os.makedirs(data_dir, exist_ok=True)
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, DB_NAME)
        self.synchronous = synchronous
        self.uses_writer = synchronous == "FULL" if writer is None else writer
        self.clock_offset = time.time() - time.monotonic()
        self._ops: list[Statement] = []
        self._ticket = CommitTicket()
        self._seq = 0
        # What the file holds, mirrored here so every write is a keyed statement with no read:
        self._saved_messages: set[int] = set()  # message rows
        self._new_messages: list[tuple[Any, ...]] = []  # rows to insert at the next commit
        self._gone: set[int] = set()  # message rows deleted by the pending writes
        self._refs: dict[int, int] = {}  # message id -> deliveries that reference it
        self._owed: dict[str, dict[int, int | None]] = {}  # client -> message id -> packet id
        self._by_pid: dict[str, dict[int, int]] = {}  # client -> packet id -> message id
        self._retained: dict[str, int] = {}  # topic -> message id
        self._retained_ids: set[int] = set()
        self.commits = 0
        self.commit_seconds = 0.0  # time spent in successful commits (the /metrics latency)
        self.commit_seconds_max = 0.0
        self.failed: BaseException | None = None
        self._lock = lock_directory(data_dir)
        try:
            self._db = self._open(synchronous)
            try:
                first = self._fold_journal()  # what a stopped or killed broker left behind
            except BaseException:
                self._db.close()
                raise
        except BaseException:
            self._lock.close()
            raise
        # the journal (not uses_writer) and its folder process
        self._journal = JournalWriter(data_dir, first)
        self._folder: FolderProcess | None = None
        self._folder_backoff = _Backoff()
        # the writer process (uses_writer): one batch in flight at a time
        self._writer: WriterProcess | None = None
        self._batch = 0
        self._in_flight: _Batch | None = None
        self._carried: list[CommitTicket] = []  # tickets of writes whose commit failed
        self._attempt = CommitTicket()  # output of the writes since the last batch waits on it
        self._writer_backoff = _Backoff()
        self._probed = 0.0
        self._closed = False

    # ------------------------------------------------------------------------------------------
    # opening

    def _open(self, synchronous: str) -> sqlite3.Connection:
        existed = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        try:
            # fail fast rather than stall the event loop if another process holds the file
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=0.05
            )
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            if existed and app_id != APPLICATION_ID:
                db.close()
                raise StorageError(f"{self.path} is not an mqttv5 data file; refusing to use it")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("PRAGMA foreign_keys=OFF")
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            if not existed:
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            version = int(
                db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
            )
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: cannot open the data file: {exc}") from exc
        if version > SCHEMA_VERSION:
            db.close()
            raise StorageError(
                f"{self.path} has schema version {version}, newer than this broker's "
                f"{SCHEMA_VERSION}: upgrade mqttv5"
            )
        if version < SCHEMA_VERSION:
            try:
                migrate(db, version)
            except sqlite3.Error as exc:
                db.close()
                raise StorageError(
                    f"{self.path}: cannot upgrade schema version {version} to "
                    f"{SCHEMA_VERSION}: {exc}"
                ) from exc
            log.info("Upgraded %s from schema %d to %d.", self.path, version, SCHEMA_VERSION)
        return db

    def _fold_journal(self, final: bool = True) -> int:
        """Fold every journal record into the database here; return the number the next
        segment takes. ``final``: nobody is appending (the newest segment is deleted too). A
        folder child still at work (its broker was killed) holds SQLite's write lock
        meanwhile: wait for it."""
        db = self._db
        db.execute("PRAGMA busy_timeout=30000")
        try:
            records, first = fold_journal(db, self.data_dir, final=final, warn=log.warning)
        except JournalError as exc:
            raise StorageError(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot fold the journal into it: {exc}") from exc
        finally:
            db.execute("PRAGMA busy_timeout=50")
        if records:
            log.info("Folded %d journal records into %s.", records, self.path)
        return first

    def _folder_ready(self) -> FolderProcess | None:
        """The running journal folder, started (again) if it is not running and may be."""
        folder = self._folder
        if folder is None and not self._closed:
            if not self._folder_backoff.allow():
                return None
            try:
                folder = FolderProcess(self.data_dir, self.path, self._folder_exited)
            except OSError as exc:
                log.error("Cannot start the journal folder process: %s", exc)
                return None
            if self._folder_backoff.starts > 1:
                log.warning("Journal folder process restarted (pid %d).", folder.pid)
            self._folder = folder
        if folder is not None:
            try:
                folder.attach(asyncio.get_running_loop())
            except RuntimeError:
                pass  # no event loop: nothing reads its socket until a blocking wait
        return folder

    def _folder_exited(self, what: str) -> None:
        self._folder = None
        if not self._closed:  # acknowledgements never wait for it: the journal grows meanwhile
            log.error("%s: the journal grows until it is back.", what)

    def fold_now(self, timeout: float = WRITER_TIMEOUT) -> bool:
        """Have the folder process fold the journal now, and wait for it (blocks: tests and
        maintenance). False if it is not running or did not answer in ``timeout``."""
        folder = self._folder_ready()
        return folder is not None and folder.fold_now(timeout)

    def flush(self) -> None:
        """Commit what is pending and fold the journal into the database now, here (so that
        the database holds every write: maintenance and tests)."""
        self.commit()
        self._fold_journal(final=False)

    @property
    def journal_bytes(self) -> int:
        """The size of the journal segments on disk (folded ones are deleted)."""
        total = 0
        for number in segment_numbers(self.data_dir):
            with contextlib.suppress(OSError):
                total += os.path.getsize(segment_path(self.data_dir, number))
        return total

    @property
    def folder_pid(self) -> int | None:
        """The journal folder process's id while it runs."""
        return self._folder.pid if self._folder is not None else None

    # ------------------------------------------------------------------------------------------
    # loading

    def load(self) -> StoredState:
        """Read everything; message expiry and disconnection times come back on this
        process's loop clock (``time.monotonic``), so time spent down counts."""
        db = self._db
        off = self.clock_offset
        messages: dict[int, BrokerMessage] = {}
        max_id = 0
        for row in db.execute(
            "SELECT id, topic, payload, qos, retain, props, expiry_at, origin, received_at, "
            "payload_format FROM messages"
        ):
            mid = row[0]
            max_id = max(max_id, mid)
            msg = BrokerMessage(
                row[1], row[2], row[3], bool(row[4]), row[5],
                None if row[6] is None else row[6] - off, row[7], row[8] - off, row[9],
            )  # fmt: skip
            msg.id = mid
            messages[mid] = msg
        message_module.advance_ids(max_id + 1)
        self._saved_messages = set(messages)
        state = StoredState()
        by_id: dict[str, StoredSession] = {}
        for row in db.execute("SELECT * FROM sessions"):
            will = None
            if row[4] is not None:
                props_raw = row[8] or b""
                props = decode_properties(encode_varint(len(props_raw)) + props_raw, 0, WILL)[0]
                will = Will(row[4], row[5], row[6], bool(row[7]), props)
            stored = StoredSession(
                row[0], row[1], None if row[2] is None else row[2] - off, will, row[3]
            )
            by_id[row[0]] = stored
            state.sessions.append(stored)
        for row in db.execute("SELECT * FROM subscriptions"):
            session = by_id.get(row[0])
            if session is not None:
                entry = SubEntry(row[1], row[2], row[3], row[4], bool(row[5]), bool(row[6]), row[7])
                entry.sub_id = row[8]
                session.subscriptions.append(entry)
        for row in db.execute(
            "SELECT client_id, message_id, qos, retain, sub_ids, share_group, share_filter, "
            "packet_id, released, seq FROM deliveries ORDER BY seq"
        ):
            session = by_id.get(row[0])
            found = messages.get(row[1])
            if session is None or found is None:
                continue
            self._seq = max(self._seq, row[9])
            sub_ids = tuple(int(x) for x in row[4].split(",") if x)
            group = (row[5], row[6]) if row[5] is not None else None
            delivery = Delivery(found, row[2], bool(row[3]), sub_ids, group)
            self._owe(row[0], row[1], row[7])
            session.deliveries.append(StoredDelivery(delivery, row[7], bool(row[8])))
        for row in db.execute("SELECT client_id, packet_id FROM incoming_qos2"):
            session = by_id.get(row[0])
            if session is not None:
                session.incoming_qos2.append(row[1])
        for row in db.execute("SELECT topic, message_id FROM retained"):
            self._retained[row[0]] = row[1]
            self._retained_ids.add(row[1])
            kept = messages.get(row[1])
            if kept is not None:
                state.retained.append(kept)
        if self.uses_writer:
            self._writer_ready()  # start the children now: not on the first commit's tick
        self._folder_ready()
        return state

    # ------------------------------------------------------------------------------------------
    # writes (buffered until commit)

    def _wall(self, loop_time: float | None) -> float | None:
        return None if loop_time is None else loop_time + self.clock_offset

    def save_session(self, session: StoredSession) -> None:
        """Create or update a session's record."""
        will = session.will
        self._ops.append(
            (
                SESSION,
                (
                    session.client_id, session.expiry_interval,
                    self._wall(session.disconnected_at), session.username,
                    None if will is None else will.topic,
                    None if will is None else will.payload,
                    None if will is None else will.qos,
                    None if will is None else int(will.retain),
                    None if will is None else encode_properties(will.properties),
                ),
            )
        )  # fmt: skip

    def delete_session(self, client_id: str) -> None:
        """Remove a session, its subscriptions, deliveries and QoS 2 identifiers."""
        ops = self._ops
        key = (client_id,)
        ops.append((SESSION_GONE, key))
        ops.append((SUBSCRIPTIONS_GONE, key))
        ops.append((DELIVERIES_GONE, key))
        ops.append((QOS2_GONE, key))
        self._by_pid.pop(client_id, None)
        for message_id in self._owed.pop(client_id, {}):
            self._release(message_id)

    def save_subscription(self, client_id: str, entry: SubEntry) -> None:
        """Create or replace one subscription."""
        self._ops.append(
            (
                SUBSCRIPTION,
                (
                    client_id, entry.topic_filter, entry.match_filter, entry.group, entry.qos,
                    int(entry.no_local), int(entry.retain_as_published), entry.retain_handling,
                    entry.sub_id,
                ),
            )
        )  # fmt: skip

    def delete_subscription(self, client_id: str, topic_filter: str) -> None:
        """Remove one subscription."""
        self._ops.append((SUBSCRIPTION_GONE, (client_id, topic_filter)))

    def _save_message(self, msg: BrokerMessage) -> None:
        if msg.id in self._saved_messages:
            return
        self._saved_messages.add(msg.id)
        offset = self.clock_offset
        expiry = msg.expiry_at
        row = (
            msg.id, msg.topic, msg.payload, msg.qos, msg.retain, msg.props,
            None if expiry is None else expiry + offset, msg.origin,
            msg.received_at + offset, msg.payload_format_indicator,
        )  # fmt: skip
        if msg.id in self._gone:  # its row is deleted earlier in this batch: insert after that
            self._ops.append((MESSAGE, row))
        else:  # new rows go first, all in one executemany
            self._new_messages.append(row)

    def _delete_message(self, message_id: int) -> None:
        self._saved_messages.discard(message_id)
        self._gone.add(message_id)
        self._ops.append((MESSAGE_GONE, (message_id,)))

    def _owe(self, client_id: str, message_id: int, packet_id: int | None) -> None:
        owed = self._owed.get(client_id)
        if owed is None:
            owed = self._owed[client_id] = {}
        if message_id not in owed:
            self._refs[message_id] = self._refs.get(message_id, 0) + 1
        owed[message_id] = packet_id
        if packet_id is not None:
            by_pid = self._by_pid.get(client_id)
            if by_pid is None:
                by_pid = self._by_pid[client_id] = {}
            by_pid[packet_id] = message_id

    def _release(self, message_id: int) -> None:
        """One reference fewer; the message row goes with its last (unless it is retained)."""
        left = self._refs.get(message_id, 0) - 1
        if left > 0:
            self._refs[message_id] = left
            return
        self._refs.pop(message_id, None)
        if message_id not in self._retained_ids:
            self._delete_message(message_id)

    def save_retained(self, message: BrokerMessage) -> None:
        """Store, replace, or (empty payload) delete the topic's retained message."""
        topic = message.topic
        old = self._retained.pop(topic, None)
        if message.payload:
            self._save_message(message)
            self._retained[topic] = message.id
            self._retained_ids.add(message.id)
            self._ops.append((RETAINED, (topic, message.id)))
        else:
            self._ops.append((RETAINED_GONE, (topic,)))
        if old is not None and old != message.id:
            self._retained_ids.discard(old)
            if old not in self._refs:
                self._delete_message(old)

    def add_delivery(self, client_id: str, delivery: Delivery, packet_id: int | None) -> None:
        """Record a delivery owed to ``client_id`` (queued, or sent with ``packet_id``)."""
        msg = delivery.message
        self._save_message(msg)
        self._seq += 1
        self._owe(client_id, msg.id, packet_id)
        group = delivery.group
        sub_ids = delivery.sub_ids
        self._ops.append(
            (
                DELIVERY,
                (
                    client_id, msg.id, self._seq, delivery.qos, delivery.retain,
                    ",".join(map(str, sub_ids)) if sub_ids else "",
                    None if group is None else group[0], None if group is None else group[1],
                    packet_id,
                ),
            )
        )  # fmt: skip

    def delivery_sent(self, client_id: str, message_id: int, packet_id: int, qos: int) -> None:
        """A queued delivery went out with ``packet_id``.

        Written for QoS 2 only: after a restart a QoS 2 message must be resent with the packet
        identifier the subscriber knows. A QoS 1 one is simply sent again as queued (at least
        once), which saves a write per message.
        """
        self._owe(client_id, message_id, packet_id)
        if qos == 2:
            self._ops.append((DELIVERY_SENT, (packet_id, client_id, message_id)))

    def delivery_released(self, client_id: str, packet_id: int) -> None:
        """PUBREC received: the delivery only waits for PUBCOMP."""
        message_id = self._by_pid.get(client_id, {}).get(packet_id)
        if message_id is not None:  # keyed by message: the table has no packet id index
            self._ops.append((DELIVERY_RELEASED, (client_id, message_id)))

    def delivery_done(self, client_id: str, packet_id: int) -> None:
        """PUBACK / PUBCOMP received."""
        flights = self._by_pid.get(client_id)
        message_id = flights.pop(packet_id, None) if flights is not None else None
        if message_id is None:
            return  # not a delivery of a persistent session
        self._forget(client_id, message_id)

    def _forget(self, client_id: str, message_id: int) -> None:
        owed = self._owed.get(client_id)
        if owed is None or message_id not in owed:
            return
        packet_id = owed.pop(message_id)
        if packet_id is not None:
            self._by_pid.get(client_id, {}).pop(packet_id, None)
        self._ops.append((DELIVERY_GONE, (client_id, message_id)))
        self._release(message_id)

    def delivery_dropped(self, client_id: str, message_id: int) -> None:
        """A queued delivery was dropped."""
        self._forget(client_id, message_id)

    def incoming_qos2(self, client_id: str, packet_id: int, present: bool) -> None:
        """Record or forget an incoming QoS 2 packet identifier."""
        self._ops.append((QOS2_IN if present else QOS2_OUT, (client_id, packet_id)))

    # ------------------------------------------------------------------------------------------
    # commit

    @property
    def pending(self) -> bool:
        """True when writes wait for :meth:`commit`."""
        return bool(self._ops or self._new_messages)

    def ticket(self) -> CommitTicket:
        """The ticket of every write made so far (done once they are durable)."""
        return self._ticket

    def writable(self) -> bool:
        """False while writes fail (disk full, I/O error, no writer process).

        While they fail, each call (at most every ``PROBE_INTERVAL``) first tries a commit
        again, with a probe write if nothing else is pending, so the broker notices at once
        when space returns.
        """
        if self.failed is None:
            return True
        if not self._retry_due():
            return False
        if not self.pending:
            self._ops.append((PROBE, (str(time.time()),)))
        self.commit()
        return self.failed is None

    def _retry_due(self) -> bool:
        """While writes fail, retry at most every ``PROBE_INTERVAL``: a commit that fails on
        a lock held elsewhere blocks for its busy timeout."""
        now = time.monotonic()
        if now - self._probed < PROBE_INTERVAL:
            return False
        self._probed = now
        return True

    def commit_soon(self) -> CommitTicket:
        """Start committing every pending write; return what output must wait for.

        Inline, the commit is over on return, so output need not wait: COMMITTED. With the
        writer process the batch is handed over (unless one is in flight: it follows as soon
        as that one is reported), and the returned ticket completes when the writer reports
        the newest writes, committed or failed.
        """
        if self.failed is not None and not self._retry_due():
            return COMMITTED  # writes fail: the next try comes soon, output need not wait
        if not self.uses_writer:
            self.commit()
            return COMMITTED
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no event loop to read the writer's replies: wait for them
            self.commit()
            return COMMITTED
        if self._in_flight is None:
            if self._ops or self._new_messages:
                self._send_batch()
            if self._in_flight is None:
                return COMMITTED  # nothing in flight: no writer (failing), or nothing to write
        if self._ops or self._new_messages:
            return self._attempt  # sent when the batch in flight is answered
        return self._in_flight.attempt

    def commit(self) -> None:
        """Make every pending write durable, then complete the ticket: one journal record (and
        an fsync with ``FULL``), or one transaction of the writer process.

        A failed commit (disk full, I/O error) leaves the ticket pending and the statements
        queued: they are retried with the next commit, and the acknowledgements wait for it.
        Meanwhile :meth:`writable` is False and the broker refuses, before routing them, the
        QoS 1/2 messages that would need storage. With the writer process this waits for its
        reply (at most ``WRITER_TIMEOUT``): it serves shutdown and session takeover.
        """
        if self.uses_writer:
            self._commit_and_wait()
            return
        if not self._ops and not self._new_messages:
            return
        started = time.perf_counter()
        try:
            self._journal.append(self._new_messages, self._ops)
            if self.synchronous == "FULL":
                self._journal.sync()
        except OSError as exc:
            self._failing(exc)
            return
        self._new_messages = []
        self._ops = []
        self._gone = set()
        self._committed(time.perf_counter() - started)
        if self._folder is None:
            self._folder_ready()  # the first commit, or it died (started again with a backoff)
        ticket = self._ticket
        self._ticket = CommitTicket()
        ticket.complete()

    def _failing(self, exc: BaseException) -> None:
        if self.failed is None:
            log.error(
                "Storage commit failed (%s): QoS 1/2 messages that need storage are refused.",
                exc,
            )
        self._probed = time.monotonic()
        self.failed = exc

    def _committed(self, took: float) -> None:
        if self.failed is not None:
            log.info("Storage writes succeed again.")
            self.failed = None
        self.commits += 1
        self.commit_seconds += took
        self.commit_seconds_max = max(self.commit_seconds_max, took)

    # ------------------------------------------------------------------------------------------
    # the writer process (uses_writer)

    def _writer_ready(self) -> WriterProcess | None:
        """The running writer, started (again) if it is not running and may be; else None."""
        writer = self._writer
        if writer is None and not self._closed:
            if not self._writer_backoff.allow():
                return None  # it died moments ago: refuse work for a while, then try again
            try:
                writer = WriterProcess(self.data_dir, self._replied, self._exited)
            except OSError as exc:
                self._failing(StorageError(f"cannot start the storage writer process: {exc}"))
                return None
            if self._writer_backoff.starts > 1:
                log.warning("Storage writer process restarted (pid %d).", writer.pid)
            self._writer = writer
        if writer is not None:
            try:
                writer.attach(asyncio.get_running_loop())
            except RuntimeError:
                pass  # no event loop: replies are read by blocking waits
        return writer

    def _send_batch(self) -> None:
        """Hand every pending write to the writer as one batch (none may be in flight)."""
        flight = _Batch(
            self._batch + 1,
            [*self._carried, self._ticket],
            self._attempt,
            self._new_messages,
            self._ops,
            self._gone,
        )
        self._carried = []
        self._ticket = CommitTicket()
        self._attempt = CommitTicket()
        self._new_messages = []
        self._ops = []
        self._gone = set()
        writer = self._writer_ready()
        if writer is None:
            if self.failed is None:
                self._failing(StorageError("the storage writer process is not running"))
            self._requeue(flight)
            return
        try:
            self._journal.append(flight.new_messages, flight.ops)
        except OSError as exc:
            self._failing(exc)
            self._requeue(flight)
            return
        if self._folder is None:
            self._folder_ready()
        self._batch += 1
        self._in_flight = flight
        writer.sync(flight.number, self._journal.number)  # on failure: _exited

    def _requeue(self, flight: _Batch) -> None:
        """Put a batch that did not commit back before the writes made since: they are
        retried with the next commit, and their tickets wait for it. Output waits no more."""
        gone = flight.gone
        later = self._new_messages
        moved = [(MESSAGE, row) for row in later if row[0] in gone] if gone else []
        if moved:  # saved again after the batch deleted them: insert after its deletion
            later = [row for row in later if row[0] not in gone]
        self._new_messages = flight.new_messages + later
        self._ops = flight.ops + moved + self._ops
        self._gone |= gone
        self._carried = flight.tickets + self._carried
        attempt = self._attempt
        self._attempt = CommitTicket()
        flight.attempt.complete()
        attempt.complete()

    def _replied(self, number: int, error: str | None) -> None:
        flight = self._in_flight
        if flight is None or flight.number != number:
            return
        self._in_flight = None
        if error is not None:
            self._failing(StorageError(error))
            self._requeue(flight)
            return
        self._committed(time.perf_counter() - flight.started)
        self._writer_backoff.reset()
        flight.attempt.complete()
        for ticket in flight.tickets:
            ticket.complete()
        if self._in_flight is None and self.pending and not self._closed:
            self._send_batch()  # what collected meanwhile: the next group commit

    def _exited(self, what: str) -> None:
        self._writer = None
        if self._closed:
            return
        log.error("%s: QoS 1/2 messages that need storage are refused until it is back.", what)
        self._failing(StorageError(what))
        flight = self._in_flight
        self._in_flight = None
        if flight is not None:  # committed or not: its writes are retried (they are idempotent)
            self._requeue(flight)

    def _commit_and_wait(self) -> None:
        deadline = time.monotonic() + WRITER_TIMEOUT
        while self._in_flight is not None or self.pending:
            if self._in_flight is None:
                self._send_batch()
                if self._in_flight is None:
                    return  # no writer: the writes wait for the next commit
            flight = self._in_flight
            writer = self._writer
            while self._in_flight is flight and writer is not None:
                if not writer.wait(max(0.0, deadline - time.monotonic())):
                    log.error("The storage writer process did not answer in %ds.", WRITER_TIMEOUT)
                    writer.proc.kill()
                    writer.wait(1.0)
                    return
            if self.failed is not None:
                return  # this commit failed; the writes are kept for the next one

    @property
    def writer_pid(self) -> int | None:
        """The writer process's id while it runs (``uses_writer``)."""
        return self._writer.pid if self._writer is not None else None

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Commit what is pending, fold the journal, close the file, stop the child processes
        and release the data directory."""
        if self._closed:
            return
        self.commit()
        self._closed = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._journal.close()
        if self._folder is not None:
            self._folder.close(WRITER_TIMEOUT)  # it folds what the journal holds, then exits
            self._folder = None
        try:
            self._fold_journal()  # the rest, and the last segment: a stopped broker leaves none
        except StorageError as exc:
            log.error("%s; the journal is folded at the next start.", exc)
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self._db.close()
        self._lock.close()

    # ------------------------------------------------------------------------------------------
    # maintenance

    def check(self) -> list[str]:
        """SQLite's integrity check plus our own consistency checks; [] when healthy."""
        self.flush()
        problems = [r[0] for r in self._db.execute("PRAGMA integrity_check") if r[0] != "ok"]
        orphans = self._db.execute(
            "SELECT COUNT(*) FROM deliveries WHERE message_id NOT IN (SELECT id FROM messages)"
        ).fetchone()[0]
        if orphans:
            problems.append(f"{orphans} deliveries refer to missing messages")
        return problems

    def compact(self) -> None:
        """Drop unreferenced messages and reclaim free space (VACUUM)."""
        self.commit()
        self._journal.close()
        self._journal = JournalWriter(self.data_dir, self._fold_journal())
        self._db.execute(_CLEAN_ORPHANS)
        self._db.execute("VACUUM")

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        self.flush()
        tables: Iterable[str] = (
            "sessions", "subscriptions", "messages", "retained", "deliveries", "incoming_qos2"
        )  # fmt: skip
        return {t: self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


_CLEAN_ORPHANS: Final = (
    "DELETE FROM messages WHERE id NOT IN (SELECT message_id FROM deliveries) "
    "AND id NOT IN (SELECT message_id FROM retained)"
)


class _Backoff:
    """When a child process may be started (again): at once the first time, then after
    ``RESPAWN_MIN`` seconds, doubling up to ``RESPAWN_MAX`` while it keeps dying."""

    __slots__ = ("_at", "_delay", "starts")

    def __init__(self) -> None:
        self._at = -RESPAWN_MAX
        self._delay = RESPAWN_MIN
        self.starts = 0  # starts allowed so far

    def allow(self) -> bool:
        """True (and the start counted) if a start is due now."""
        now = time.monotonic()
        if now - self._at < self._delay:
            return False
        quick = now - self._at < RESPAWN_MAX  # it keeps dying: wait longer
        self._delay = min(self._delay * 2, RESPAWN_MAX) if quick else RESPAWN_MIN
        self._at = now
        self.starts += 1
        return True

    def reset(self) -> None:
        """It worked: the next start after a death waits ``RESPAWN_MIN`` only."""
        self._delay = RESPAWN_MIN


class _Batch:
    """Writes handed to the writer process, kept until it reports them."""

    __slots__ = ("attempt", "gone", "new_messages", "number", "ops", "started", "tickets")

    def __init__(
        self,
        number: int,
        tickets: list[CommitTicket],
        attempt: CommitTicket,
        new_messages: list[tuple[Any, ...]],
        ops: list[Statement],
        gone: set[int],
    ) -> None:
        self.number = number
        self.tickets = tickets  # done when the writes are durable (acknowledgements wait)
        self.attempt = attempt  # done when the writer answers either way (output waits)
        self.new_messages = new_messages
        self.ops = ops
        self.gone = gone  # message rows it deletes
        self.started = time.perf_counter()
