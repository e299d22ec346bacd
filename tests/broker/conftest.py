"""Fixtures for broker tests: a real MqttBroker on 127.0.0.1, an ephemeral port, in the test's
own event loop (tests are plain functions that call ``run``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

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


class SmallDisk:
    """A tmpfs of its own (``size``), to fill up and free again: a real full disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        """Take every free byte: the next write that needs a new page fails with ENOSPC."""
        with open(self.filler, "ab", buffering=0) as f:
            for chunk in (1 << 16, 4096, 512, 1):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise

    def free(self) -> None:
        """Give the space back."""
        self.filler.unlink()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """An 8 MiB tmpfs mounted for the test (needs root, as the netns tests do)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "mqttv5-test", str(mount)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        if os.geteuid() != 0 or "permission" in done.stderr.lower():
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
        pytest.fail(f"mount -t tmpfs failed ({done.returncode}): {done.stderr.strip()}")
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30, check=False)


async def kill_child(pid_of: Callable[[], int | None]) -> int:
    """SIGKILL the child process ``pid_of()`` names (the store's writer or folder) and wait
    until the broker has noticed (``pid_of()`` is None); return its pid."""
    pid = pid_of()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    for _ in range(200):  # the broker sees the child's socket close
        if pid_of() is None:
            break
        await asyncio.sleep(0.01)
    assert pid_of() is None
    return pid
