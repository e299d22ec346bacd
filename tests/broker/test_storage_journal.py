"""The journal of ``storage_sync = "normal"``: one record per group commit, folded into the
database by a child process; what a killed broker leaves is folded at the next start; a record
cut short is dropped, a damaged or foreign one refused; the data directory is locked."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mqttv5.broker.message import BrokerMessage, Delivery
from mqttv5.broker.sessions import SubEntry
from mqttv5.broker.storage import StorageError, StoredSession
from mqttv5.broker.storage import writer as w
from mqttv5.broker.storage.schema import SCHEMA
from mqttv5.broker.storage.sqlite import SqliteStore
from mqttv5.broker.storage.writer import (
    RECORD_HEADER,
    SEGMENT_HEADER,
    encode_record,
    fold_journal,
    segment_numbers,
    segment_path,
)
from mqttv5.protocol.packets import PubAck, Publish
from mqttv5.protocol.properties import Properties
from tests.broker.conftest import kill_child, run, started_broker
from tests.broker.rawclient import RawClient, timeout
from tests.broker.test_sqlite_store import (
    TestSchemaVersions,
    _free_port,
    _gone,
    _start_broker,
    reload,
)

FIXTURES = Path(__file__).parent / "fixtures"
KEEP = Properties(session_expiry_interval=3600)


def _count(db_path: Path, table: str) -> int:
    db = sqlite3.connect(db_path, timeout=5)
    try:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


def _until(predicate: object, within: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout(within)
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def _abandoned(data: Path, records: int = 2) -> None:
    """A store that committed ``records`` records and then died: no folder ran, nothing was
    folded (its files are left as a SIGKILL leaves them)."""
    store = SqliteStore(str(data))
    store._folder_ready = lambda: None  # type: ignore[method-assign]
    store.load()
    for i in range(records):
        store.save_retained(BrokerMessage(f"r/{i}", b"v%d" % i, 0, True))
        store.commit()
    store._journal.close()
    store._db.close()
    store._lock.close()


class TestFolding:
    def test_each_commit_is_a_record_a_child_folds_and_deletes_finished_segments(
        self, tmp_path: Path
    ) -> None:
        store = SqliteStore(str(tmp_path))
        store.load()
        store._journal.segment_bytes = 300  # a new segment every few records
        for i in range(12):
            store.save_session(StoredSession(f"c{i}", 60, None))
            store.save_retained(BrokerMessage(f"r/{i}", b"x" * 50, 1, True))
            ticket = store.ticket()
            assert store.commit_soon().done  # appended at once: output need not wait
            assert ticket.done  # and the acknowledgements neither
        assert len(segment_numbers(str(tmp_path))) > 3
        folder = store.folder_pid
        assert folder is not None
        assert folder != os.getpid()
        db = tmp_path / "mqttv5.db"
        assert _until(lambda: _count(db, "retained") == 12), "the folder did not fold"
        assert _count(db, "sessions") == 12
        # finished segments are deleted; the one being written stays
        assert _until(lambda: segment_numbers(str(tmp_path)) == [store._journal.number])
        store.close()
        assert segment_numbers(str(tmp_path)) == []  # a stopped broker leaves no journal
        assert _gone(folder, timeout(5))
        assert len(reload(tmp_path).retained) == 12

    def test_full_without_the_writer_appends_and_fsyncs(self, tmp_path: Path) -> None:
        store = SqliteStore(str(tmp_path), "FULL", writer=False)
        assert not store.uses_writer
        store.save_retained(BrokerMessage("r", b"1", 1, True))
        store.commit()
        assert store.commits == 1
        store.close()
        assert [r.topic for r in reload(tmp_path).retained] == ["r"]

    def test_two_folders_never_apply_a_record_twice(self, tmp_path: Path) -> None:
        store = SqliteStore(str(tmp_path))
        store._folder_ready = lambda: None  # type: ignore[method-assign]
        one = sqlite3.connect(tmp_path / "mqttv5.db", isolation_level=None)
        two = sqlite3.connect(tmp_path / "mqttv5.db", isolation_level=None)
        msg = BrokerMessage("t", b"x", 1, False)
        store.add_delivery("a", Delivery(msg, 1, False), 4)
        store.commit()
        assert fold_journal(one, str(tmp_path))[0] == 1
        store.delivery_done("a", 4)  # the delivery row and the message row go
        store.commit()
        assert fold_journal(two, str(tmp_path))[0] == 1  # only the new record
        assert fold_journal(one, str(tmp_path))[0] == 0  # the first is not applied again
        assert _count(tmp_path / "mqttv5.db", "deliveries") == 0
        assert _count(tmp_path / "mqttv5.db", "messages") == 0
        one.close()
        two.close()
        store.close()


class TestStartUp:
    def test_journal_left_by_a_killed_broker_is_folded_before_loading(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        _abandoned(tmp_path, 3)
        assert segment_numbers(str(tmp_path)) == [1]
        caplog.set_level(logging.INFO, "mqttv5.broker")
        store = SqliteStore(str(tmp_path))
        assert "Folded 3 journal records" in caplog.text
        assert segment_numbers(str(tmp_path)) == []
        assert sorted(r.topic for r in store.load().retained) == ["r/0", "r/1", "r/2"]
        store.save_retained(BrokerMessage("r/3", b"v3", 0, True))
        store.commit()
        assert segment_numbers(str(tmp_path)) == [2]  # numbers are never reused
        store.close()
        assert len(reload(tmp_path).retained) == 4

    def test_record_cut_short_at_the_end_is_dropped_with_a_warning(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        _abandoned(tmp_path, 2)
        record = encode_record([], [])
        with open(segment_path(str(tmp_path), 1), "ab") as f:
            f.write(record[: len(record) // 2])  # a write a crash cut short (never acknowledged)
        with SqliteStore(str(tmp_path)) as store:
            assert sorted(r.topic for r in store.load().retained) == ["r/0", "r/1"]
        assert "record cut short" in caplog.text
        assert "journal.00000001" in caplog.text

    def test_damaged_record_before_others_is_refused_and_nothing_is_touched(
        self, tmp_path: Path
    ) -> None:
        _abandoned(tmp_path, 2)
        path = Path(segment_path(str(tmp_path), 1))
        data = bytearray(path.read_bytes())
        data[SEGMENT_HEADER.size + RECORD_HEADER.size + 5] ^= 0xFF  # in the first record
        path.write_bytes(bytes(data))
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "mqttv5.lock"}
        with pytest.raises(StorageError, match=r"journal\.00000001: damaged record at byte 8"):
            SqliteStore(str(tmp_path))
        after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "mqttv5.lock"}
        assert after == before  # never emptied, never half-folded

    def test_damaged_length_before_other_records_is_refused(self, tmp_path: Path) -> None:
        _abandoned(tmp_path, 2)
        path = Path(segment_path(str(tmp_path), 1))
        data = bytearray(path.read_bytes())
        data[SEGMENT_HEADER.size : SEGMENT_HEADER.size + 4] = b"\xff\xff\xff\xf0"
        path.write_bytes(bytes(data))  # the first record's length now points past the end
        with pytest.raises(StorageError, match=r"damaged record at byte 8 \(a length past"):
            SqliteStore(str(tmp_path))
        assert path.read_bytes() == bytes(data)

    @pytest.mark.parametrize("tail", [bytes(4096), b"\x13\x37" * 700 + b"\x80\x05junk"])
    def test_zeros_or_garbage_after_the_last_record_are_a_cut_tail(
        self, tmp_path: Path, tail: bytes, caplog: pytest.LogCaptureFixture
    ) -> None:
        """What a power loss can leave after the last write (zeros, or stale blocks): no whole
        record follows, so it is a cut tail (never acknowledged), not damage."""
        _abandoned(tmp_path, 2)
        with open(segment_path(str(tmp_path), 1), "ab") as f:
            f.write(tail)
        with SqliteStore(str(tmp_path)) as store:
            assert sorted(r.topic for r in store.load().retained) == ["r/0", "r/1"]
        assert f"the last {len(tail)} bytes are a record cut short" in caplog.text

    @pytest.mark.parametrize(
        ("content", "error"),
        [
            (b"hello, world: not a journal", "not an mqttv5 journal segment"),
            (SEGMENT_HEADER.pack(b"MQ5J", 2, 0), "journal format 2, newer than this broker's 1"),
            (b"MQ5", "too short to be a journal segment"),
        ],
    )
    def test_foreign_or_newer_segment_is_refused(
        self, tmp_path: Path, content: bytes, error: str
    ) -> None:
        _abandoned(tmp_path, 1)
        Path(segment_path(str(tmp_path), 2)).write_bytes(content)
        Path(segment_path(str(tmp_path), 3)).write_bytes(SEGMENT_HEADER.pack(b"MQ5J", 1, 0))
        with pytest.raises(StorageError, match=error):
            SqliteStore(str(tmp_path))
        assert Path(segment_path(str(tmp_path), 2)).read_bytes() == content

    @pytest.mark.parametrize("kind", ["a class", "an unknown statement", "not a pair"])
    def test_record_that_is_not_ours_is_refused_and_never_run(
        self, tmp_path: Path, kind: str
    ) -> None:
        marker = tmp_path / "ran"

        class Exploit:
            def __reduce__(self) -> tuple[object, tuple[str]]:
                return (os.system, (f"touch {marker}",))

        body = {
            "a class": pickle.dumps(([], [(3, (Exploit(),))])),
            "an unknown statement": pickle.dumps(([], [(999, ("x",))])),
            "not a pair": pickle.dumps("DROP TABLE messages"),
        }[kind]
        _abandoned(tmp_path, 0)
        good = encode_record([], [])
        with open(segment_path(str(tmp_path), 1), "wb") as f:
            f.write(SEGMENT_HEADER.pack(b"MQ5J", 1, 0))
            f.write(RECORD_HEADER.pack(len(body), zlib.crc32(body)) + body)
            f.write(good)  # followed by more: damage, not a write cut short
        with pytest.raises(StorageError, match="damaged record at byte 8"):
            SqliteStore(str(tmp_path))
        assert not marker.exists()

    def test_journal_fixture_of_each_format_is_folded(self, tmp_path: Path) -> None:
        """``fixtures/journal-v1``: the state of the store fixtures, as three journal records
        on an empty schema-3 file (see fixtures/README.md)."""
        shutil.copytree(FIXTURES / "journal-v1", tmp_path / "data")
        with SqliteStore(str(tmp_path / "data")) as store:
            TestSchemaVersions._assert_fixture_state(store.load())
            assert store.check() == []
        assert segment_numbers(str(tmp_path / "data")) == []


class TestDirectoryLock:
    def test_second_store_on_one_directory_is_refused_naming_the_holder(
        self, tmp_path: Path
    ) -> None:
        first = SqliteStore(str(tmp_path))
        with pytest.raises(
            StorageError, match=rf"in use by another mqttv5 process \(pid {os.getpid()}\)"
        ):
            SqliteStore(str(tmp_path))
        first.close()
        SqliteStore(str(tmp_path)).close()  # free again

    @pytest.mark.slow
    def test_storage_command_refuses_a_running_brokers_directory(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        proc = _start_broker(_free_port(), data)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "mqttv5", "storage", "compact", "--data-dir", str(data)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 1
            assert f"in use by another mqttv5 process (pid {proc.pid})" in done.stderr
        finally:
            proc.kill()
            proc.wait()


# --- folding many records at once gives the state their writes in order give -------------------

_CIDS, _MIDS, _TOPICS, _FILTERS = ("a", "b"), (1, 2, 3), ("t/1", "t/2"), ("f/1", "f/2")


def _params(code: int, draw: st.DrawFn) -> tuple[object, ...]:
    cid, mid = draw(st.sampled_from(_CIDS)), draw(st.sampled_from(_MIDS))
    pid, n = draw(st.integers(1, 3)), draw(st.integers(0, 9))
    return {
        w.MESSAGE: (mid, "t", b"p%d" % n, 1, 0, b"", None, "o", 1.0, None),
        w.MESSAGE_GONE: (mid,),
        w.SESSION: (cid, n, None, None, None, None, None, None, None),
        w.SESSION_GONE: (cid,),
        w.SUBSCRIPTION: (cid, _FILTERS[n % 2], "x", None, n % 3, 0, 0, 0, None),
        w.SUBSCRIPTION_GONE: (cid, _FILTERS[n % 2]),
        w.SUBSCRIPTIONS_GONE: (cid,),
        w.DELIVERY: (cid, mid, n, 1, 0, "", None, None, None),
        w.DELIVERY_GONE: (cid, mid),
        w.DELIVERY_SENT: (pid, cid, mid),
        w.DELIVERY_RELEASED: (cid, mid),
        w.DELIVERIES_GONE: (cid,),
        w.RETAINED: (_TOPICS[n % 2], mid),
        w.RETAINED_GONE: (_TOPICS[n % 2],),
        w.QOS2_IN: (cid, pid),
        w.QOS2_OUT: (cid, pid),
        w.QOS2_GONE: (cid,),
        w.PROBE: (str(n),),
    }[code]


@st.composite
def _writes(draw: st.DrawFn) -> list[tuple[int, tuple[object, ...]]]:
    codes = draw(st.lists(st.integers(0, len(w.STATEMENTS) - 1), max_size=40))
    return [(code, _params(code, draw)) for code in codes]


def _state(db: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    tables = ("messages", "sessions", "subscriptions", "deliveries", "retained", "incoming_qos2")
    return {t: sorted(db.execute(f"SELECT * FROM {t}"), key=repr) for t in tables}


@settings(max_examples=300, deadline=None)
@given(before=_writes(), fold=_writes())
def test_folding_per_table_without_overwritten_writes_reaches_the_same_state(
    before: list[tuple[int, tuple[object, ...]]], fold: list[tuple[int, tuple[object, ...]]]
) -> None:
    dbs = []
    for _ in range(2):
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.executescript(SCHEMA)
        w.apply_ops(db, before)  # whatever the rows held before the fold
        dbs.append(db)
    in_order, folded = dbs
    w.apply_ops(in_order, fold)
    tables: list[list[tuple[int, tuple[object, ...]]]] = [[] for _ in w._TABLES]
    for op in fold:
        tables[w._TABLE_OF[op[0]]].append(op)
    for writes in tables:
        w.apply_ops(folded, w.without_overwritten(writes))
    assert _state(folded) == _state(in_order)


class TestSteadyLoad:
    def test_files_stop_growing_once_messages_are_acknowledged(self, tmp_path: Path) -> None:
        """Three rounds of the same load: the journal is folded and deleted as it goes, and
        the database reuses the pages the acknowledged messages freed."""
        data = tmp_path / "data"

        def on_disk() -> int:
            return sum(p.stat().st_size for p in data.iterdir())

        async def main() -> list[int]:
            async with started_broker(storage="sqlite", data_dir=str(data)) as b:
                store = b.store
                assert isinstance(store, SqliteStore)
                store._journal.segment_bytes = 64 << 10  # rotate often, so segments can go
                sub = await RawClient.connect(b.ports[0], "steady", properties=KEEP)
                await sub.subscribe("load/#", qos=1)
                pub = await RawClient.connect(b.ports[0], "pub")
                sizes = []
                for _ in range(3):
                    for i in range(1500):
                        pub.send(Publish("load/x", b"p" * 200, 1, packet_id=i % 100 + 1))
                        got = await sub.expect(Publish)
                        sub.send(PubAck(got.packet_id))
                        await pub.expect(PubAck)
                    await asyncio.sleep(0.1)
                    assert store.fold_now(), "the folder did not fold"
                    assert store.journal_bytes <= 128 << 10  # the segment being written, at most
                    sizes.append(on_disk())
                assert store.counts()["messages"] == 0  # every message acknowledged: gone
                assert store.counts()["deliveries"] == 0
                return sizes

        first, _, third = run(main(), 120)  # about 170 KB each here; 1.5 MB more per round
        # if the journal were kept
        assert third <= first * 1.5 + (256 << 10), f"grew from {first} to {third} bytes"


class TestDyingFolder:
    def test_killed_folder_is_logged_and_restarted_and_acknowledgements_never_wait(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        data = tmp_path / "data"
        caplog.set_level(logging.INFO, "mqttv5.broker")

        async def main() -> None:
            async with started_broker(storage="sqlite", data_dir=str(data)) as b:
                store = b.store
                assert isinstance(store, SqliteStore)
                pub = await RawClient.connect(b.ports[0], "pub")
                await pub.publish("r/0", b"first", qos=1, retain=True, packet_id=1)
                old = await kill_child(lambda: store.folder_pid)
                # nothing waits for the folder: acknowledged at once, not refused
                ack = await pub.publish("r/1", b"second", qos=1, retain=True, packet_id=2)
                assert isinstance(ack, PubAck)
                assert ack.reason_code == 0x10  # accepted: No matching subscribers, not 0x97
                assert store.failed is None
                await asyncio.sleep(0.6)  # past the restart delay: the next commit starts one
                await pub.publish("r/2", b"third", qos=1, retain=True, packet_id=3)
                new = store.folder_pid
                assert new is not None
                assert new != old
                assert store.fold_now()
                assert _count(data / "mqttv5.db", "retained") == 3  # folded by the new one

        run(main())
        messages = [r.getMessage() for r in caplog.records]
        assert any("journal folder process" in m and "exited" in m for m in messages)
        assert any("Journal folder process restarted" in m for m in messages)


# --- a batch appended again after a failed fsync or a dead writer -------------------------------

_ACTIONS = ("deliver", "sent", "released", "done", "dropped", "retain", "unretain", "qos2",
            "qos2 done", "session", "no session", "subscribe", "unsubscribe")  # fmt: skip


def _act(store: SqliteStore, msgs: list[BrokerMessage], action: str, c: int, m: int) -> None:
    cid, msg, pid = "ab"[c], msgs[m], m + 1
    if action == "deliver":
        store.add_delivery(cid, Delivery(msg, 2, False, (c,)), pid if c else None)
    elif action == "sent":
        store.delivery_sent(cid, msg.id, pid, 2)
    elif action == "released":
        store.delivery_released(cid, pid)
    elif action == "done":
        store.delivery_done(cid, pid)
    elif action == "dropped":
        store.delivery_dropped(cid, msg.id)
    elif action in ("retain", "unretain"):
        payload = msg.payload if action == "retain" else b""
        store.save_retained(BrokerMessage(f"r/{c}", payload, 1, True))
    elif action in ("qos2", "qos2 done"):
        store.incoming_qos2(cid, pid, action == "qos2")
    elif action == "session":
        store.save_session(StoredSession(cid, 60 + m, None))
    elif action == "no session":
        store.delete_session(cid)
    elif action == "subscribe":
        store.save_subscription(cid, SubEntry(f"f/{m}", f"f/{m}", None, 1, False, False, 0))
    else:
        store.delete_subscription(cid, f"f/{m}")


_STEPS = st.lists(
    st.tuples(st.sampled_from(_ACTIONS), st.integers(0, 1), st.integers(0, 2)), max_size=25
)


@settings(max_examples=300, deadline=None)
@given(first=_STEPS, second=_STEPS)
@example(first=[("deliver", 1, 0)], second=[("released", 1, 0), ("sent", 1, 1)])
@example(first=[("deliver", 0, 0), ("qos2", 0, 1)], second=[("done", 0, 0), ("no session", 0, 0)])
def test_a_batch_written_twice_in_a_row_leaves_the_state_of_once(
    first: list[tuple[str, int, int]], second: list[tuple[str, int, int]]
) -> None:
    """After a failed fsync or a dead writer the batch is appended again, so the journal may
    hold a batch's writes twice in a row: folding them must give the state of once."""
    with tempfile.TemporaryDirectory() as directory:
        store = SqliteStore(directory)
        msgs = [BrokerMessage("t", b"m%d" % i, 2, False) for i in range(3)]
        batches = []
        for steps in (first, second):
            for action, c, m in steps:
                _act(store, msgs, action, c, m)
            batches.append([(w.MESSAGE, row) for row in store._new_messages] + store._ops)
            store._new_messages, store._ops, store._gone = [], [], set()
        store.close()
    once, twice = (sqlite3.connect(":memory:", isolation_level=None) for _ in range(2))
    for db in (once, twice):
        db.executescript(SCHEMA)
        w.apply_ops(db, batches[0])
        w.apply_ops(db, batches[1])
    w.apply_ops(twice, batches[1])
    assert _state(twice) == _state(once)
