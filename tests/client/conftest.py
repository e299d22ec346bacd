"""Fixtures for the client tests: a real Mosquitto per session (and per test where a test needs
its own configuration or a restart)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .mosquitto import Mosquitto


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A Mosquitto shared by the session's tests (use unique topics and client ids)."""
    mosq = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    mosq.start()
    yield mosq
    mosq.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Start a Mosquitto with its own config: ``mosquitto_factory(extra="max_qos 1",
    persistence=True)``; stopped at teardown."""
    started: list[Mosquitto] = []

    def factory(*, extra: str = "", persistence: bool = False) -> Mosquitto:
        directory = tmp_path / f"mosq{len(started)}"
        directory.mkdir()
        mosq = Mosquitto(directory, extra=extra, persistence=persistence)
        mosq.start()
        started.append(mosq)
        return mosq

    yield factory
    for mosq in started:
        mosq.stop()
