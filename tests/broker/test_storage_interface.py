"""The storage interface: the in-memory store and commit tickets."""

from __future__ import annotations

import dataclasses

import pytest

from mqttv5.broker.broker import MqttBroker
from mqttv5.broker.config import BrokerConfig
from mqttv5.broker.storage import COMMITTED, CommitTicket, MemoryStore
from mqttv5.protocol.errors import ConfigError
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient


def test_commit_ticket_runs_callbacks_once_done() -> None:
    seen: list[str] = []
    ticket = CommitTicket()
    ticket.add_done_callback(lambda t: seen.append("early"))
    assert seen == []
    ticket.complete()
    ticket.complete()  # idempotent
    ticket.add_done_callback(lambda t: seen.append("late"))
    assert seen == ["early", "late"]
    COMMITTED.add_done_callback(lambda t: seen.append("now"))
    assert seen[-1] == "now"


def test_durable_store_is_the_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mqttv5.broker.storage.sqlite import SqliteStore

    assert BrokerConfig().storage == "sqlite"
    broker = MqttBroker(dataclasses.replace(BrokerConfig(), data_dir=str(tmp_path / "d")))
    assert isinstance(broker.store, SqliteStore)
    assert (tmp_path / "d" / "mqttv5.db").exists()
    broker.store.close()


def test_memory_store_keeps_nothing() -> None:
    broker = MqttBroker(dataclasses.replace(BrokerConfig(), storage="memory"))
    assert isinstance(broker.store, MemoryStore)
    assert broker.store.load().sessions == []


def test_unusable_data_dir_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = dataclasses.replace(BrokerConfig(), storage="sqlite", data_dir=str(blocker))
    with pytest.raises(ConfigError) as info:
        MqttBroker(config)
    assert info.value.key == "data_dir"


class RecordingStore(MemoryStore):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def save_session(self, session):  # type: ignore[no-untyped-def]
        self.calls.append(("save_session", session.client_id))

    def save_subscription(self, client_id, entry):  # type: ignore[no-untyped-def]
        self.calls.append(("save_subscription", entry.topic_filter))

    def delete_subscription(self, client_id, topic_filter):  # type: ignore[no-untyped-def]
        self.calls.append(("delete_subscription", topic_filter))

    def save_retained(self, message):  # type: ignore[no-untyped-def]
        self.calls.append(("save_retained", message.topic))


def test_broker_mirrors_persistent_state_to_the_store() -> None:
    store = RecordingStore()

    async def main() -> None:
        async with started_broker() as b:
            b.store = store
            from mqttv5.protocol.packets import Unsuback, Unsubscribe
            from mqttv5.protocol.properties import Properties

            c = await RawClient.connect(
                b.ports[0], "keep", properties=Properties(session_expiry_interval=60)
            )
            await c.subscribe("s/1")
            c.send(Unsubscribe(2, ["s/1"]))
            await c.expect(Unsuback)
            await c.publish("r/1", b"x", retain=True, qos=1)
            await c.disconnect()
            transient = await RawClient.connect(b.ports[0], "transient")
            await transient.subscribe("t")

    run(main())
    assert store.calls == [
        ("save_session", "keep"),
        ("save_subscription", "s/1"),
        ("delete_subscription", "s/1"),
        ("save_retained", "r/1"),
        ("save_session", "keep"),
    ]
