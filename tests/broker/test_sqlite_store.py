"""The durable store: the SQLite file itself, restarts of an in-process broker, and SIGKILL of a
broker subprocess in the middle of a load (no acknowledged QoS 1/2 message may be lost)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mqttv5.broker.message import BrokerMessage, Delivery
from mqttv5.broker.sessions import SubEntry
from mqttv5.broker.storage import CommitTicket, StorageError, StoredSession, StoredState
from mqttv5.broker.storage.sqlite import SCHEMA_VERSION, SqliteStore
from mqttv5.protocol.packets import Connack, Connect, PubAck, PubComp, Publish, PubRec, PubRel, Will
from mqttv5.protocol.properties import Properties
from tests.broker.conftest import SmallDisk, run, started_broker
from tests.broker.rawclient import RawClient, timeout

KEEP = Properties(session_expiry_interval=3600)


def reload(path: Path) -> StoredState:
    """What a new store on ``path`` loads (closed again: it holds the directory's lock)."""
    with SqliteStore(str(path)) as store:
        return store.load()


class TestStoreFile:
    def test_round_trip_of_every_kind(self, tmp_path: Path) -> None:
        store = SqliteStore(str(tmp_path))
        will = Will("w/t", b"bye", 1, True, Properties(will_delay_interval=5, content_type="x"))
        store.save_session(StoredSession("c1", 300, None, will, "alice"))
        entry = SubEntry("a/+", "a/+", None, 1, True, True, 2)
        entry.sub_id = 42
        store.save_subscription("c1", entry)
        props = Properties(user_properties=[("k", "v"), ("k", "w")], content_type="t").encode()
        msg = BrokerMessage("a/b", b"payload", 1, False, props, None, "pub", 1.0)
        store.add_delivery("c1", Delivery(msg, 1, False, (42,)), None)
        msg2 = BrokerMessage("a/c", b"two", 2, False, b"", None, "pub", 1.0)
        store.add_delivery("c1", Delivery(msg2, 2, False, ()), 7)
        store.delivery_released("c1", 7)
        store.incoming_qos2("c1", 9, True)
        ret = BrokerMessage("r/1", b"kept", 1, True, props, None, "pub", 1.0)
        store.save_retained(ret)
        assert store.pending
        ticket = store.ticket()
        store.commit()
        assert ticket.done
        assert ticket.error is None
        store.close()

        state = reload(tmp_path)
        (s,) = state.sessions
        assert (s.client_id, s.expiry_interval, s.username) == ("c1", 300, "alice")
        assert s.will == will
        (sub,) = s.subscriptions
        assert (sub.topic_filter, sub.qos, sub.no_local, sub.retain_handling, sub.sub_id) == (
            "a/+", 1, True, 2, 42,
        )  # fmt: skip
        first, second = s.deliveries
        assert first.packet_id is None
        assert first.delivery.message.payload == b"payload"
        assert first.delivery.message.properties.user_properties == [("k", "v"), ("k", "w")]
        assert first.delivery.sub_ids == (42,)
        assert (second.packet_id, second.released) == (7, True)
        assert s.incoming_qos2 == [9]
        (r,) = state.retained
        assert (r.topic, r.payload, r.properties.content_type) == ("r/1", b"kept", "t")

    def test_message_row_goes_with_its_last_reference(self, tmp_path: Path) -> None:
        store = SqliteStore(str(tmp_path))
        msg = BrokerMessage("t", b"x", 1, False)
        store.add_delivery("a", Delivery(msg, 1, False), 1)
        store.add_delivery("b", Delivery(msg, 1, False), None)
        store.commit()
        assert store.counts()["messages"] == 1  # one row however many sessions wait for it
        store.delivery_done("a", 1)
        store.commit()
        assert store.counts()["messages"] == 1
        store.delivery_dropped("b", msg.id)
        store.commit()
        assert store.counts() == {
            "sessions": 0, "subscriptions": 0, "messages": 0, "retained": 0, "deliveries": 0,
            "incoming_qos2": 0,
        }  # fmt: skip
        assert store.check() == []
        store.close()

    @pytest.mark.parametrize("sync", ["NORMAL", "FULL"])
    def test_message_saved_again_after_its_row_was_deleted_in_the_same_batch(
        self, tmp_path: Path, sync: str
    ) -> None:
        # e.g. a shared-subscription message handed to another member as its session ends
        store = SqliteStore(str(tmp_path), sync)
        msg = BrokerMessage("t", b"x", 1, False)
        store.add_delivery("a", Delivery(msg, 1, False), None)
        store.commit()
        store.delivery_dropped("a", msg.id)  # last reference: the row is deleted...
        store.add_delivery("b", Delivery(msg, 1, False), None)  # ...and needed again
        store.save_session(StoredSession("b", 60, None))
        store.commit()
        store.close()
        store = SqliteStore(str(tmp_path))
        (session,) = store.load().sessions
        assert [d.delivery.message.payload for d in session.deliveries] == [b"x"]
        assert store.counts()["messages"] == 1
        assert store.counts()["deliveries"] == 1
        assert store.check() == []
        store.close()

    def test_replaced_retained_message_is_deleted(self, tmp_path: Path) -> None:
        store = SqliteStore(str(tmp_path))
        store.save_retained(BrokerMessage("r", b"1", 0, True))
        store.commit()
        store.save_retained(BrokerMessage("r", b"2", 0, True))
        store.commit()
        assert store.counts()["messages"] == 1
        store.save_retained(BrokerMessage("r", b"", 0, True))  # cleared
        store.commit()
        assert store.counts()["messages"] == 0
        store.close()

    def test_newer_schema_is_refused_naming_both_versions(self, tmp_path: Path) -> None:
        SqliteStore(str(tmp_path)).close()
        db = sqlite3.connect(tmp_path / "mqttv5.db")
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        db.commit()
        db.close()
        with pytest.raises(StorageError, match=f"schema version 99.*{SCHEMA_VERSION}"):
            SqliteStore(str(tmp_path))

    def test_foreign_and_corrupted_files_are_refused_not_emptied(self, tmp_path: Path) -> None:
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        db = sqlite3.connect(foreign / "mqttv5.db")
        db.execute("CREATE TABLE precious (x)")
        db.execute("INSERT INTO precious VALUES (1)")
        db.commit()
        db.close()
        with pytest.raises(StorageError, match="not an mqttv5 data file"):
            SqliteStore(str(foreign))
        db = sqlite3.connect(foreign / "mqttv5.db")
        assert db.execute("SELECT COUNT(*) FROM precious").fetchone()[0] == 1
        db.close()
        broken = tmp_path / "broken"
        broken.mkdir()
        garbage = b"this is not a database at all" * 100
        (broken / "mqttv5.db").write_bytes(garbage)
        with pytest.raises(StorageError, match="cannot open"):
            SqliteStore(str(broken))
        assert (broken / "mqttv5.db").read_bytes() == garbage

    @pytest.mark.parametrize("sync", ["NORMAL", "FULL"])
    def test_failed_append_keeps_the_ticket_pending_and_is_retried(
        self, small_disk: SmallDisk, sync: str
    ) -> None:
        data = small_disk.path / "data"
        store = SqliteStore(str(data), sync)
        assert store.uses_writer == (sync == "FULL")
        store.save_retained(BrokerMessage("r/0", b"before", 0, True))
        store.commit()
        small_disk.fill()  # a full disk: the journal cannot grow
        store.save_retained(BrokerMessage("r/1", b"x" * 20_000, 0, True))
        ticket = _failing_commit(store)
        assert isinstance(store.failed, OSError)
        assert store.failed.errno == errno.ENOSPC
        small_disk.free()
        _recovers(store, ticket)
        assert store.counts()["retained"] == 2
        store.close()
        assert [r.payload[:6] for r in reload(data).retained] == [b"before", b"xxxxxx"]


async def acknowledge_all(sub: RawClient) -> list[bytes]:
    """The payloads of the QoS 1 messages ``sub`` receives, each acknowledged, until none
    comes for half a second."""
    got = []
    while True:
        try:
            p = await sub.expect(Publish, wait=0.5)
        except TimeoutError:
            return got
        got.append(p.payload)
        sub.send(PubAck(p.packet_id))


def _failing_commit(store: SqliteStore) -> CommitTicket:
    """Commit while writes fail: the ticket stays pending, the writes are kept, and no new
    try comes within the retry interval."""
    ticket = store.ticket()
    store.commit()
    assert not ticket.done  # not durable yet: its acknowledgements wait
    assert store.pending  # kept for the next commit
    assert not store.writable()
    return ticket


def _recovers(store: SqliteStore, ticket: CommitTicket) -> None:
    """Once writes work again, the next try (after the retry interval) stores them."""
    time.sleep(0.25)
    assert store.writable()
    assert ticket.done
    assert ticket.error is None


def _sqlite(tmp_path: Path) -> dict[str, object]:
    return {"storage": "sqlite", "data_dir": str(tmp_path / "data")}


class TestRestart:
    def test_sessions_queues_retained_and_subscription_options_survive(
        self, tmp_path: Path
    ) -> None:
        async def first() -> None:
            async with started_broker(**_sqlite(tmp_path)) as b:
                sub = await RawClient.connect(b.ports[0], "keeper", properties=KEEP)
                await sub.subscribe(
                    "q/#", qos=1, no_local=True, properties=Properties(subscription_identifiers=[7])
                )
                await sub.disconnect()
                pub = await RawClient.connect(b.ports[0], "pub")
                props = Properties(
                    content_type="c", user_properties=[("a", "1")], message_expiry_interval=60
                )
                for i in range(3):
                    await pub.publish("q/x", b"m%d" % i, qos=1, packet_id=i + 1, properties=props)
                await pub.publish("ret/a", b"kept", qos=1, retain=True, packet_id=9,
                                  properties=Properties(content_type="r"))  # fmt: skip

        async def second() -> None:
            async with started_broker(**_sqlite(tmp_path)) as b:
                sub = await RawClient.connect(
                    b.ports[0], "keeper", clean_start=False, properties=KEEP
                )
                assert sub.connack.session_present is True
                got = [await sub.expect(Publish) for _ in range(3)]
                assert [g.payload for g in got] == [b"m0", b"m1", b"m2"]
                for g in got:
                    assert g.properties.subscription_identifiers == [7]
                    assert g.properties.user_properties == [("a", "1")]
                    assert 55 <= (g.properties.message_expiry_interval or 0) <= 60
                    sub.send(PubAck(g.packet_id))
                late = await RawClient.connect(b.ports[0], "late")
                await late.subscribe("ret/#")
                ret = await late.expect(Publish)
                assert (ret.payload, ret.retain, ret.properties.content_type) == (
                    b"kept",
                    True,
                    "r",
                )
                # the No Local option survived: the keeper's own publish does not come back
                await sub.publish("q/own", b"x", qos=1, packet_id=50)
                await sub.nothing()

        run(first())
        run(second())

    def test_will_with_delay_survives_a_restart(self, tmp_path: Path) -> None:
        async def first() -> None:
            async with started_broker(**_sqlite(tmp_path)) as b:
                will = Will("will/x", b"gone", 1, True, Properties(will_delay_interval=1))
                c = await RawClient.connect(b.ports[0], "mortal", will=will, properties=KEEP)
                c.abort()
                await asyncio.sleep(0.1)  # stopped before the delay ends: the will is pending

        async def second() -> None:
            async with started_broker(**_sqlite(tmp_path)) as b:
                await asyncio.sleep(1.3)
                w = await RawClient.connect(b.ports[0], "watcher")
                await w.subscribe("will/#")
                got = await w.expect(Publish)
                assert (got.payload, got.retain) == (b"gone", True)

        run(first())
        run(second())

    def test_expired_session_is_purged_counting_downtime(self, tmp_path: Path) -> None:
        async def first() -> None:
            async with started_broker(**_sqlite(tmp_path)) as b:
                props = Properties(session_expiry_interval=1)
                c = await RawClient.connect(b.ports[0], "brief", properties=props)
                await c.subscribe("x")
                await c.disconnect()

        async def second() -> None:
            async with started_broker(**_sqlite(tmp_path)) as b:
                assert "brief" in b.sessions
                await asyncio.sleep(1.5)
                assert "brief" not in b.sessions
            async with started_broker(**_sqlite(tmp_path)) as b:
                assert "brief" not in b.sessions

        run(first())
        time.sleep(0.5)  # downtime counts towards the expiry
        run(second())


# ---------------------------------------------------------------------------------------------
# crash tests: a broker subprocess killed with SIGKILL mid-load


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_broker(port: int, data_dir: Path, sync: str = "normal") -> subprocess.Popen[bytes]:
    log_path = data_dir.parent / "broker.log"
    config = data_dir.parent / "broker.toml"
    config.write_text(f'storage_sync = "{sync}"\n')
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mqttv5", "broker", "-c", str(config), "--port", str(port),
             "--bind", "127.0.0.1", "--storage", "sqlite", "--data-dir", str(data_dir),
             "--sys-interval", "0"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    deadline = time.monotonic() + timeout(15)
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc
        if proc.poll() is not None:
            raise AssertionError(log_path.read_text())
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError("broker did not start")


async def _load_until_killed(
    port: int, proc: subprocess.Popen[bytes], qos: int, kill_after: int
) -> set[int]:
    """Publish numbered messages at ``qos``; SIGKILL the broker after ``kill_after`` acks;
    return the numbers whose PUBACK / PUBCOMP arrived."""
    pub = await RawClient.connect(port, f"pub{qos}", properties=KEEP, clean_start=True)
    acked: set[int] = set()
    sent = 0
    window: dict[int, int] = {}
    killed = False
    while not killed:
        while len(window) < 10 and sent < 100_000:
            sent += 1
            pid = sent % 60000 + 1
            window[pid] = sent
            pub.send(Publish("crash/t", b"%d" % sent, qos, packet_id=pid))
        try:
            packet = await pub.recv(wait=2)
        except Exception:
            break
        if isinstance(packet, PubAck):
            acked.add(window.pop(packet.packet_id))
        elif isinstance(packet, PubRec):
            pub.send(PubRel(packet.packet_id))
        elif isinstance(packet, PubComp):
            acked.add(window.pop(packet.packet_id))
        if len(acked) >= kill_after:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
    pub.abort()
    return acked


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _gone(pid: int, within: float) -> bool:
    """True once process ``pid`` has exited (reaped or a zombie) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.parametrize(
    ("qos", "kill_after", "sync"),
    [(1, 150, "normal"), (1, 400, "normal"), (2, 200, "normal"), (1, 150, "full"),
     (2, 150, "full")],
)  # fmt: skip
def test_sigkill_mid_load_loses_no_acknowledged_message(
    tmp_path: Path, qos: int, kill_after: int, sync: str
) -> None:
    port = _free_port()
    data = tmp_path / "data"
    proc = _start_broker(port, data, sync)
    try:

        async def subscribe_then_leave() -> None:
            sub = await RawClient.connect(port, "offline-sub", properties=KEEP)
            await sub.subscribe("crash/#", qos=2)
            await sub.disconnect()

        run(subscribe_then_leave())
        writers = _children(proc.pid)  # the journal folder, and the writer of "full"
        assert len(writers) == (2 if sync == "full" else 1)
        acked = run(_load_until_killed(port, proc, qos, kill_after))
        proc.wait(timeout=10)
        assert len(acked) >= kill_after
        for writer in writers:  # it notices its socket closing and exits: no leak
            assert _gone(writer, timeout(5)), f"child process {writer} outlived the broker"
        proc = _start_broker(port, data, sync)

        async def collect() -> list[int]:
            sub = await RawClient.connect(port, "offline-sub", clean_start=False, properties=KEEP)
            assert sub.connack.session_present is True
            got: list[int] = []
            while True:
                try:
                    packet = await sub.recv(wait=2)
                except TimeoutError:
                    return got
                if isinstance(packet, Publish):
                    got.append(int(packet.payload))
                    if packet.qos == 1:
                        sub.send(PubAck(packet.packet_id))
                    elif packet.qos == 2:
                        sub.send(PubRec(packet.packet_id))
                elif isinstance(packet, PubRel):
                    sub.send(PubComp(packet.packet_id))

        got = run(collect(), 90)
        missing = acked - set(got)
        assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
        if qos == 2:
            assert len(got) == len(set(got)), "a QoS 2 message was delivered twice"
    finally:
        proc.kill()
        proc.wait()


def test_connack_after_restart_is_session_present(tmp_path: Path) -> None:
    port = _free_port()
    data = tmp_path / "data"
    proc = _start_broker(port, data)
    try:

        async def connect(clean: bool) -> Connack:
            c = await RawClient.open(port)
            c.send(Connect("persist", clean_start=clean, properties=KEEP))
            connack = await c.expect(Connack)
            await c.disconnect()
            return connack

        assert run(connect(True)).session_present is False
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        proc = _start_broker(port, data)
        assert run(connect(False)).session_present is True
    finally:
        proc.kill()
        proc.wait()


def test_storage_command_check_compact_stats(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path))
    store.save_retained(BrokerMessage("r", b"1", 0, True))
    store.close()
    for action, expected in (
        ("check", "ok"),
        ("compact", "retained       1"),
        ("stats", "messages"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "mqttv5", "storage", action, "--data-dir", str(tmp_path)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert expected in out.stdout
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mqttv5.db").write_bytes(b"garbage" * 200)
    bad = subprocess.run(
        [sys.executable, "-m", "mqttv5", "storage", "check", "--data-dir", str(tmp_path / "other")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.startswith("mqttv5 storage: error:")


class TestSchemaVersions:
    """One checked-in data file per schema version, loaded (and upgraded) by today's code.

    See ``fixtures/README.md``: every file holds the same state; a future schema adds
    ``store-v4.db`` and tests the upgrade from each older file the same way.
    """

    @staticmethod
    def _assert_fixture_state(state: StoredState) -> None:
        (session,) = state.sessions
        assert (session.client_id, session.expiry_interval, session.username) == (
            "fixture-client", 86400, "alice",
        )  # fmt: skip
        assert session.will is not None
        assert session.will.properties.will_delay_interval == 30
        (sub,) = session.subscriptions
        assert (sub.topic_filter, sub.sub_id, sub.retain_as_published) == (
            "sensors/+/temp",
            5,
            True,
        )
        (queued,) = session.deliveries
        assert queued.delivery.message.payload == b"21.5"
        assert queued.delivery.message.properties.content_type == "text/plain"
        assert session.incoming_qos2 == [77]
        assert [r.topic for r in state.retained] == ["status/broker"]

    @pytest.mark.parametrize("version", range(1, SCHEMA_VERSION + 1))
    def test_data_file_of_each_schema_loads(self, tmp_path: Path, version: int) -> None:
        fixture = Path(__file__).parent / "fixtures" / f"store-v{version}.db"
        shutil.copy(fixture, tmp_path / "mqttv5.db")
        store = SqliteStore(str(tmp_path))
        self._assert_fixture_state(store.load())
        assert store.check() == []
        store.close()
        db = sqlite3.connect(tmp_path / "mqttv5.db")
        (stored_version,) = db.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        db.close()
        assert int(stored_version[0]) == SCHEMA_VERSION  # upgraded in place
        self._assert_fixture_state(reload(tmp_path))  # and stays readable

    def test_schema_2_has_no_secondary_index(self, tmp_path: Path) -> None:
        shutil.copy(Path(__file__).parent / "fixtures" / "store-v1.db", tmp_path / "mqttv5.db")
        SqliteStore(str(tmp_path)).close()
        db = sqlite3.connect(tmp_path / "mqttv5.db")
        indexes = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ).fetchall()
        tables = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
        db.close()
        assert indexes == []  # one b-tree per delivery written, not four
        for table in ("deliveries", "retained", "subscriptions", "incoming_qos2"):
            assert tables[table].endswith("WITHOUT ROWID")

    @pytest.mark.parametrize("version", [1, 2])
    def test_upgrade_to_schema_3_records_the_journal_position(
        self, tmp_path: Path, version: int
    ) -> None:
        """Schema 3 marks a directory that may hold a journal: a version-2 broker refuses it
        ("newer schema") instead of serving the file without the journal's writes."""
        fixture = Path(__file__).parent / "fixtures" / f"store-v{version}.db"
        shutil.copy(fixture, tmp_path / "mqttv5.db")
        SqliteStore(str(tmp_path)).close()
        db = sqlite3.connect(tmp_path / "mqttv5.db")
        meta = dict(db.execute("SELECT key, value FROM meta"))
        db.close()
        assert meta["schema_version"] == "3"
        assert meta["journal_position"] == "0 0"

    def test_failed_upgrade_leaves_the_file_as_it_was(self, tmp_path: Path) -> None:
        shutil.copy(Path(__file__).parent / "fixtures" / "store-v1.db", tmp_path / "mqttv5.db")
        before = (tmp_path / "mqttv5.db").read_bytes()
        lock = sqlite3.connect(tmp_path / "mqttv5.db", timeout=0)
        lock.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StorageError, match="cannot upgrade schema version 1 to"):
            SqliteStore(str(tmp_path))
        lock.execute("ROLLBACK")
        lock.close()
        assert (tmp_path / "mqttv5.db").read_bytes() == before


class TestStorageFailure:
    @pytest.mark.parametrize("sync", ["normal", "full"])
    def test_full_disk_refuses_qos1_keeps_qos0_and_recovers(
        self, small_disk: SmallDisk, sync: str
    ) -> None:
        """A message is either accepted (routed; PUBACK once stored, however late) or refused
        with 0x97 before routing: then neither delivered nor stored."""
        config = {"storage": "sqlite", "data_dir": str(small_disk.path / "data")}
        big = b"a" * 20_000  # needs new pages of the file it is written to

        async def main() -> None:
            async with started_broker(**config, storage_sync=sync) as b:
                sub = await RawClient.connect(b.ports[0], "keeper", properties=KEEP)
                await sub.subscribe("disk/#", qos=1)
                await sub.disconnect()
                live = await RawClient.connect(b.ports[0], "live")
                await live.subscribe("disk/#")
                pub = await RawClient.connect(b.ports[0], "pub")
                small_disk.fill()
                # routed before the failure is known: accepted, its PUBACK waits for the disk
                pub.send(Publish("disk/a", big, 1, packet_id=1))
                assert (await live.expect(Publish)).payload == big
                await pub.nothing(0.4)
                # the failure is known: refused before routing, so not delivered, not stored
                ack = await pub.publish("disk/b", b"refused", qos=1, packet_id=2)
                assert isinstance(ack, PubAck)
                assert ack.reason_code == 0x97  # Quota exceeded: not stored, so not promised
                await pub.publish("disk/c", b"qos0 still flows")
                assert (await live.expect(Publish)).payload == b"qos0 still flows"
                small_disk.free()
                await asyncio.sleep(0.3)  # the next try comes with the next message
                pub.send(Publish("disk/d", b"stored", 1, packet_id=3))
                acks = [await pub.expect(PubAck), await pub.expect(PubAck)]
                assert [(a.packet_id, a.reason_code) for a in acks] == [(1, 0), (3, 0)]
                assert [(await live.expect(Publish)).payload] == [b"stored"]
                await live.nothing()

        async def after_restart() -> None:
            async with started_broker(**config, storage_sync=sync) as b:
                sub = await RawClient.connect(
                    b.ports[0], "keeper", clean_start=False, properties=KEEP
                )
                got = await acknowledge_all(sub)
                assert got == [big, b"stored"]

        run(main())
        run(after_restart())

    def test_refused_qos2_is_not_forwarded_and_311_is_disconnected(self, tmp_path: Path) -> None:
        async def main() -> None:
            async with started_broker(**_sqlite(tmp_path)) as b:
                sub = await RawClient.connect(b.ports[0], "keeper", properties=KEEP)
                await sub.subscribe("disk/#", qos=2)
                b.store.failed = StorageError("disk full")  # as after a failed commit
                b.store._probed = time.monotonic() + 60  # and no retry due for a minute
                pub = await RawClient.connect(b.ports[0], "pub")
                pub.send(Publish("disk/q2", b"x", 2, packet_id=5))
                rec = await pub.expect(PubRec)
                assert rec.reason_code == 0x97  # the flow ends here [MQTT-4.3.3]
                await sub.nothing()
                old = await RawClient.connect(b.ports[0], "old", version=4)
                old.send(Publish("disk/q1", b"y", 1, packet_id=1))
                await old.closed()  # MQTT 3.1.1 cannot refuse a PUBLISH: the broker disconnects
                await pub.publish("disk/q0", b"z")
                assert (await sub.expect(Publish)).payload == b"z"  # QoS 0 still flows

        run(main())
