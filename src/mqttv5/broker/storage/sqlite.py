"""``SqliteStore``: the embedded durable store (``--storage sqlite``, data under ``--data-dir``).

SQLite in WAL mode. Writes are buffered as statements and committed together once per event-loop
tick (group commit), inline: a WAL commit of a hundred rows takes a fraction of a millisecond,
while a writer thread beside a busy event loop convoys on the GIL. With ``synchronous = NORMAL``
(the default) a commit survives a crash of the broker process; ``FULL`` also survives power loss.

One row per message (``messages``) and one reference row per session that still owes it
(``deliveries``): a message's payload is stored once however many sessions wait for it, and
deleted with its last reference (unless it is retained).

Exactly once across a crash: the broker routes a QoS 2 message at once but commits before it
writes anything to any socket (the flush of a tick starts with the commit), and sends PUBREC only
after that commit. Killed before the commit, nothing was sent to a subscriber and the publisher
resends; killed after it, the publisher's packet identifier is on disk and its resend is
answered without a second delivery.
"""

from __future__ import annotations

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
    CommitTicket,
    StorageError,
    StoredDelivery,
    StoredSession,
    StoredState,
)

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

log = logging.getLogger("mqttv5.broker")

SCHEMA_VERSION: Final = 1
APPLICATION_ID: Final = 0x4D515435  # "MQT5" in the SQLite header: not a foreign file
DB_NAME: Final = "mqttv5.db"

_SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY,
    expiry INTEGER NOT NULL,
    disconnected_at REAL,
    username TEXT,
    will_topic TEXT, will_payload BLOB, will_qos INTEGER, will_retain INTEGER, will_props BLOB
);
CREATE TABLE subscriptions (
    client_id TEXT NOT NULL,
    topic_filter TEXT NOT NULL,
    match_filter TEXT NOT NULL,
    share_group TEXT,
    qos INTEGER NOT NULL,
    no_local INTEGER NOT NULL,
    retain_as_published INTEGER NOT NULL,
    retain_handling INTEGER NOT NULL,
    sub_id INTEGER,
    PRIMARY KEY (client_id, topic_filter)
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    props BLOB NOT NULL,
    expiry_at REAL,
    origin TEXT NOT NULL,
    received_at REAL NOT NULL,
    payload_format INTEGER
);
CREATE TABLE retained (topic TEXT PRIMARY KEY, message_id INTEGER NOT NULL);
CREATE INDEX retained_by_message ON retained (message_id);
CREATE TABLE deliveries (
    client_id TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    sub_ids TEXT NOT NULL,
    share_group TEXT,
    share_filter TEXT,
    packet_id INTEGER,
    released INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, message_id)
);
CREATE INDEX deliveries_by_packet ON deliveries (client_id, packet_id);
CREATE INDEX deliveries_by_message ON deliveries (message_id);
CREATE TABLE incoming_qos2 (
    client_id TEXT NOT NULL, packet_id INTEGER NOT NULL, PRIMARY KEY (client_id, packet_id)
);
"""


Statement = tuple[str, tuple[Any, ...]]


class SqliteStore:
    """A durable :class:`~mqttv5.broker.storage.SessionStore` in one SQLite file.

    Args:
        data_dir: the directory of the database (created if missing).
        synchronous: ``"NORMAL"`` (survives a process crash) or ``"FULL"`` (power loss too).

    Raises:
        StorageError: the file is foreign, corrupted, or has a newer schema; never emptied.
    """

    durable = True

    def __init__(self, data_dir: str, synchronous: str = "NORMAL") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        os.makedirs(data_dir, exist_ok=True)
        self.path = os.path.join(data_dir, DB_NAME)
        self.clock_offset = time.time() - time.monotonic()
        self._ops: list[Statement] = []
        self._ticket = CommitTicket()
        self._seq = 0
        # What the file holds, mirrored here so every write is a keyed statement with no read:
        self._saved_messages: set[int] = set()  # message rows
        self._new_messages: list[tuple[Any, ...]] = []  # rows to insert at the next commit
        self._refs: dict[int, int] = {}  # message id -> deliveries that reference it
        self._owed: dict[str, dict[int, int | None]] = {}  # client -> message id -> packet id
        self._by_pid: dict[str, dict[int, int]] = {}  # client -> packet id -> message id
        self._retained: dict[str, int] = {}  # topic -> message id
        self._retained_ids: set[int] = set()
        self.commits = 0
        self.commit_seconds = 0.0  # time spent in successful commits (the /metrics latency)
        self.commit_seconds_max = 0.0
        self.failed: BaseException | None = None
        self._db = self._open(synchronous)

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
            if not existed:
                db.executescript(_SCHEMA)
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
        migrate(db, version)
        return db

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
                "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?,?,?)",
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
        ops.append(("DELETE FROM sessions WHERE client_id = ?", (client_id,)))
        ops.append(("DELETE FROM subscriptions WHERE client_id = ?", (client_id,)))
        ops.append(("DELETE FROM deliveries WHERE client_id = ?", (client_id,)))
        ops.append(("DELETE FROM incoming_qos2 WHERE client_id = ?", (client_id,)))
        self._by_pid.pop(client_id, None)
        for message_id in self._owed.pop(client_id, {}):
            self._release(message_id)

    def save_subscription(self, client_id: str, entry: SubEntry) -> None:
        """Create or replace one subscription."""
        self._ops.append(
            (
                "INSERT OR REPLACE INTO subscriptions VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    client_id, entry.topic_filter, entry.match_filter, entry.group, entry.qos,
                    int(entry.no_local), int(entry.retain_as_published), entry.retain_handling,
                    entry.sub_id,
                ),
            )
        )  # fmt: skip

    def delete_subscription(self, client_id: str, topic_filter: str) -> None:
        """Remove one subscription."""
        self._ops.append(
            (
                "DELETE FROM subscriptions WHERE client_id = ? AND topic_filter = ?",
                (client_id, topic_filter),
            )
        )

    def _save_message(self, msg: BrokerMessage) -> None:
        if msg.id in self._saved_messages:
            return
        self._saved_messages.add(msg.id)
        self._new_messages.append(
            (
                msg.id, msg.topic, msg.payload, msg.qos, int(msg.retain), msg.props,
                self._wall(msg.expiry_at), msg.origin, self._wall(msg.received_at),
                msg.payload_format_indicator,
            )
        )  # fmt: skip

    def _owe(self, client_id: str, message_id: int, packet_id: int | None) -> None:
        owed = self._owed.setdefault(client_id, {})
        if message_id not in owed:
            self._refs[message_id] = self._refs.get(message_id, 0) + 1
        owed[message_id] = packet_id
        if packet_id is not None:
            self._by_pid.setdefault(client_id, {})[packet_id] = message_id

    def _release(self, message_id: int) -> None:
        """One reference fewer; the message row goes with its last (unless it is retained)."""
        left = self._refs.get(message_id, 0) - 1
        if left > 0:
            self._refs[message_id] = left
            return
        self._refs.pop(message_id, None)
        if message_id not in self._retained_ids:
            self._saved_messages.discard(message_id)
            self._ops.append(("DELETE FROM messages WHERE id = ?", (message_id,)))

    def save_retained(self, message: BrokerMessage) -> None:
        """Store, replace, or (empty payload) delete the topic's retained message."""
        topic = message.topic
        old = self._retained.pop(topic, None)
        if message.payload:
            self._save_message(message)
            self._retained[topic] = message.id
            self._retained_ids.add(message.id)
            self._ops.append(("INSERT OR REPLACE INTO retained VALUES (?, ?)", (topic, message.id)))
        else:
            self._ops.append(("DELETE FROM retained WHERE topic = ?", (topic,)))
        if old is not None and old != message.id:
            self._retained_ids.discard(old)
            if old not in self._refs:
                self._saved_messages.discard(old)
                self._ops.append(("DELETE FROM messages WHERE id = ?", (old,)))

    def add_delivery(self, client_id: str, delivery: Delivery, packet_id: int | None) -> None:
        """Record a delivery owed to ``client_id`` (queued, or sent with ``packet_id``)."""
        msg = delivery.message
        self._save_message(msg)
        self._seq += 1
        self._owe(client_id, msg.id, packet_id)
        group = delivery.group
        self._ops.append(
            (
                "INSERT OR REPLACE INTO deliveries VALUES (?,?,?,?,?,?,?,?,?,0)",
                (
                    client_id, msg.id, self._seq, delivery.qos, int(delivery.retain),
                    ",".join(map(str, delivery.sub_ids)),
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
            self._ops.append(
                (
                    "UPDATE deliveries SET packet_id = ? WHERE client_id = ? AND message_id = ?",
                    (packet_id, client_id, message_id),
                )
            )

    def delivery_released(self, client_id: str, packet_id: int) -> None:
        """PUBREC received: the delivery only waits for PUBCOMP."""
        self._ops.append(
            (
                "UPDATE deliveries SET released = 1 WHERE client_id = ? AND packet_id = ?",
                (client_id, packet_id),
            )
        )

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
        self._ops.append(
            (
                "DELETE FROM deliveries WHERE client_id = ? AND message_id = ?",
                (client_id, message_id),
            )
        )
        self._release(message_id)

    def delivery_dropped(self, client_id: str, message_id: int) -> None:
        """A queued delivery was dropped."""
        self._forget(client_id, message_id)

    def incoming_qos2(self, client_id: str, packet_id: int, present: bool) -> None:
        """Record or forget an incoming QoS 2 packet identifier."""
        if present:
            sql = "INSERT OR IGNORE INTO incoming_qos2 VALUES (?, ?)"
        else:
            sql = "DELETE FROM incoming_qos2 WHERE client_id = ? AND packet_id = ?"
        self._ops.append((sql, (client_id, packet_id)))

    # ------------------------------------------------------------------------------------------
    # commit

    @property
    def pending(self) -> bool:
        """True when writes wait for :meth:`commit`."""
        return bool(self._ops or self._new_messages)

    def ticket(self) -> CommitTicket:
        """The ticket of every write made so far (done when they are committed)."""
        return self._ticket

    def commit(self) -> None:
        """Write every pending statement in one transaction, then complete the ticket.

        A failed commit (disk full, I/O error) fails the ticket: the broker then answers the
        messages it held with an error code instead of a success, and the statements are
        retried with the next commit.
        """
        ops = self._ops
        if not ops and not self._new_messages:
            return
        ticket = self._ticket
        self._ticket = CommitTicket()
        db = self._db
        started = time.perf_counter()
        try:
            db.execute("BEGIN")
            if self._new_messages:  # new rows first: later statements may refer to them
                db.executemany(
                    "INSERT OR IGNORE INTO messages VALUES (?,?,?,?,?,?,?,?,?,?)",
                    self._new_messages,
                )
            # consecutive runs of one statement go to executemany (one call into SQLite)
            run_sql: str | None = None
            run: list[tuple[Any, ...]] = []
            for sql, params in ops:
                if sql == run_sql:
                    run.append(params)
                    continue
                if run_sql is not None:
                    db.executemany(run_sql, run)
                    run_sql = None
                run_sql, run = sql, [params]
            if run_sql is not None:
                db.executemany(run_sql, run)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if self.failed is None:
                log.error("Storage commit failed (%s): QoS 1/2 work that needs it is refused.", exc)
            self.failed = exc
            ticket.complete(StorageError(str(exc)))
            return
        if self.failed is not None:
            log.info("Storage writes succeed again.")
            self.failed = None
        self._ops = []
        self._new_messages = []
        self.commits += 1
        took = time.perf_counter() - started
        self.commit_seconds += took
        self.commit_seconds_max = max(self.commit_seconds_max, took)
        ticket.complete()

    def close(self) -> None:
        """Commit what is pending and close the file."""
        self.commit()
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self._db.close()

    # ------------------------------------------------------------------------------------------
    # maintenance

    def check(self) -> list[str]:
        """SQLite's integrity check plus our own consistency checks; [] when healthy."""
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
        self._db.execute(_CLEAN_ORPHANS)
        self._db.execute("VACUUM")

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        tables: Iterable[str] = (
            "sessions", "subscriptions", "messages", "retained", "deliveries", "incoming_qos2"
        )  # fmt: skip
        return {t: self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


_CLEAN_ORPHANS: Final = (
    "DELETE FROM messages WHERE NOT EXISTS "
    "(SELECT 1 FROM deliveries WHERE message_id = messages.id) AND NOT EXISTS "
    "(SELECT 1 FROM retained WHERE message_id = messages.id)"
)


def migrate(db: sqlite3.Connection, version: int) -> None:
    """Upgrade a data file from ``version`` to :data:`SCHEMA_VERSION`, one step at a time.

    Version 1 is the first schema: there is nothing to migrate yet. A future version adds a
    step here and a data-file fixture of the old version to the tests.
    """
    if version == SCHEMA_VERSION:
        return
    raise StorageError(f"no migration from schema version {version}")  # pragma: no cover
