"""The data file's schema, its version, and the upgrade from each older version.

Version 3 (this one) has version 2's tables. What changed is the data directory around the file:
it may hold journal segments (``journal.*``, see :mod:`.journal`) with acknowledged writes not
yet folded into the file. A broker of version 2 would not read them and would serve the file
without them; it refuses a file of version 3 ("newer than this broker's"), so nothing is lost
by going back a version. The upgrade records the journal position (nothing folded yet).

Version 2 kept version 1's columns and dropped what the hot path paid for and never
read: the secondary indexes (``deliveries_by_packet``, ``deliveries_by_message``,
``retained_by_message``) and the hidden rowid b-tree of the tables keyed by a text primary key
(``WITHOUT ROWID``). Writing a queued delivery now touches one b-tree instead of four: the
store's commit time per message fell by about a third (see docs/storage.md).
"""

from __future__ import annotations

import sqlite3
from typing import Final

__all__ = ["APPLICATION_ID", "SCHEMA", "SCHEMA_VERSION", "migrate"]

SCHEMA_VERSION: Final = 3
APPLICATION_ID: Final = 0x4D515435  # "MQT5" in the SQLite header: not a foreign file

_SESSIONS: Final = """
CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY,
    expiry INTEGER NOT NULL,
    disconnected_at REAL,
    username TEXT,
    will_topic TEXT, will_payload BLOB, will_qos INTEGER, will_retain INTEGER, will_props BLOB
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
"""

# The tables version 2 rebuilds WITHOUT ROWID (same columns, same order, no extra index).
_REBUILT: Final = {
    "subscriptions": """
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
) WITHOUT ROWID;""",
    "retained": """
CREATE TABLE retained (topic TEXT PRIMARY KEY, message_id INTEGER NOT NULL) WITHOUT ROWID;""",
    "deliveries": """
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
) WITHOUT ROWID;""",
    "incoming_qos2": """
CREATE TABLE incoming_qos2 (
    client_id TEXT NOT NULL, packet_id INTEGER NOT NULL, PRIMARY KEY (client_id, packet_id)
) WITHOUT ROWID;""",
}

SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    + _SESSIONS
    + "".join(_REBUILT.values())
)


def _v1_to_v2(db: sqlite3.Connection) -> None:
    """Rebuild the four keyed tables WITHOUT ROWID; their indexes go with the old tables."""
    for table, create in _REBUILT.items():
        db.execute(f"ALTER TABLE {table} RENAME TO {table}_v1")
        db.execute(create)
        db.execute(f"INSERT INTO {table} SELECT * FROM {table}_v1")
        db.execute(f"DROP TABLE {table}_v1")


def _v2_to_v3(db: sqlite3.Connection) -> None:
    """No table changes: the journal position, so a version-2 broker refuses the file."""
    db.execute("INSERT OR IGNORE INTO meta VALUES ('journal_position', '0 0')")


_STEPS: Final = {1: _v1_to_v2, 2: _v2_to_v3}  # version -> the step that upgrades it by one


def migrate(db: sqlite3.Connection, version: int) -> None:
    """Upgrade a data file from ``version`` to :data:`SCHEMA_VERSION` in one transaction.

    Raises:
        sqlite3.Error: the upgrade failed; the file is left as it was.
    """
    if version == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        while version < SCHEMA_VERSION:
            _STEPS[version](db)
            version += 1
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
