"""``storage_sync = "full"``: the writer process, the output gate, and a dying writer."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from mqttv5.broker.message import BrokerMessage, Delivery
from mqttv5.broker.storage import COMMITTED, CommitTicket, StoredSession
from mqttv5.broker.storage.gate import OutputGate
from mqttv5.broker.storage.sqlite import SqliteStore
from mqttv5.protocol.packets import PubAck, Publish, PubRec
from mqttv5.protocol.properties import Properties
from tests.broker.conftest import kill_child, run, started_broker
from tests.broker.rawclient import RawClient, timeout
from tests.broker.test_sqlite_store import acknowledge_all, reload

KEEP = Properties(session_expiry_interval=3600)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _wait_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout(within)
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


class TestWriterProcess:
    def test_full_commits_through_the_writer_and_it_exits_on_close(self, tmp_path: Path) -> None:
        store = SqliteStore(str(tmp_path), "FULL")
        assert store.uses_writer
        store.load()
        pid = store.writer_pid
        assert pid is not None
        assert pid != os.getpid()
        store.save_session(StoredSession("c1", 60, None))
        msg = BrokerMessage("a/b", b"payload", 1, False)
        store.add_delivery("c1", Delivery(msg, 1, False, (3,)), None)
        store.incoming_qos2("c1", 9, True)
        ticket = store.ticket()
        store.commit()  # without an event loop: waits for the writer's reply
        assert ticket.done
        assert ticket.error is None
        assert store.commits == 1
        store.close()
        assert _wait_gone(pid)
        state = reload(tmp_path)
        (session,) = state.sessions
        assert [d.delivery.message.payload for d in session.deliveries] == [b"payload"]
        assert session.deliveries[0].delivery.sub_ids == (3,)
        assert session.incoming_qos2 == [9]

    def test_normal_appends_to_the_journal_at_once(self, tmp_path: Path) -> None:
        store = SqliteStore(str(tmp_path))
        store.load()
        assert not store.uses_writer
        assert store.writer_pid is None
        store.save_retained(BrokerMessage("r", b"1", 0, True))
        assert store.commit_soon() is COMMITTED  # appended inline: output need not wait
        assert not store.pending
        assert store.journal_bytes > 0
        store.close()


class TestOutputGate:
    class Out:
        def __init__(self, name: str, log: list[tuple[str, list[bytes], bool]]) -> None:
            self.name = name
            self.log = log

        def write_output(self, data: object, close_if_over: bool = True) -> None:
            self.log.append((self.name, list(data), close_if_over))  # type: ignore[call-overload]

    def test_output_waits_for_its_commit_and_keeps_its_order(self) -> None:
        log: list[tuple[str, list[bytes], bool]] = []
        a, b = self.Out("a", log), self.Out("b", log)
        gate = OutputGate()
        gate.send(a, [b"a0"], False)  # no commit in flight: written at once
        first, second = CommitTicket(), CommitTicket()
        gate.wait_for(first)
        gate.send(a, [b"a1"], False)
        gate.send(b, [b"b1"], False)
        gate.wait_for(second)
        gate.send(a, [b"a2"], False)
        assert log == [("a", [b"a0"], True)]
        assert gate.holding == 3
        first.complete()
        assert log[1:] == [("a", [b"a1"], True), ("b", [b"b1"], True)]
        second.complete(RuntimeError("disk full"))  # a failed commit releases output too
        assert log[3:] == [("a", [b"a2"], True)]
        assert gate.holding == 0
        gate.send(b, [b"b3"], False)
        assert log[-1] == ("b", [b"b3"], True)

    def test_acknowledgements_skip_newer_commits_but_not_older_output(self) -> None:
        log: list[tuple[str, list[bytes], bool]] = []
        a, b = self.Out("a", log), self.Out("b", log)
        gate = OutputGate()
        newer = CommitTicket()
        gate.wait_for(newer)
        gate.acknowledged(a, [b"ack-a"])  # nothing of a's held: goes with a's next flush
        gate.send(b, [b"b-out"], False)
        gate.acknowledged(b, [b"ack-b"])  # must not overtake b's held output
        gate.send(a, [b"a-out"], False)
        assert log == [("a", [b"ack-a"], False)]
        newer.complete()
        assert log[1:] == [
            ("b", [b"b-out"], True),
            ("b", [b"ack-b"], True),
            ("a", [b"a-out"], True),
        ]


def _full(tmp_path: Path) -> dict[str, object]:
    return {"storage": "sqlite", "data_dir": str(tmp_path / "data"), "storage_sync": "full"}


class TestBrokerWithWriter:
    def test_nothing_is_sent_before_the_commit_is_durable(self, tmp_path: Path) -> None:
        """A stopped writer holds every acknowledgement and every forwarded QoS 2 message."""

        async def main() -> None:
            async with started_broker(**_full(tmp_path)) as b:
                sub = await RawClient.connect(b.ports[0], "sub")
                await sub.subscribe("hold/#", qos=2)
                pub = await RawClient.connect(b.ports[0], "pub", properties=KEEP)
                pid = b.store.writer_pid
                assert pid is not None
                os.kill(pid, signal.SIGSTOP)
                try:
                    pub.send(Publish("hold/q2", b"exactly once", 2, packet_id=7))
                    await sub.nothing(0.3)  # its packet identifier is not on disk yet
                    await pub.nothing(0.1)
                finally:
                    os.kill(pid, signal.SIGCONT)
                assert (await pub.expect(PubRec)).packet_id == 7
                assert (await sub.expect(Publish)).payload == b"exactly once"

        run(main())

    def test_dying_writer_is_logged_refused_restarted_and_loses_nothing(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, "mqttv5.broker")

        async def kill_writer(b: object) -> None:
            store = b.store  # type: ignore[attr-defined]
            pid = await kill_child(lambda: store.writer_pid)
            assert _wait_gone(pid)

        async def main() -> None:
            async with started_broker(**_full(tmp_path)) as b:
                sub = await RawClient.connect(b.ports[0], "keeper", properties=KEEP)
                await sub.subscribe("w/#", qos=1)
                await sub.disconnect()
                live = await RawClient.connect(b.ports[0], "live")
                await live.subscribe("w/#")
                pub = await RawClient.connect(b.ports[0], "pub")
                await kill_writer(b)
                # the writer died just now: refused before routing, like a failing disk
                ack = await pub.publish("w/refused", b"no", qos=1, packet_id=1)
                assert isinstance(ack, PubAck)
                assert ack.reason_code == 0x97
                await pub.publish("w/qos0", b"flows")
                assert (await live.expect(Publish)).payload == b"flows"
                await asyncio.sleep(0.6)  # past the restart delay: a new writer, and success
                ack = await pub.publish("w/kept", b"yes", qos=1, packet_id=2)
                assert isinstance(ack, PubAck)
                assert ack.reason_code == 0
                assert (await live.expect(Publish)).payload == b"yes"
                assert b.store.writer_pid is not None
                assert b.store.failed is None

        async def after_restart() -> None:
            async with started_broker(**_full(tmp_path)) as b:
                sub = await RawClient.connect(
                    b.ports[0], "keeper", clean_start=False, properties=KEEP
                )
                got = await acknowledge_all(sub)
                assert got == [b"yes"]

        run(main())
        run(after_restart())
        messages = [r.getMessage() for r in caplog.records]
        assert any("storage writer process" in m and "exited" in m for m in messages)
        assert any("Storage writer process restarted" in m for m in messages)
        assert any("Storage writes succeed again" in m for m in messages)
