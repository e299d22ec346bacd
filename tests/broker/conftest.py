"""Fixtures for broker tests: a real MqttBroker on 127.0.0.1, an ephemeral port, in the test's
own event loop (tests are plain functions that call ``run``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from mqttv5.broker.broker import MqttBroker
from mqttv5.broker.config import BrokerConfig, ListenerSettings
from tests.broker.rawclient import close_all, timeout


def run(coro: Coroutine[Any, Any, Any], seconds: float = 30.0) -> Any:
    """Run ``coro`` to completion with a scaled overall timeout."""

    async def guarded() -> Any:
        try:
            async with asyncio.timeout(timeout(seconds)):
                return await coro
        finally:
            close_all()
            await asyncio.sleep(0)

    return asyncio.run(guarded())


@contextlib.asynccontextmanager
async def started_broker(**overrides: Any) -> AsyncIterator[MqttBroker]:
    """A broker on 127.0.0.1 and an ephemeral port; ``overrides`` are BrokerConfig fields."""
    listener_opts = overrides.pop("listener", {})
    config = BrokerConfig(
        # memory unless a test asks for the durable store (tests/broker/test_sqlite_store.py)
        storage=overrides.pop("storage", "memory"),
        listeners=[ListenerSettings(type="tcp", bind="127.0.0.1", port=0, **listener_opts)],
        sys_interval=overrides.pop("sys_interval", 0),
        keepalive_sweep_interval=overrides.pop("keepalive_sweep_interval", 0.1),
    )
    config = dataclasses.replace(config, **overrides)
    broker = MqttBroker(config)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()
