"""SIGHUP reload through the registry: limits apply now, listeners and storage at a restart."""

from __future__ import annotations

import dataclasses

from mqttv5.broker.config import BrokerConfig, ListenerSettings
from mqttv5.broker.reload import ReloadRegistry
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient


def test_limits_apply_without_dropping_connections() -> None:
    async def main() -> None:
        async with started_broker() as b:
            c = await RawClient.connect(b.ports[0], "stay")
            new = dataclasses.replace(b.config, max_queued_messages=7, log_level="debug")
            assert b.reload(new) == []
            assert b.config.max_queued_messages == 7
            await c.subscribe("still/connected")  # the connection survived the reload

    run(main())


def test_listener_and_storage_changes_need_restart() -> None:
    async def main() -> None:
        async with started_broker() as b:
            new = dataclasses.replace(
                b.config,
                listeners=[ListenerSettings(port=1999)],
                data_dir="/elsewhere",
                max_queued_messages=9,
            )
            before = b.config.listeners
            assert b.reload(new) == ["listeners", "storage"]
            assert b.config.listeners == before  # kept until a restart
            assert b.config.data_dir != "/elsewhere"
            assert b.config.max_queued_messages == 9

    run(main())


def test_registry_isolates_a_failing_component() -> None:
    registry = ReloadRegistry()
    seen: list[str] = []

    def broken(old: BrokerConfig, new: BrokerConfig) -> list[str]:
        raise RuntimeError("boom")

    def fine(old: BrokerConfig, new: BrokerConfig) -> list[str]:
        seen.append("fine")
        return ["x"]

    registry.register("broken", broken)
    registry.register("fine", fine)
    assert registry.apply(BrokerConfig(), BrokerConfig()) == ["x"]
    assert seen == ["fine"]
